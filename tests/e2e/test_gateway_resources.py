"""Resources end to end: per-client, per-port access enforced by the gateway, changed live
(a resource added is reachable, one removed cuts an open connection, both within 2 s), and
DNS resources answered with proxy addresses that reach the real server.

Namespaces as in :mod:`tests.e2e.test_gateway` (whose helpers this reuses): the gateway in the
middle, a resource namespace behind it (TCP echo services on 10.210.0.2 ports 443 and 22, a
DNS server on 10.210.0.53 for ``*.corp.example``), one namespace per client. Clients run the
headless client from a token (routes from the control channel), or, to show that the gateway
alone enforces access, from the token's wg-quick configuration with wider routes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_gateway import CLIENT, GATEWAY, METRICS, Client, Net, _dropped, wait_for
from tests.e2e.test_gateway import add_client_ns as _add_client_ns
from tunplug import token as client_token
from tunplug.app import App
from tunplug.config import load_settings
from tunplug.gateway.registry import Registry
from tunplug.resources import PROXY_V4
from tunplug.testing.netns import NetNS, python_in_ns, veth_pair

pytestmark = pytest.mark.root

SERVER = "10.210.0.2"
DNS = "10.210.0.53"
GATEWAY_TUNNEL = "100.64.0.1"
#: What the resource server sees as a client's address: the gateway's, masqueraded.
GATEWAY_LAN = "10.210.0.1"
WIDER_ROUTES = ["10.210.0.0/24", str(PROXY_V4)]

SERVICES = textwrap.dedent(f"""
    import socket, threading
    def echo(conn):
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)
    def serve(port):
        server = socket.create_server(("{SERVER}", port))
        while True:
            conn, peer = server.accept()
            print(port, peer[0], flush=True)
            threading.Thread(target=echo, args=(conn,), daemon=True).start()
    for port in (443, 22):
        threading.Thread(target=serve, args=(port,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
""")


def env(**extra: str) -> dict[str, str]:
    """As the gateway tests' env(), but the data path under test passes through."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TUNPLUG_") or k == "TUNPLUG_DATA_PATH"
    }
    return {**base, "TUNPLUG_DISABLE_PLUGIN_AUTOLOAD": "1", **extra}


class ResourceNet(Net):
    def start(self, *args: str) -> None:
        self.runs += 1
        with self.log.open("wb") as out:
            self.process = self.gateway.popen(
                GATEWAY, "run", "--state-dir", str(self.state), "--interface", "tpgw0",
                "--metrics-address", METRICS, "--dns-upstream", DNS, *args,
                stdout=out, stderr=subprocess.STDOUT, env=env(),
            )  # fmt: skip
        wait_for(self.log, "tunnel is up on", self.process)

    def registry(self) -> Registry:
        return Registry.open(self.state, crypto=App(load_settings()).crypto())

    def dropped(self) -> int:
        return _dropped(self.http("/metrics")[1])

    def accepted(self, count: int = 1) -> list[tuple[int, str]]:
        """(port, peer address) of every connection the resource services accepted (waiting
        up to 2 s for the first ``count`` of them to be logged)."""
        deadline = time.monotonic() + 2
        while True:
            words = (self.workdir / "services.log").read_text().split()
            accepted = [
                (int(port), peer) for port, peer in zip(words[1::2], words[2::2], strict=False)
            ]
            if len(accepted) >= count or time.monotonic() > deadline:
                return accepted
            time.sleep(0.02)


@pytest.fixture
def net() -> Iterator[ResourceNet]:
    with tempfile.TemporaryDirectory(prefix="tunplug-res-") as workdir, NetNS() as gateway, \
            NetNS() as resource:  # fmt: skip
        veth_pair(gateway, resource, f"{GATEWAY_LAN}/24", f"{SERVER}/24",
                  name_a="veth-res", name_b="veth-gw")  # fmt: skip
        resource.run("ip", "addr", "add", f"{DNS}/24", "dev", "veth-gw")
        state = ResourceNet(Path(workdir), gateway, resource)
        state.tool("init", "--endpoint", "10.201.0.2:51820", "--resource", "10.210.0.0/24")
        with state.registry() as registry:
            registry.remove_resource("10.210.0.0/24")
        with (state.workdir / "services.log").open("wb") as out:
            python_in_ns(resource, SERVICES, stdout=out, stderr=subprocess.STDOUT)
        dns_log = state.workdir / "dns.log"
        with dns_log.open("wb") as out:
            python_in_ns(resource, "tunplug.testing.dns_server", DNS, "53",
                         f"db.corp.example={SERVER}", "*.other.example=10.210.0.99",
                         module=True, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 10
        while "ready" not in (state.workdir / "services.log").read_text() or (
            "serving" not in dns_log.read_text()
        ):
            assert time.monotonic() < deadline, "the resource services did not start"
            time.sleep(0.05)
        try:
            yield state
        finally:
            if state.process is not None and state.process.poll() is None:
                state.stop()
            for ns in state.clients:
                ns.close()


def start_client(
    net: ResourceNet,
    name: str,
    groups: tuple[str, ...] = (),
    *,
    routes: tuple[str, ...] = (),
    static: bool = False,
) -> Client:
    """A client from a token, running, with ``routes`` added to the token's (the routes the
    control channel gives it, from the start). ``static``: the token's configuration as a
    wg-quick file, its routes widened to the resource network and the proxy ranges, which no
    control channel narrows: a client that tries more than it may, so that only the gateway
    stands in the way."""
    ns = _add_client_ns(net)
    with net.registry() as registry:
        issued = registry.add_client(name, groups)
    token = client_token.decode(issued.token)
    if static:
        wider = token.model_copy(update={"routes": token.routes + WIDER_ROUTES + list(routes)})
        source = net.workdir / f"{name}.conf"
        source.touch(mode=0o600)
        source.write_text(wider.to_wg_quick())
        options = ["--config", str(source)]
    else:
        wider = token.model_copy(update={"routes": token.routes + list(routes)})
        source = net.workdir / f"{name}.token"
        source.touch(mode=0o600)
        source.write_text(client_token.encode(wider))
        options = ["--token-path", str(source)]
    log = net.workdir / f"{name}.log"
    with log.open("wb") as out:
        process = ns.popen(
            CLIENT, "standalone", *options, "--interface", "tpc0",
            "--state-dir", str(net.workdir / f"{name}-state"), "--dns-control", "disabled",
            stdout=out, stderr=subprocess.STDOUT, env=env(),
        )  # fmt: skip
    wait_for(log, "tunnel is up on", process)
    assert net.process is not None
    wait_for(net.log, f"client {name} added", net.process)
    return Client(ns, process, log)


def connects(client: Client, address: str, port: int, timeout: float = 1.0) -> bool:
    code = f"import socket; socket.create_connection(('{address}', {port}), timeout={timeout})"
    return client.ns.run(sys.executable, "-c", code, check=False).returncode == 0


def query(client: Client, name: str, rdtype: str = "A") -> tuple[str, list[str]]:
    """Ask the gateway's DNS server from inside the client's namespace: (rcode, addresses)."""
    code = textwrap.dedent(f"""
        import dns.message, dns.query, dns.rcode
        q = dns.message.make_query("{name}", "{rdtype}")
        r = dns.query.udp(q, "{GATEWAY_TUNNEL}", timeout=3)
        print(dns.rcode.to_text(r.rcode()), *[rd.address for rs in r.answer for rd in rs])
    """)
    rcode, *addresses = client.ns.run(sys.executable, "-c", code, timeout=20).stdout.split()
    return rcode, addresses


def control_view(client: Client, query_string: str = "", timeout: float = 30) -> dict:
    code = textwrap.dedent(f"""
        import urllib.request
        url = "http://{GATEWAY_TUNNEL}:51820/v1/view{query_string}"
        print(urllib.request.urlopen(url, timeout={timeout}).read().decode())
    """)
    return json.loads(client.ns.run(sys.executable, "-c", code, timeout=timeout + 10).stdout)


def test_a_port_limited_resource_passes_its_port_and_drops_the_others(net):
    with net.registry() as registry:
        registry.add_resource(SERVER, name="web", ports=["tcp/443"])
    net.start()
    alice = start_client(net, "alice")
    assert connects(alice, SERVER, 443)
    before = net.dropped()
    assert not connects(alice, SERVER, 22)
    assert not alice.ping(SERVER, count=2, wait=1)
    assert net.dropped() >= before + 3  # SYN retries and the pings
    assert net.accepted() == [(443, GATEWAY_LAN)]
    assert "resources web (10.210.0.2/32, tcp/443)" in net.log.read_text()


def test_a_client_outside_the_resources_group_cannot_reach_it(net):
    with net.registry() as registry:
        registry.add_group("eng")
        registry.add_resource("10.210.0.0/24", name="lan", groups=["eng"])
    net.start()
    alice, bob = start_client(net, "alice", ("eng",)), start_client(net, "bob", static=True)
    assert alice.ping(SERVER) and connects(alice, SERVER, 22)
    before = net.dropped()
    assert not bob.ping(SERVER, count=2, wait=1)
    assert not connects(bob, SERVER, 443)
    assert net.dropped() >= before + 3
    # Bob's view does not show the resource; alice's does.
    assert [r["name"] for r in control_view(alice)["resources"]] == ["lan"]
    assert control_view(bob)["resources"] == []
    # Taken out of the group, alice loses it too.
    with net.registry() as registry:
        registry.join_group("eng", ["alice"], join=False)
    deadline = time.monotonic() + 2
    while alice.ping(SERVER, count=1, wait=0.3):
        assert time.monotonic() < deadline, "alice still reaches the resource out of its group"


PROBE = textwrap.dedent("""
    import socket, sys, time
    address, port = sys.argv[1], int(sys.argv[2])
    while True:
        try:
            socket.create_connection((address, port), timeout=0.2).close()
            print(time.time(), flush=True)
            break
        except OSError:
            time.sleep(0.02)
""")
HOLD = textwrap.dedent("""
    import socket, sys, time
    conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
    conn.settimeout(0.2)
    print("open", flush=True)
    while True:
        try:
            conn.sendall(b"x")
            assert conn.recv(16)
        except (OSError, AssertionError):
            print("cut", time.time(), flush=True)
            break
        time.sleep(0.05)
""")


def test_a_resource_added_is_reachable_and_one_removed_cuts_open_connections_within_2s(net):
    net.start()
    alice = start_client(net, "alice", static=True)
    assert not connects(alice, SERVER, 443, timeout=0.5)
    version = control_view(alice)["version"]
    # A long poll, answered when the resource appears.
    poll = python_in_ns(alice.ns, textwrap.dedent(f"""
        import urllib.request, time
        url = "http://{GATEWAY_TUNNEL}:51820/v1/view?since={version}"
        body = urllib.request.urlopen(url, timeout=30).read().decode()
        print(time.time(), body, flush=True)
    """), stdout=subprocess.PIPE, text=True)  # fmt: skip
    probe = python_in_ns(alice.ns, PROBE, SERVER, "443", stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    added_at = time.time()
    with net.registry() as registry:
        registry.add_resource(SERVER, name="web", ports=["tcp/443"])
    reachable_at = float(probe.communicate(timeout=10)[0])
    polled_at, _, body = poll.communicate(timeout=10)[0].partition(" ")
    assert [r["name"] for r in json.loads(body)["resources"]] == ["web"]
    hold = python_in_ns(alice.ns, HOLD, SERVER, "443", stdout=subprocess.PIPE, text=True)
    assert hold.stdout is not None and hold.stdout.readline().strip() == "open"
    time.sleep(0.5)
    assert hold.poll() is None, "the open connection broke before the resource was removed"
    removed_at = time.time()
    with net.registry() as registry:
        registry.remove_resource("web")
    cut_at = float(hold.communicate(timeout=10)[0].split()[-1])
    print(
        f"add -> reachable {reachable_at - added_at:.2f} s, add -> long poll answered "
        f"{float(polled_at) - added_at:.2f} s, remove -> open connection cut "
        f"{cut_at - removed_at:.2f} s"
    )
    assert reachable_at - added_at < 2.0
    assert float(polled_at) - added_at < 2.0
    assert cut_at - removed_at < 2.0
    assert not connects(alice, SERVER, 443, timeout=0.5)


def test_a_dns_resource_is_answered_with_a_proxy_address_that_reaches_the_real_server(net):
    with net.registry() as registry:
        registry.add_resource("*.corp.example", name="corp", ports=["tcp/443"])
    net.start()
    alice = start_client(net, "alice", routes=(str(PROXY_V4),))
    rcode, addresses = query(alice, "db.corp.example")
    assert rcode == "NOERROR" and addresses == ["100.96.0.1"]
    assert connects(alice, "100.96.0.1", 443)
    assert net.accepted() == [(443, GATEWAY_LAN)]  # the real server, the gateway's address
    before = net.dropped()
    assert not connects(alice, "100.96.0.1", 22)
    assert net.dropped() > before
    assert query(alice, "www.other.example") == ("REFUSED", [])
    assert query(alice, "db.corp.example", "MX") == ("NOERROR", [])
    assert "client alice: db.corp.example -> 10.210.0.2 as 100.96.0.1 (resource corp)" in (
        net.log.read_text()
    )
    view = control_view(alice)
    assert view["dns_servers"] == [GATEWAY_TUNNEL] and view["dns_domains"] == ["corp.example"]
    # Another client does not get alice's grant: it must ask, and then gets the same proxy.
    bob = start_client(net, "bob", static=True)
    assert not connects(bob, "100.96.0.1", 443, timeout=0.5)
    assert query(bob, "db.corp.example") == ("NOERROR", ["100.96.0.1"])
    assert connects(bob, "100.96.0.1", 443)
    # The resource removed: the grants go with it.
    with net.registry() as registry:
        registry.remove_resource("corp")
    deadline = time.monotonic() + 2
    while connects(bob, "100.96.0.1", 443, timeout=0.3):
        assert time.monotonic() < deadline, "the proxy address still reaches the server"
    assert query(bob, "db.corp.example") == ("REFUSED", [])
    assert net.stop() == 0
    assert "tunplug" not in net.gateway.run("nft", "list", "ruleset").stdout


def test_the_internet_resource_reaches_everything_but_the_other_clients(net):
    with net.registry() as registry:
        registry.add_resource("internet")
    net.start()
    alice = start_client(net, "alice", static=True, routes=("100.64.0.0/11",))
    bob = start_client(net, "bob", static=True)
    assert alice.ping(SERVER) and connects(alice, SERVER, 22) and bob.ping(SERVER)
    before = net.dropped()
    assert not alice.ping("100.64.0.3", count=2, wait=1)  # bob's tunnel address
    assert net.dropped() >= before + 2


def test_a_dns_server_of_the_host_on_port_53_does_not_stop_the_gateway(net):
    """Another DNS server holds UDP 53 on every address of the gateway host: the gateway still
    serves its clients (control channel, resources) and says that DNS resources will not
    resolve, rather than failing to start."""
    code = (
        "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "s.bind(('0.0.0.0', 53)); print('bound', flush=True); time.sleep(300)"
    )
    holder = net.gateway.popen(sys.executable, "-c", code, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"bound\n"
        with net.registry() as registry:
            registry.add_resource(SERVER, name="web", ports=["tcp/443"])
        net.start()
        alice = start_client(net, "alice")
        assert connects(alice, SERVER, 443)
        assert [r["name"] for r in control_view(alice)["resources"]] == ["web"]
        log = net.log.read_text()
        assert "DNS server: cannot listen on 100.64.0.1:53" in log, log
        assert "DNS resources will not resolve" in log
    finally:
        holder.kill()
        holder.wait()
