"""``tunplug-gateway`` end to end: clients with gateway-issued tokens (and a stock wireguard-go
client) reach a TCP service behind the gateway and nothing else; revocation, restart, metrics,
flow logs, 200 clients. Namespaces: gateway in the middle, a resource network behind it, one
namespace per client in front of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tunplug.testing.netns import NetNS, veth_pair

pytestmark = pytest.mark.root

BIN = Path(sys.executable).parent
GATEWAY = str(BIN / "tunplug-gateway")
CLIENT = str(BIN / "tunplug-headless-client")
RESOURCE = "10.210.0.2"
SECRET = "10.220.0.2"  # reachable from the gateway, but not a resource
METRICS = "127.0.0.1:9586"


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TUNPLUG_")}
    return {**base, "TUNPLUG_DISABLE_PLUGIN_AUTOLOAD": "1", **extra}


@dataclass
class Net:
    workdir: Path
    gateway: NetNS
    resource: NetNS
    clients: list[NetNS] = field(default_factory=list)
    state: Path = field(init=False)
    process: subprocess.Popen[bytes] | None = None
    runs: int = 0

    def __post_init__(self) -> None:
        self.state = self.workdir / "gateway-state"

    def tool(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [GATEWAY, *args, "--state-dir", str(self.state)],
            capture_output=True, text=True, timeout=60, env=env(), check=check,
        )  # fmt: skip

    @property
    def log(self) -> Path:
        return self.workdir / f"gateway-{self.runs}.log"

    def start(self, *args: str) -> None:
        self.runs += 1
        with self.log.open("wb") as out:
            self.process = self.gateway.popen(
                GATEWAY, "run", "--state-dir", str(self.state), "--interface", "tpgw0",
                "--metrics-address", METRICS, *args,
                stdout=out, stderr=subprocess.STDOUT, env=env(),
            )  # fmt: skip
        wait_for(self.log, "tunnel is up on", self.process)

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(20)
        self.process = None
        return code

    def http(self, path: str) -> tuple[int, str]:
        code = textwrap.dedent(f"""
            import urllib.request, urllib.error
            try:
                r = urllib.request.urlopen("http://{METRICS}{path}", timeout=3)
                print(r.status); print(r.read().decode(), end="")
            except urllib.error.HTTPError as e:
                print(e.code); print(e.read().decode(), end="")
        """)
        out = self.gateway.run(sys.executable, "-c", code).stdout
        status, _, body = out.partition("\n")
        return int(status), body


def wait_for(log: Path, needle: str, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while needle not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not seen:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


@pytest.fixture
def net() -> Iterator[Net]:
    with tempfile.TemporaryDirectory(prefix="tunplug-gw-") as workdir, NetNS() as gateway, \
            NetNS() as resource:  # fmt: skip
        veth_pair(gateway, resource, "10.210.0.1/24", f"{RESOURCE}/24",
                  name_a="veth-res", name_b="veth-gw")  # fmt: skip
        gateway.run("ip", "addr", "add", "10.220.0.1/24", "dev", "veth-res")
        resource.run("ip", "addr", "add", f"{SECRET}/24", "dev", "veth-gw")
        # The resource has no route back to the tunnel subnet: only masquerading makes replies
        # come back.
        state = Net(Path(workdir), gateway, resource)
        state.tool("init", "--endpoint", "10.201.0.2:51820", "--resource", "10.210.0.0/24")
        try:
            yield state
        finally:
            if state.process is not None and state.process.poll() is None:
                state.stop()
            for ns in state.clients:
                ns.close()


def add_client_ns(net: Net) -> NetNS:
    """A client namespace on its own veth to the gateway.

    The token's endpoint is 10.201.0.2 (the gateway's address on the first veth); other client
    namespaces get a host route to it through their own veth, and no other route.
    """
    index = len(net.clients)
    ns = NetNS()
    ns.__enter__()
    net.clients.append(ns)
    veth_pair(ns, net.gateway, f"10.201.{index}.1/24", f"10.201.{index}.2/24",
              name_a="veth-up", name_b=f"veth-c{index}")  # fmt: skip
    if index:
        ns.run("ip", "route", "add", "10.201.0.2/32", "via", f"10.201.{index}.2")
    return ns


@dataclass
class Client:
    ns: NetNS
    process: subprocess.Popen[bytes] | None
    log: Path

    def ping(self, address: str, count: int = 3, wait: float = 2) -> bool:
        result = self.ns.run("ping", "-c", str(count), "-i", "0.2", "-W", str(wait), address,
                             check=False, timeout=count * 3 + 10)  # fmt: skip
        return result.returncode == 0

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(20)
        self.process = None
        return code


def start_client(net: Net, name: str, **extra: str) -> Client:
    """``client add NAME``, its token in a mode-600 file, the headless client running."""
    ns = add_client_ns(net)
    token = net.tool("client", "add", name).stdout.strip()
    token_file = net.workdir / f"{name}.token"
    token_file.touch(mode=0o600)
    token_file.write_text(token)
    log = net.workdir / f"{name}.log"
    with log.open("wb") as out:
        process = ns.popen(
            CLIENT, "standalone", "--token-path", str(token_file), "--interface", "tpc0",
            "--state-dir", str(net.workdir / f"{name}-state"), "--dns-control", "disabled",
            stdout=out, stderr=subprocess.STDOUT, env=env(**extra),
        )  # fmt: skip
    wait_for(log, "tunnel is up on", process)
    return Client(ns, process, log)


def test_a_token_client_reaches_the_resource_service_and_nothing_else(net):
    net.gateway.run("sysctl", "-qw", "net.ipv4.ip_forward=0")
    net.start()
    client = start_client(net, "alice")
    assert client.ping(RESOURCE)
    server = net.resource.popen("iperf3", "-s", "-1", "-B", RESOURCE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(0.3)
    result = client.ns.run("iperf3", "-c", RESOURCE, "-t", "1", "-J", timeout=60)
    assert json.loads(result.stdout)["end"]["sum_received"]["bytes"] > 0
    server.wait(10)
    # The client has no route to the secret network; force one into the tunnel, and its own
    # WireGuard drops it (the token's routes are the resources only).
    client.ns.run("ip", "route", "add", "10.220.0.0/24", "dev", "tpc0")
    assert not client.ping(SECRET, count=2, wait=1)
    status, body = net.http("/healthz")
    assert (status, body) == (200, "ok\n")
    assert net.http("/readyz")[0] == 200
    metrics = net.http("/metrics")[1]
    assert 'tunplug_gateway_client_rx_bytes_total{client="alice"}' in metrics
    assert "tunplug_gateway_clients 1" in metrics
    # client list shows the handshake and bytes (written by the gateway every 2 s).
    time.sleep(2.5)
    rows = {row["name"]: row for row in json.loads(net.tool("client", "list", "--json").stdout)}
    assert rows["alice"]["rx_bytes"] > 100_000 and rows["alice"]["last_handshake"] is not None
    assert client.stop() == 0
    assert net.stop() == 0
    assert "tpgw0" not in net.gateway.run("ip", "-o", "link").stdout
    assert "tunplug" not in net.gateway.run("nft", "list", "ruleset").stdout
    assert net.gateway.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"


def test_a_stock_wireguard_client_with_the_wg_quick_output_is_filtered_by_the_gateway(net):
    """wireguard-go with the gateway's --wg-quick config, AllowedIPs widened by its user: the
    gateway still forwards only to the resources, and counts what it dropped."""
    net.start()
    ns = add_client_ns(net)
    config = net.tool("client", "add", "bob", "--wg-quick").stdout
    private_key = next(line.split("=", 1)[1].strip() for line in config.splitlines()
                       if line.startswith("PrivateKey"))  # fmt: skip
    address = next(line.split("=", 1)[1].split(",")[0].strip() for line in config.splitlines()
                   if line.startswith("Address"))  # fmt: skip
    gateway_key = next(line.split("=", 1)[1].strip() for line in config.splitlines()
                       if line.startswith("PublicKey"))  # fmt: skip
    psk = next(line.split("=", 1)[1].strip() for line in config.splitlines()
               if line.startswith("PresharedKey"))  # fmt: skip
    key_file, psk_file = net.workdir / "bob.key", net.workdir / "bob.psk"
    for path, text in ((key_file, private_key), (psk_file, psk)):
        path.touch(mode=0o600)
        path.write_text(text + "\n")
    ifname = "wgbob" + os.urandom(2).hex()
    go = ns.popen("env", "LOG_LEVEL=error", "wireguard-go", "-f", ifname,
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while ns.run("ip", "link", "show", ifname, check=False).returncode != 0:
            assert time.monotonic() < deadline, "wireguard-go did not create its device"
            time.sleep(0.05)
        ns.run(
            "wg", "set", ifname, "private-key", str(key_file), "peer", gateway_key,
            "preshared-key", str(psk_file), "endpoint", "10.201.0.2:51820",
            "allowed-ips", "10.210.0.0/24,10.220.0.0/24",
        )  # fmt: skip
        ns.run("ip", "addr", "add", address, "dev", ifname)
        ns.run("ip", "link", "set", ifname, "up")
        ns.run("ip", "route", "add", "10.210.0.0/24", "dev", ifname)
        ns.run("ip", "route", "add", "10.220.0.0/24", "dev", ifname)
        # wireguard-go sends its first initiation at once; were it to arrive before the gateway
        # picked the new client up, the retry would come 5 s later (REKEY_TIMEOUT).
        assert net.process is not None
        wait_for(net.log, "client bob added", net.process)
        stock = Client(ns, None, net.workdir / "none")
        assert stock.ping(RESOURCE), ns.run("wg", "show").stdout + net.http("/metrics")[1]
        before = _dropped(net.http("/metrics")[1])
        assert not stock.ping(SECRET, count=3, wait=1)
        assert _dropped(net.http("/metrics")[1]) >= before + 3
    finally:
        go.terminate()
        go.wait(10)


def _dropped(metrics: str) -> int:
    for line in metrics.splitlines():
        if line.startswith("tunplug_gateway_dropped_not_resource_packets_total "):
            return int(line.split()[1])
    raise AssertionError(f"no drop counter in:\n{metrics}")


def test_revoking_a_client_cuts_it_off_within_a_second_and_the_other_keeps_working(net):
    net.start()
    alice, carol = start_client(net, "alice"), start_client(net, "carol")
    assert alice.ping(RESOURCE) and carol.ping(RESOURCE)
    revoked_at = time.monotonic()
    net.tool("client", "revoke", "alice")
    cut_off = None
    while time.monotonic() - revoked_at < 5:
        started = time.monotonic()
        if not alice.ping(RESOURCE, count=1, wait=0.3):
            cut_off = started - revoked_at
            break
    assert cut_off is not None and cut_off <= 1.0, f"still connected {cut_off} s after revoke"
    assert not alice.ping(RESOURCE, count=2, wait=1)
    assert carol.ping(RESOURCE)
    assert "client alice revoked" in net.log.read_text()
    # A client added while the gateway runs works at once.
    dave = start_client(net, "dave")
    assert dave.ping(RESOURCE)


def test_a_restarted_gateway_keeps_its_clients_and_they_reconnect_by_themselves(net):
    net.start()
    # Short client timers: without a reply, a new handshake after 1 + 1 s instead of 15 s.
    alice = start_client(net, "alice", TUNPLUG_TEST_TIMERS="keepalive_timeout=1,rekey_timeout=1")
    assert alice.ping(RESOURCE)
    assert net.stop() == 0
    net.start()
    deadline = time.monotonic() + 20
    while not alice.ping(RESOURCE, count=1, wait=1):
        assert time.monotonic() < deadline, "the client did not reconnect"
    assert "1 client(s)" in net.log.read_text()


def test_flow_logs_record_a_finished_tcp_flow_with_its_byte_counts(net):
    flows = net.workdir / "flows"
    net.start("--flow-logs", str(flows))
    alice = start_client(net, "alice")
    service = textwrap.dedent(f"""
        import socket
        s = socket.create_server(("{RESOURCE}", 7000))
        conn, _ = s.accept()
        got = 0
        while got < 50000:
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += len(chunk)
        conn.sendall(b"r" * 12345)
        conn.close()
        print(got)
    """)
    server = net.resource.popen(sys.executable, "-c", service, stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    sender = textwrap.dedent(f"""
        import socket
        c = socket.create_connection(("{RESOURCE}", 7000), timeout=10)
        c.sendall(b"q" * 50000)
        got = 0
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            got += len(chunk)
        c.close()
        print(got)
    """)
    assert alice.ns.run(sys.executable, "-c", sender, timeout=30).stdout.strip() == "12345"
    out, _ = server.communicate(timeout=10)
    assert out.strip() == "50000"
    time.sleep(1.5)
    assert net.stop() == 0  # flushes what is still open
    lines = [json.loads(line) for line in (flows / "flows.jsonl").read_text().splitlines()]
    tcp = [flow for flow in lines if flow["protocol"] == "tcp" and flow["dport"] == 7000]
    assert len(tcp) == 1, lines
    flow = tcp[0]
    assert flow["client"] == "alice"
    assert flow["dst"] == RESOURCE
    # Gateway's view: inbound = from the client through the tunnel; outbound = to the client.
    assert flow["payload_in"] == 50000
    assert flow["payload_out"] == 12345
    assert flow["end"] >= flow["start"]


def test_two_hundred_clients_list_fast_and_the_gateway_serves_them(net):
    from tunplug.app import App
    from tunplug.config import load_settings
    from tunplug.gateway.registry import Registry

    with Registry.open(net.state, crypto=App(load_settings()).crypto()) as registry:
        for index in range(200):
            registry.add_client(f"bulk{index:03d}")
    started = time.monotonic()
    listed = json.loads(net.tool("client", "list", "--json").stdout)
    assert time.monotonic() - started < 2.0  # includes starting Python
    assert len(listed) == 200
    net.start()
    alice = start_client(net, "alice")
    assert alice.ping(RESOURCE)
    assert net.process is not None
    time.sleep(1)
    rss_kb = int(next(line.split()[1] for line in
                      Path(f"/proc/{net.process.pid}/status").read_text().splitlines()
                      if line.startswith("VmRSS")))  # fmt: skip
    print(f"gateway RSS with 201 clients: {rss_kb / 1024:.1f} MB")
    assert rss_kb < 200 * 1024
