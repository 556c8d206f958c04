"""The live demo: a client reaching a service behind a gateway, in three namespaces.

Who calls it: ``tunplug demo`` as root (the README's first command), and its test.

1. Three fresh network namespaces: ``client`` -- veth 10.201.0.0/24 -- ``gateway`` -- veth
   10.210.0.0/24 -- ``resource``. The client has no route to the resource network.
2. ``tunplug-gateway init`` (resource 10.210.0.0/24) and ``client add`` (the token), in a temp
   state directory; ``tunplug-gateway run`` in the gateway namespace.
3. ``tunplug-headless-client standalone`` with that token (mode 0600 file) in the client
   namespace.
4. Ping the resource; then
   ``iperf3`` to the resource's TCP service with one line per second: throughput, the
   handshake age and the bytes the gateway counted for this client (from its ``/metrics``).
5. Resources by name, live: a DNS server in the resource namespace; ``tunplug-gateway resource
   add '*.corp.example'`` while everything runs; the client (told through the control channel)
   routes the proxy range, resolves ``db.corp.example`` at the gateway's DNS server through the
   tunnel and pings the proxy address; ``resource remove`` cuts it again.
6. On exit, Ctrl-C or SIGTERM: processes stopped by PID (SIGTERM, so they clean up), the
   namespaces and the temp directory removed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Self

from tunplug.testing.netns import NetNS, veth_pair

CLIENT_UNDERLAY = "10.201.0.1"
GATEWAY_UNDERLAY = "10.201.0.2"
GATEWAY_RESOURCE_SIDE = "10.210.0.1"
RESOURCE = "10.210.0.2"
RESOURCE_NET = "10.210.0.0/24"
METRICS = "127.0.0.1:9586"
#: The DNS resource of step 5, and the name the client resolves.
DNS_RESOURCE = "*.corp.example"
DNS_NAME = "db.corp.example"
#: The gateway's tunnel address (its DNS server for DNS resources).
GATEWAY_TUNNEL = "100.64.0.1"
CLIENT_NAME = "demo-laptop"
#: One iperf3 interval line: "[  5]   1.00-2.00   sec   101 MBytes   848 Mbits/sec ...".
INTERVAL = re.compile(r"\[\s*\d+\]\s+([\d.]+)-([\d.]+)\s+sec.*?([\d.]+ [KMG]?bits/sec)")


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def _tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


class GatewayDemo:
    """Builds the three namespaces on enter; removes everything on exit."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Self:
        stack = self._stack
        try:
            self.workdir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="tunplug-demo-"))
            )
            step("creating namespaces client, gateway and resource (veth between them)")
            self.client = stack.enter_context(NetNS("tpdemo-client-"))
            self.gateway = stack.enter_context(NetNS("tpdemo-gw-"))
            self.resource = stack.enter_context(NetNS("tpdemo-res-"))
            veth_pair(self.client, self.gateway, f"{CLIENT_UNDERLAY}/24", f"{GATEWAY_UNDERLAY}/24",
                      name_a="veth-up", name_b="veth-clients")  # fmt: skip
            veth_pair(self.gateway, self.resource, f"{GATEWAY_RESOURCE_SIDE}/24", f"{RESOURCE}/24",
                      name_a="veth-res", name_b="veth-gw")  # fmt: skip
            stack.callback(self._stop_processes)
        except BaseException:
            stack.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()
        print("==> processes stopped; namespaces and the temp directory removed", flush=True)

    def _stop_processes(self) -> None:
        for process in reversed(self.processes):  # client first, then the gateway
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNPLUG_")}
        return {**env, "TUNPLUG_DISABLE_PLUGIN_AUTOLOAD": "1"}

    def _start(self, ns: NetNS, log: Path, ready: str, *argv: str) -> None:
        with log.open("wb") as out:
            process = ns.popen(*argv, stdout=out, stderr=subprocess.STDOUT, env=self._env())
        self.processes.append(process)
        deadline = time.monotonic() + 20
        while ready not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)

    def metrics(self) -> dict[str, float]:
        """The gateway's /metrics for our client, read inside the gateway namespace."""
        code = (
            "import urllib.request; "
            f"print(urllib.request.urlopen('http://{METRICS}/metrics', timeout=2).read().decode())"
        )
        text = self.gateway.run(sys.executable, "-c", code, check=False).stdout
        values: dict[str, float] = {}
        for line in text.splitlines():
            match = re.match(r'(\w+)(?:\{client="' + CLIENT_NAME + r'"\})? ([0-9.e+-]+)$', line)
            if match:
                values[match.group(1)] = float(match.group(2))
        return values

    def run(self, *, count: int, seconds: float) -> int:
        self.start_tunnel()
        step(f"ping {RESOURCE} (in the resource namespace) from the client, through the gateway")
        ping = self.client.run("ping", "-c", str(count), "-i", "0.3", "-W", "2", RESOURCE,
                               check=False, timeout=60)  # fmt: skip
        print(ping.stdout.rstrip())
        failures = int(ping.returncode != 0)
        routes = self.client.run("ip", "route", "show", "dev", "tunplug0").stdout.split("\n")
        shown = ", ".join(
            line.split()[0] for line in routes if line.strip() and GATEWAY_TUNNEL not in line
        )
        print(f"    the client routes only the resources into the tunnel: {shown} (and "
              f"{GATEWAY_TUNNEL}, the gateway's control channel and DNS); the gateway drops "
              "anything else a client sends (tests/e2e/test_gateway.py)")  # fmt: skip
        failures += self._iperf(seconds)
        failures += self._dns_resource()
        step("stopping the client and the gateway (SIGTERM)")
        return 1 if failures else 0

    def start_tunnel(self, gateway_args: Sequence[str] = ()) -> None:
        """Init the gateway, add the client, start both (``gateway_args`` go to ``run``; the
        soak benchmark passes ``--flow-logs``); returns once both tunnels are up."""
        state = self.state = self.workdir / "gateway-state"
        gateway_tool, client_tool = _tool("tunplug-gateway"), _tool("tunplug-headless-client")
        step(f"tunplug-gateway init: endpoint {GATEWAY_UNDERLAY}:51820, resource {RESOURCE_NET}")
        subprocess.run(
            [gateway_tool, "init", "--state-dir", str(state), "--endpoint",
             f"{GATEWAY_UNDERLAY}:51820", "--resource", RESOURCE_NET],
            check=True, env=self._env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        step(f"tunplug-gateway client add {CLIENT_NAME}: the token goes to a mode-600 file")
        token = subprocess.run(
            [gateway_tool, "client", "add", CLIENT_NAME, "--state-dir", str(state)],
            check=True, env=self._env(), capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        token_file = self.workdir / "token"
        token_file.touch(mode=0o600)
        token_file.write_text(token + "\n")
        print(f"    token: {token[:16]}...{token[-6:]} ({len(token)} characters)")
        step(f"starting tunplug-gateway run in {self.gateway.name}")
        self._start(
            self.gateway, self.workdir / "gateway.log", "tunnel is up on",
            gateway_tool, "run", "--state-dir", str(state), "--metrics-address", METRICS,
            "--dns-upstream", RESOURCE, *gateway_args,
        )  # fmt: skip
        step(f"starting tunplug-headless-client in {self.client.name} with the token")
        self._start(self.client, self.workdir / "client.log", "tunnel is up on",
                    client_tool, "standalone", "--token-path", str(token_file),
                    "--state-dir", str(self.workdir / "client-state"), "--dns-control", "disabled",
                    "--interface", "tunplug0")  # fmt: skip
        for name in ("gateway", "client"):
            found = re.search(r"up: (\w+) data path", (self.workdir / f"{name}.log").read_text())
            print(f"    {name}: {found.group(1) if found else '?'} data path", flush=True)

    def _iperf(self, seconds: float) -> int:
        step(f"iperf3 for {seconds:.0f} s: client -> TCP service at {RESOURCE}:5201, live")
        server = self.resource.popen(
            "iperf3", "-s", "-1", "-B", RESOURCE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.processes.insert(0, server)
        time.sleep(0.3)
        client = self.client.popen(
            "iperf3", "-c", RESOURCE, "-t", str(seconds), "-i", "1", "--forceflush",
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert client.stdout is not None
        total = 0.0
        for line in client.stdout:
            match = re.search(
                r"\[\s*\d+\]\s+([\d.]+)-([\d.]+)\s+sec.*?([\d.]+ [KMG]?bits/sec)", line
            )
            if match and "sender" not in line and "receiver" not in line:
                numbers = self.metrics()
                handshake = numbers.get("tunplug_gateway_client_last_handshake_seconds")
                age = f"{time.time() - handshake:.0f} s ago" if handshake else "none yet"
                rx = numbers.get("tunplug_gateway_client_rx_bytes_total", 0) / 1e6
                print(f"    {match.group(2):>5} s  {match.group(3):>16}  "
                      f"handshake {age}, gateway received {rx:.0f} MB from {CLIENT_NAME}",
                      flush=True)  # fmt: skip
            if "receiver" in line:
                total_match = re.search(r"([\d.]+) ([KMG]?)bits/sec", line)
                if total_match:
                    scale = {"": 1e-6, "K": 1e-3, "M": 1.0, "G": 1e3}[total_match.group(2)]
                    total = float(total_match.group(1)) * scale
        client.wait(30)
        print(f"    average {total:.0f} Mbit/s through the tunnel")
        return int(client.returncode != 0 or total <= 0)

    def _wait(self, what: str, check: Callable[[], bool], timeout: float = 5.0) -> float | None:
        """Seconds until ``check()`` held (polled every 0.1 s), or None after ``timeout``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if check():
                return time.monotonic() - started
            time.sleep(0.1)
        print(f"    {what}: not within {timeout:g} s")
        return None

    def _proxy_routed(self) -> bool:
        return "100.96.0.0/11" in self.client.run("ip", "route", "show", "dev", "tunplug0").stdout

    def _dns_resource(self) -> int:
        """Step 5: a DNS resource added and removed while the client runs."""
        gateway_tool = _tool("tunplug-gateway")
        step(f"a DNS server in {self.resource.name} answers {DNS_NAME} with {RESOURCE}")
        server = self.resource.popen(
            sys.executable, "-m", "tunplug.testing.dns_server", RESOURCE, "53",
            f"{DNS_NAME}={RESOURCE}", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.processes.insert(0, server)
        step(f"tunplug-gateway resource add '{DNS_RESOURCE}' --port icmp (live, nothing restarts)")
        subprocess.run(
            [gateway_tool, "resource", "add", DNS_RESOURCE, "--port", "icmp",
             "--state-dir", str(self.state)],
            check=True, env=self._env(), stdout=subprocess.DEVNULL,
        )  # fmt: skip
        took = self._wait("the client's proxy route", self._proxy_routed)
        if took is None:
            return 1
        print(f"    {took:.1f} s later the client routes the proxy range 100.96.0.0/11 into the "
              "tunnel (told by the gateway's control channel)")  # fmt: skip
        code = (
            "import dns.message, dns.query, sys; "
            f"q = dns.message.make_query({DNS_NAME!r}, 'A'); "
            f"r = dns.query.udp(q, {GATEWAY_TUNNEL!r}, timeout=3); "
            "print(' '.join(rd.address for rrset in r.answer for rd in rrset))"
        )
        answer = self.client.run(sys.executable, "-c", code, check=False, timeout=15)
        proxy = answer.stdout.strip().split(" ")[0]
        if not proxy:
            print(f"    no answer from the gateway's DNS server: {answer.stderr.strip()[-300:]}")
            return 1
        print(f"    {DNS_NAME} at the gateway's DNS server ({GATEWAY_TUNNEL}, through the "
              f"tunnel): {proxy}, a proxy address the gateway translates to "
              f"{RESOURCE}")  # fmt: skip
        ping = self.client.run("ping", "-c", "2", "-i", "0.3", "-W", "2", proxy,
                               check=False, timeout=30)  # fmt: skip
        print("    " + (ping.stdout.strip().splitlines() or ["no ping output"])[-2])
        step(f"tunplug-gateway resource remove '{DNS_RESOURCE}'")
        subprocess.run(
            [gateway_tool, "resource", "remove", DNS_RESOURCE, "--state-dir", str(self.state)],
            check=True, env=self._env(), stdout=subprocess.DEVNULL,
        )  # fmt: skip
        gone = self._wait("the proxy route to go", lambda: not self._proxy_routed())
        cut = self.client.run("ping", "-c", "1", "-W", "1", proxy, check=False, timeout=10)
        print(f"    {gone or 0:.1f} s later the route is gone, and {proxy} no longer answers: "
              f"{'cut' if cut.returncode != 0 else 'STILL ANSWERS'}")  # fmt: skip
        return int(ping.returncode != 0 or gone is None or cut.returncode == 0)
