"""The soak's run: on the live demo's topology (:class:`tunplug.gateway_demo.GatewayDemo`, a
gateway with flow logs on), an echo service and iperf3 on the resource, and from the client one
iperf3 session plus a stream of short connections for the whole duration, sampled every
interval.

Who calls it: ``soak.py`` (``main``: :func:`soak`, with its :class:`Options`).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib.host import machine_busy_seconds
from benchlib.netns import netns_names
from benchlib.soak.checks import Outcome
from benchlib.soak.report import format_sample
from benchlib.soak.samples import Sample, device_rx_bytes, flow_log_stats, process_stats
from tunplug.gateway_demo import CLIENT_NAME, RESOURCE, GatewayDemo
from tunplug.testing.netns import python_in_ns

#: The table shows one row per TABLE_STEP_SECONDS (unless the run is short).
TABLE_STEP_SECONDS = 60.0
RESOURCE_DEVICE = "veth-gw"  # the resource's end of the gateway-resource veth (GatewayDemo)
ECHO_TCP_PORT = 7000
ECHO_UDP_PORT = 7001


# The resource's echo service: TCP (one thread per connection, echoes what it got once the
# client shut its side) and UDP. Prints "ready" once both listen.
ECHO_SERVICE = """\
import socketserver, sys, threading
host, tcp_port, udp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
class Tcp(socketserver.BaseRequestHandler):
    def handle(self):
        data = b""
        while chunk := self.request.recv(65536):
            data += chunk
        self.request.sendall(data)
