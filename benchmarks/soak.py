"""Soak: ten minutes of traffic through a tunplug gateway with flow logs on, checked for leaks
and drift (issue #14, part 5).

Who runs it: anyone with root, after ``scripts/dev setup``, before a release or after a change
to the gateway, the data path or the flow logs::

    sudo .venv/bin/python benchmarks/soak.py            # 10 minutes, prints the table and verdict
    sudo .venv/bin/python benchmarks/soak.py --quick    # 60 s: a smoke run, not a verdict
    sudo .venv/bin/python benchmarks/soak.py --output /tmp/soak-report.md

The topology is the live demo's (:class:`tunplug.gateway_demo.GatewayDemo`): namespaces
``client`` -- veth -- ``gateway`` -- veth -- ``resource``, a real ``tunplug-gateway run`` with
``--flow-logs`` and a ``tunplug-headless-client`` holding a gateway-issued token. Through the
tunnel run, for the whole duration:

- one iperf3 session of ``--streams`` parallel TCP streams from the client to the resource;
- ``--connections-per-second`` short connections from the client to an echo service on the
  resource (three TCP connections of 2000 bytes each way, then one UDP exchange, in turn), so
  the flow log keeps starting, ending, expiring and writing flows.

Every ``--interval`` seconds (10) it samples the throughput of that interval (bytes received by
the resource's veth), ``VmRSS``, open descriptors (``/proc/PID/fd``) and threads of the gateway
and the client process, their CPU time, and the flow log's size and line count. At the end it
prints a Markdown table (one row a minute) and a verdict, and exits 1 if a check failed. The
checks and their thresholds are in ``benchmarks/README.md``; everything after the warm-up
counts. Traffic goes only between the namespaces' own addresses; the namespaces, processes and
temp directory are removed on any exit (also Ctrl-C and SIGTERM). Nothing in CI runs this.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from throughput import (
    CODE_ROOT,
    MB,
    WGGO_FACT_NAMES,
    Target,
    _netns_names,
    _on_signal,
    code_fingerprint,
    machine_busy_seconds,
    machine_facts,
    proc_cpu_seconds,
    proc_memory,
    render_markdown_table,
    run_exclusive,
)

from tunplug.gateway_demo import CLIENT_NAME, RESOURCE, GatewayDemo
from tunplug.testing.netns import NetNS, python_in_ns

#: Full run and --quick run, seconds.
FULL_SECONDS = 600.0
QUICK_SECONDS = 60.0
#: Sampled this often (seconds); the table shows one row per TABLE_STEP_SECONDS.
INTERVAL_SECONDS = 10.0
TABLE_STEP_SECONDS = 60.0
#: The warm-up is this share of the run, at most WARMUP_MAX_SECONDS: 120 s of 600, 20 s of 60.
WARMUP_SHARE = 1 / 3
WARMUP_MAX_SECONDS = 120.0

# Thresholds of the verdict; benchmarks/README.md says why each is what it is.
#: RSS growth after the warm-up, from a least-squares line, in MB per 10 minutes.
RSS_SLOPE_LIMIT_MB = 5.0
#: Open descriptors and threads: the same at the end as at the end of the warm-up, each the
#: lowest of COUNT_WINDOW consecutive samples.
FD_CHANGE_LIMIT = 0
THREAD_CHANGE_LIMIT = 0
COUNT_WINDOW = 3
#: Throughput of the 10 s intervals after the warm-up: coefficient of variation at most this,
#: the slowest interval at least MIN_RATIO of the median, the last third's median at least
#: TREND_RATIO of the first third's.
THROUGHPUT_CV_LIMIT = 0.15
THROUGHPUT_MIN_RATIO = 0.5
THROUGHPUT_TREND_RATIO = 0.8
#: Short connections that may fail (share): none should, but one lost to a full queue is noise.
CONNECTION_FAILURE_LIMIT = 0.01

RESOURCE_DEVICE = "veth-gw"  # the resource's end of the gateway-resource veth (GatewayDemo)
ECHO_TCP_PORT = 7000
ECHO_UDP_PORT = 7001
TEN_MINUTES = 600.0

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


# --- measurements -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessStats:
    """One process at one moment."""

    rss: int  # VmRSS, bytes
    fds: int  # entries in /proc/PID/fd
    threads: int
    cpu_seconds: float  # user + system since start, all threads


@dataclass(frozen=True, slots=True)
class Sample:
    """Everything read at one moment; counters are cumulative, rates come from two samples."""

    elapsed: float  # seconds since the traffic started
    rx_bytes: int  # received by the resource's veth since it was created
    gateway: ProcessStats
    client: ProcessStats
    busy_seconds: float  # machine CPU time not idle, all CPUs
    flow_log_bytes: int  # flows.jsonl and its rotated files
    flows_logged: int  # lines in them
    foreign_namespaces: int  # network namespaces that are not ours (someone's tests)


def mbps(before: Sample, after: Sample) -> float:
    """Throughput into the resource between two samples, Mbit/s."""
    seconds = after.elapsed - before.elapsed
    return (after.rx_bytes - before.rx_bytes) * 8 / seconds / 1e6 if seconds > 0 else math.nan


def cpu_percent(before: Sample, after: Sample, side: Callable[[Sample], ProcessStats]) -> float:
    """A process's CPU between two samples, percent of one CPU."""
    seconds = after.elapsed - before.elapsed
    used = side(after).cpu_seconds - side(before).cpu_seconds
    return 100 * used / seconds if seconds > 0 else math.nan