class Udp(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(data, self.client_address)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
tcp = socketserver.ThreadingTCPServer((host, tcp_port), Tcp)
udp = socketserver.UDPServer((host, udp_port), Udp)
threading.Thread(target=udp.serve_forever, daemon=True).start()
print("ready", flush=True)
tcp.serve_forever()
"""

# The client's short connections, ``rate`` a second: three TCP (2000 bytes there and back, a
# new source port each, ended by FIN both ways), then one UDP exchange from a new socket (a UDP
# flow that ends by idle timeout). Prints its counts as JSON on SIGTERM.
CONNECTIONS = """\
import json, signal, socket, sys, time
host, tcp_port, udp_port, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
counts = {"tcp": 0, "udp": 0, "failed": 0}
def stop(signum, frame):
    print(json.dumps(counts), flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
payload = b"s" * 2000
number, next_at = 0, time.monotonic()
while True:
    number += 1
    try:
        if number % 4:
            with socket.create_connection((host, tcp_port), timeout=5) as conn:
                conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)
                echoed = b""
                while chunk := conn.recv(65536):
                    echoed += chunk
            if echoed != payload:
                raise OSError("short echo")
            counts["tcp"] += 1
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(2)
                sock.sendto(b"ping", (host, udp_port))
                if sock.recv(64) != b"ping":
                    raise OSError("bad echo")
            counts["udp"] += 1
    except OSError:
        counts["failed"] += 1
    next_at += 1 / rate
    time.sleep(max(0.0, next_at - time.monotonic()))
"""


@dataclass(frozen=True, slots=True)
class Options:
    """What one soak does, from the command line (``soak.py``'s ``parse_args``)."""

    duration: float
    interval: float
    warmup: float
    streams: int
    bitrate: str | None
    connections_per_second: float
    data_path: str | None
    output: Path | None

    @property
    def table_step(self) -> float:
        """One table row a minute, or every sample when the run is short (--quick)."""
        return TABLE_STEP_SECONDS if self.duration >= 5 * TABLE_STEP_SECONDS else self.interval


class Soak:
    """The traffic and the sampling on a started :class:`GatewayDemo`."""

    def __init__(self, demo: GatewayDemo, options: Options, log: Callable[..., None]) -> None:
        self.demo, self.options, self.log = demo, options, log
        self.flows = demo.workdir / "flows"
        self.ours: set[str] = set()

    @staticmethod
    def pid(process: subprocess.Popen[Any], name: str) -> int:
        if process.poll() is not None:
            raise RuntimeError(f"the {name} exited with {process.returncode}")
        return int(process.pid)

    def sample(self, started: float) -> Sample:
        gateway, client = self.demo.processes[0], self.demo.processes[1]
        size, lines = flow_log_stats(self.flows)
        return Sample(
            elapsed=time.monotonic() - started,
            rx_bytes=device_rx_bytes(self.demo.resource, RESOURCE_DEVICE),
            gateway=process_stats(self.pid(gateway, "gateway")),
            client=process_stats(self.pid(client, "client")),
            busy_seconds=machine_busy_seconds(),
            flow_log_bytes=size,
            flows_logged=lines,
            foreign_namespaces=len(set(netns_names()) - self.ours),
        )

    def start_services(self) -> None:
        resource = self.demo.resource
        echo = python_in_ns(resource, ECHO_SERVICE, RESOURCE, str(ECHO_TCP_PORT),
                            str(ECHO_UDP_PORT), stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert echo.stdout is not None
        if echo.stdout.readline().strip() != "ready":
            raise RuntimeError("the echo service on the resource did not start")
        resource.popen("iperf3", "-s", "-1", "-B", RESOURCE,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(0.3)

    def run(self) -> tuple[list[Sample], Outcome]:
        options, client_ns = self.options, self.demo.client
        self.ours = {ns.name for ns in (self.demo.client, self.demo.gateway, self.demo.resource)}
        ping = client_ns.run("ping", "-c", "3", "-i", "0.3", "-W", "2", RESOURCE, check=False)
        if ping.returncode != 0:
            raise RuntimeError(f"no ping through the gateway:\n{ping.stdout}{ping.stderr}")
        self.start_services()
        rate = ["-b", options.bitrate] if options.bitrate else []
        iperf = client_ns.popen(
            "iperf3", "-c", RESOURCE, "-t", f"{options.duration + 2:.0f}",
            "-P", str(options.streams), *rate, "-J",
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        connections = python_in_ns(
            client_ns, CONNECTIONS, RESOURCE, str(ECHO_TCP_PORT), str(ECHO_UDP_PORT),
            str(options.connections_per_second), stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        started = time.monotonic()
        samples = [self.sample(started)]
        self.log(
            f"     0 s  traffic started: iperf3 -P {options.streams}, "
            f"{options.connections_per_second:g} short connections/s; warm-up "
            f"{options.warmup:g} s, then {options.duration - options.warmup:g} s measured"
        )
        steps = round(options.duration / options.interval)
        for number in range(1, steps + 1):
            time.sleep(max(0.0, started + number * options.interval - time.monotonic()))
            try:
                samples.append(self.sample(started))
            except RuntimeError as error:  # the gateway or the client exited: the verdict says so
                self.log(f"{time.monotonic() - started:6.0f} s  {error}; sampling stopped")
                for name in ("gateway", "client"):
                    tail = (self.demo.workdir / f"{name}.log").read_text(errors="replace")
                    self.log(f"--- the end of the {name}'s log\n{tail[-1500:]}")
                break
            self.log(format_sample(samples[-2], samples[-1]))
        alive = all(process.poll() is None for process in self.demo.processes[:2])
        connections.send_signal(signal.SIGTERM)
        counts_text, _ = connections.communicate(timeout=10)
        try:
            counts: dict[str, int] = json.loads(counts_text.strip().splitlines()[-1])
        except (ValueError, IndexError):
            counts = {}
        report_text = ""
        try:
            report_text, _ = iperf.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            iperf.kill()
        return samples, Outcome(counts, *_iperf_summary(report_text), alive)


def _iperf_summary(text: str) -> tuple[float | None, int | None]:
    """iperf3's average Mbit/s (received) and retransmits from its JSON report."""
    try:
        end = json.loads(text)["end"]
        return (
            float(end["sum_received"]["bits_per_second"]) / 1e6,
            int(end["sum_sent"].get("retransmits", 0)),
        )
    except (ValueError, KeyError, TypeError):
        return None, None


def _data_paths(demo: GatewayDemo) -> str:
    """Which data path each end runs, and whether its native threads or the Python engine move
    the batches (pipeline stages such as the flow log need the Python engine)."""
    found = []
    for name in ("gateway", "client"):
        text = (demo.workdir / f"{name}.log").read_text(errors="replace")
        path = re.search(r"up: (\w+) data path", text)
        engine = re.search(r"per-batch calls from the Python engine \((.*)\)", text)
        if path is None:
            found.append(f"{name}: ?")
        elif path.group(1) == "native" and engine is None:
            found.append(f"{name}: native, its own threads")
        else:
            why = f" ({engine.group(1)})" if engine else ""
            found.append(f"{name}: {path.group(1)}, batches from the Python engine{why}")
    return "; ".join(found)


def soak(options: Options, log: Callable[..., None]) -> tuple[list[Sample], Outcome, str]:
    """Build the topology, run the traffic and the sampling, tear everything down."""
    with GatewayDemo() as demo:
        gateway_args = ["--flow-logs", str(demo.workdir / "flows")]
        if options.data_path:
            gateway_args += ["--data-path", options.data_path]
        demo.start_tunnel(gateway_args)
        paths = _data_paths(demo)
        log(f"    {CLIENT_NAME} -> {RESOURCE} through the gateway; flow logs in "
            f"{demo.workdir / 'flows'}")  # fmt: skip
        samples, outcome = Soak(demo, options, log).run()
    return samples, outcome, paths