def busy_percent(before: Sample, after: Sample) -> float:
    """How busy the whole machine was between two samples, percent of all CPUs."""
    seconds = (after.elapsed - before.elapsed) * len(os.sched_getaffinity(0))
    return 100 * (after.busy_seconds - before.busy_seconds) / seconds if seconds > 0 else math.nan


def process_stats(pid: int) -> ProcessStats:
    """RSS, descriptors, threads and CPU time of ``pid``.

    The descriptor count is the lowest of three reads 20 ms apart: the flow log's writer holds
    its file open only while it appends (once a second), and the gateway's registry writes open
    and close their files too; a descriptor open for one flush is not a leak.
    """
    fds = []
    for attempt in range(3):
        if attempt:
            time.sleep(0.02)
        fds.append(len(os.listdir(f"/proc/{pid}/fd")))
    threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            threads = int(line.split()[1])
    return ProcessStats(proc_memory(pid, "VmRSS"), min(fds), threads, proc_cpu_seconds(pid))


def device_rx_bytes(ns: NetNS, device: str) -> int:
    """Bytes ``device`` in ``ns`` has received (``ip -s -j link``)."""
    out = subprocess.run(
        ["ip", "-n", ns.name, "-s", "-j", "link", "show", "dev", device],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return int(json.loads(out.stdout)[0]["stats64"]["rx"]["bytes"])


def flow_log_stats(directory: Path) -> tuple[int, int]:
    """Bytes and lines of ``flows.jsonl`` and its rotated files in ``directory``."""
    size = lines = 0
    for path in directory.glob("flows.jsonl*"):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # rotated away between glob and read
            continue
        size += len(data)
        lines += data.count(b"\n")
    return size, lines


# --- the verdict --------------------------------------------------------------------------


def after_warmup(samples: Sequence[Sample], warmup: float) -> list[Sample]:
    """The samples from the end of the warm-up on (the first one is its baseline)."""
    return [sample for sample in samples if sample.elapsed >= warmup - 1e-6]


def rss_slope_mb_per_10min(samples: Sequence[Sample], side: Callable[[Sample], int]) -> float:
    """The slope of a least-squares line through (time, RSS), in MB per 10 minutes."""
    if len(samples) < 3:
        return math.nan
    fit = statistics.linear_regression(
        [sample.elapsed for sample in samples], [side(sample) / MB for sample in samples]
    )
    return fit.slope * TEN_MINUTES


def interval_mbps(samples: Sequence[Sample]) -> list[float]:
    """The throughput of each interval between consecutive samples."""
    return [mbps(a, b) for a, b in itertools.pairwise(samples)]


def _rss_check(name: str, measured: Sequence[Sample], side: Callable[[Sample], int]) -> Target:
    slope = rss_slope_mb_per_10min(measured, side)
    title = f"{name} RSS slope < {RSS_SLOPE_LIMIT_MB:g} MB per 10 min after warm-up"
    if math.isnan(slope):
        return Target(title, None, "fewer than 3 samples after the warm-up")
    first, last = side(measured[0]) / MB, side(measured[-1]) / MB
    detail = f"{slope:+.2f} MB per 10 min ({first:.1f} -> {last:.1f} MB)"
    return Target(title, slope < RSS_SLOPE_LIMIT_MB, detail)


def _count_check(
    name: str, what: str, limit: int, measured: Sequence[Sample], count: Callable[[Sample], int]
) -> Target:
    """The lowest count of the first :data:`COUNT_WINDOW` samples after the warm-up against that
    of the last ones: a leak keeps growing, while a worker thread or a file open for a moment
    (anyio's worker threads live until 10 s idle) comes and goes."""
    title = f"{name} {what} change <= {limit} after warm-up"
    if len(measured) < 2:
        return Target(title, None, "fewer than 2 samples after the warm-up")
    first = min(count(sample) for sample in measured[:COUNT_WINDOW])
    last = min(count(sample) for sample in measured[-COUNT_WINDOW:])
    seen = sorted({count(sample) for sample in measured})
    detail = f"{first} -> {last} (lowest of {COUNT_WINDOW} samples; seen {seen[0]}-{seen[-1]})"
    return Target(title, abs(last - first) <= limit, detail)


def throughput_checks(measured: Sequence[Sample]) -> list[Target]:
    """Coefficient of variation, slowest interval against the median, and trend."""
    values = interval_mbps(measured)
    titles = [
        f"throughput CV <= {THROUGHPUT_CV_LIMIT:.2f} over the sampling intervals",
        f"slowest interval >= {THROUGHPUT_MIN_RATIO:.1f}x the median",
        f"last third's median >= {THROUGHPUT_TREND_RATIO:.1f}x the first third's",
    ]
    if len(values) < 3:
        return [Target(title, None, "fewer than 3 intervals after the warm-up") for title in titles]
    mean, median = statistics.fmean(values), statistics.median(values)
    cv = statistics.stdev(values) / mean if mean > 0 else math.inf
    spread = f"min {min(values):.0f} / median {median:.0f} / max {max(values):.0f} Mbit/s"
    third = max(1, len(values) // 3)
    early, late = statistics.median(values[:third]), statistics.median(values[-third:])
    trend = late / early if early > 0 else 0.0
    return [
        Target(titles[0], cv <= THROUGHPUT_CV_LIMIT, f"CV {cv:.3f}; {spread}"),
        Target(
            titles[1],
            median > 0 and min(values) >= THROUGHPUT_MIN_RATIO * median,
            f"{min(values) / median if median > 0 else 0:.2f}x ({spread})",
        ),
        Target(
            titles[2],
            trend >= THROUGHPUT_TREND_RATIO,
            f"{trend:.2f}x ({late:.0f} vs {early:.0f} Mbit/s)",
        ),
    ]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the run saw besides the samples."""

    connections: dict[str, int]  # tcp, udp, failed (the short connections)
    iperf3_mbps: float | None  # iperf3's own average over the whole run, None: no report
    iperf3_retransmits: int | None
    alive: bool  # the gateway and the client were still running at the end


def evaluate(samples: Sequence[Sample], warmup: float, outcome: Outcome) -> list[Target]:
    """Every check of the verdict, in the order the report prints them."""
    measured = after_warmup(samples, warmup)
    checks = [
        _rss_check("gateway", measured, lambda s: s.gateway.rss),
        _rss_check("client", measured, lambda s: s.client.rss),
        _count_check("gateway", "open fds", FD_CHANGE_LIMIT, measured, lambda s: s.gateway.fds),
        _count_check("client", "open fds", FD_CHANGE_LIMIT, measured, lambda s: s.client.fds),
        _count_check(
            "gateway", "threads", THREAD_CHANGE_LIMIT, measured, lambda s: s.gateway.threads
        ),
        _count_check(
            "client", "threads", THREAD_CHANGE_LIMIT, measured, lambda s: s.client.threads
        ),
        *throughput_checks(measured),
    ]
    new_flows = measured[-1].flows_logged - measured[0].flows_logged if len(measured) > 1 else 0
    checks.append(
        Target(
            "the flow log keeps growing after the warm-up (flow logs are on and written)",
            new_flows > 0,
            f"{new_flows} flows logged after the warm-up, "
            f"{samples[-1].flows_logged if samples else 0} in all",
        )
    )
    tried = sum(outcome.connections.values())
    failed = outcome.connections.get("failed", 0)
    checks.append(
        Target(
            f"short connections failing <= {CONNECTION_FAILURE_LIMIT:.0%}",
            tried > 0 and failed <= CONNECTION_FAILURE_LIMIT * tried,
            f"{failed} of {tried} failed ({outcome.connections.get('tcp', 0)} TCP, "
            f"{outcome.connections.get('udp', 0)} UDP completed)",
        )
    )
    checks.append(
        Target(
            "gateway and client still running at the end",
            outcome.alive,
            "both running" if outcome.alive else "one of them exited",
        )
    )
    return checks


# --- rendering ----------------------------------------------------------------------------

TABLE_HEADER = [
    "Time m:ss", "Mbit/s", "vs first", "GW RSS MB", "Client RSS MB", "GW fds", "Client fds",
    "GW threads", "Client threads", "GW CPU", "Machine busy", "Flow log KB", "Flows logged",
]  # fmt: skip


def table_samples(samples: Sequence[Sample], step: float) -> list[Sample]:
    """The samples that start a table row: one per ``step`` seconds, and the last one."""
    rows = [sample for sample in samples if _on_step(sample.elapsed, step)]
    if samples and (not rows or rows[-1] is not samples[-1]):
        rows.append(samples[-1])
    return rows


def _on_step(elapsed: float, step: float) -> bool:
    return abs(elapsed / step - round(elapsed / step)) < 0.05


def table_rows(samples: Sequence[Sample], step: float, warmup: float) -> list[list[str]]:
    """One row per ``step``: the throughput, CPU and busy since the row before; gauges now.
    *vs first* is the throughput over that of the first row after the warm-up."""
    chosen = table_samples(samples, step)
    rows: list[list[str]] = []
    anchor: float | None = None
    for before, after in zip([None, *chosen], chosen, strict=False):
        rate = mbps(before, after) if before else math.nan
        if anchor is None and before is not None and before.elapsed >= warmup - 1e-6:
            anchor = rate
        warm = " (warm-up)" if after.elapsed <= warmup + 1e-6 and after.elapsed > 0 else ""
        rows.append(
            [
                f"{round(after.elapsed) // 60}:{round(after.elapsed) % 60:02d}{warm}",
                _num(rate, ".0f"),
                _num(rate / anchor if anchor else math.nan, ".2f", "x"),
                f"{after.gateway.rss / MB:.1f}",
                f"{after.client.rss / MB:.1f}",
                str(after.gateway.fds),
                str(after.client.fds),
                str(after.gateway.threads),
                str(after.client.threads),
                _num(
                    cpu_percent(before, after, lambda s: s.gateway) if before else math.nan,
                    ".0f",
                    "%",
                ),
                _num(busy_percent(before, after) if before else math.nan, ".0f", "%"),
                f"{after.flow_log_bytes / 1024:.0f}",
                str(after.flows_logged),
            ]
        )
    return rows


def _num(value: float, spec: str, suffix: str = "") -> str:
    return "-" if math.isnan(value) else f"{value:{spec}}{suffix}"


def format_sample(before: Sample, after: Sample) -> str:
    """The live line printed at each sample."""
    return (
        f"{after.elapsed:6.0f} s  {mbps(before, after):6.0f} Mbit/s  "
        f"RSS gw {after.gateway.rss / MB:6.1f} client {after.client.rss / MB:6.1f} MB  "
        f"fds {after.gateway.fds}/{after.client.fds}  "
        f"threads {after.gateway.threads}/{after.client.threads}  "
        f"gw CPU {cpu_percent(before, after, lambda s: s.gateway):3.0f}%  "
        f"busy {busy_percent(before, after):3.0f}%  "
        f"flow log {after.flow_log_bytes / 1024:7.0f} KB {after.flows_logged:6d} flows"
    )


def verdict_lines(checks: Sequence[Target]) -> list[str]:
    return [f"- {check.line()}" for check in checks]


def render_markdown(
    samples: Sequence[Sample],
    checks: Sequence[Target],
    facts: dict[str, str],
    *,
    warmup: float,
    step: float,
) -> str:
    rows = table_rows(samples, step, warmup)
    facts_table = "\n".join(f"| {key} | {value} |" for key, value in facts.items())
    failed = sum(check.passed is False for check in checks)
    summary = "all checks met" if not failed else f"{failed} check(s) NOT MET"
    return f"""\
| Machine and run | |
| --- | --- |
{facts_table}

{render_markdown_table(TABLE_HEADER, rows)}

Verdict ({summary}; everything after the {warmup:g} s warm-up counts):

{chr(10).join(verdict_lines(checks))}
"""


# --- the run ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/soak.py",
        description="Traffic through a tunplug gateway with flow logs on for 10 minutes "
        "(iperf3 plus new short connections), in three throw-away namespaces; samples "
        "throughput, RSS, open fds, threads and the flow log every 10 s, prints a table and a "
        "verdict, exits 1 when a check fails. Needs root and iperf3 (scripts/dev setup).",
    )
    parser.add_argument("--duration", type=float, help=f"seconds (default {FULL_SECONDS:g})")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_SECONDS:g} s (unless --duration says else)"
    )
    parser.add_argument(
        "--interval", type=float, default=INTERVAL_SECONDS, help="seconds between samples"
    )
    parser.add_argument(
        "--warmup", type=float, help="seconds left out of the verdict (default: a third of the "
        f"duration, at most {WARMUP_MAX_SECONDS:g})"
    )  # fmt: skip
    parser.add_argument("--streams", type=int, default=2, help="parallel iperf3 streams")
    parser.add_argument(
        "--bitrate", help="iperf3 -b per stream, e.g. 200M (default: as fast as it goes)"
    )
    parser.add_argument(
        "--connections-per-second", type=float, default=20.0, metavar="N",
        help="short connections (3 TCP : 1 UDP) a second, each a new flow (default 20)",
    )  # fmt: skip
    parser.add_argument(
        "--data-path", choices=["auto", "native", "python"],
        help="the gateway's --data-path (default: its own, auto; with flow logs on, the "
        "native core does the AEAD and Python the rest, as pipeline stages need)",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, metavar="FILE", help="also write the report there")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = build_parser()
    args = parser.parse_args(argv)
    duration = args.duration or (QUICK_SECONDS if args.quick else FULL_SECONDS)
    warmup = min(WARMUP_MAX_SECONDS, duration * WARMUP_SHARE)
    if args.warmup is not None:
        warmup = args.warmup
    if args.interval < 1:
        parser.error("--interval must be at least 1 s")
    if duration < 3 * args.interval:
        parser.error("--duration must hold at least 3 intervals")
    if not 0 <= warmup <= duration - 3 * args.interval:
        parser.error("--warmup must leave at least 3 intervals of the duration")
    if args.streams < 1 or args.connections_per_second <= 0:
        parser.error("--streams and --connections-per-second must be positive")
    # Samples fall on multiples of the interval; the warm-up ends on one.
    warmup = math.ceil(warmup / args.interval - 1e-9) * args.interval
    duration = math.ceil(duration / args.interval - 1e-9) * args.interval
    return Options(
        duration, args.interval, warmup, args.streams, args.bitrate,
        args.connections_per_second, args.data_path, args.output,
    )  # fmt: skip


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
            foreign_namespaces=len(set(_netns_names()) - self.ours),
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


def _preflight() -> str | None:
    if sys.platform != "linux":
        return "needs Linux (network namespaces)"
    if os.geteuid() != 0:
        return "needs root: sudo .venv/bin/python benchmarks/soak.py"
    missing = [tool for tool in ("ip", "iperf3", "nft") if not shutil.which(tool)]
    if missing:
        return f"missing {', '.join(missing)} (scripts/dev setup installs them)"
    return None


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


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    problem = _preflight()
    if problem:
        print(f"benchmarks/soak.py: {problem}", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    command = shlex.join(
        [
            "sudo",
            ".venv/bin/python",
            "benchmarks/soak.py",
            *(sys.argv[1:] if argv is None else argv),
        ]
    )
    log = partial(print, flush=True)
    facts = {k: v for k, v in machine_facts({}).items() if k not in WGGO_FACT_NAMES.values()}
    code_before = code_fingerprint()
    try:
        result = run_exclusive(lambda: soak(options, log))
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        print(f"benchmarks/soak.py: the soak failed: {error}", file=sys.stderr)
        return 2
    if isinstance(result, int):
        return result
    samples, outcome, paths = result
    if code_fingerprint() != code_before:
        facts["tunplug commit"] += " - WARNING: the code changed during the run"
        print(f"WARNING: Python files or native modules under {CODE_ROOT} changed during the run",
              file=sys.stderr)  # fmt: skip
    disturbed = sum(sample.foreign_namespaces > 0 for sample in samples)
    facts |= {
        "Data paths": paths,
        "Traffic": f"iperf3 -P {options.streams}"
        + (f" -b {options.bitrate}" if options.bitrate else "")
        + f", {options.connections_per_second:g} short connections/s (3 TCP : 1 UDP)",
        "Run": f"{options.duration:g} s, sampled every {options.interval:g} s, "
        f"warm-up {options.warmup:g} s",
        "iperf3 over the whole run": (
            f"{outcome.iperf3_mbps:.0f} Mbit/s, {outcome.iperf3_retransmits} retransmits"
            if outcome.iperf3_mbps is not None else "no report"
        ),
        "Other namespaces": f"present at {disturbed} of {len(samples)} samples (someone's tests "
        "sharing the CPUs)",
        "Command": f"`{command}`",
    }  # fmt: skip
    checks = evaluate(samples, options.warmup, outcome)
    report = render_markdown(samples, checks, facts, warmup=options.warmup, step=options.table_step)
    print()
    print(report)
    if options.output:
        options.output.parent.mkdir(parents=True, exist_ok=True)
        options.output.write_text(report)
        print(f"wrote {options.output}")
    return 1 if any(check.passed is False for check in checks) else 0


if __name__ == "__main__":
    raise SystemExit(main())
