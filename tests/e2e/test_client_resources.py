"""Live resources end to end: a token client follows the gateway's control channel. A CIDR
resource added while the client runs is routed and reachable within 2 s, and gone within 2 s
of its removal; a DNS resource resolves through the client's stub resolver (etc-resolv-conf,
on a resolv.conf bind-mounted in a private mount namespace, never the host's) to a proxy
address whose TCP service answers, while a name outside the resources resolves through the
original server without a packet into the tunnel. Namespaces as in ``test_gateway``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.test_gateway import CLIENT, Client, Net, add_client_ns, env, net, wait_for
from tunplug.testing.netns import NetNS, veth_pair

__all__ = ["net"]  # the fixture, shared with test_gateway

pytestmark = pytest.mark.root

LAB = "10.230.0.2"  # a network the gateway reaches, a resource only once added
DNS_UPSTREAM = "10.210.0.53"  # the resource side's DNS server, the gateway's --dns-upstream
STUB = "127.0.0.153"
#: ``TUNPLUG_DATA_PATH=python`` runs the client on the pure-Python data path (env() drops it).
DATA_PATH = {k: v for k, v in os.environ.items() if k == "TUNPLUG_DATA_PATH"}


def serve_tcp(ns: object, address: str, port: int) -> subprocess.Popen[bytes]:
    code = (
        "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        f"s.bind(({address!r},{port}));s.listen()\n"
        "while True:\n c,_=s.accept();c.sendall(b'hello from the resource\\n');c.close()\n"
    )
    return ns.popen(sys.executable, "-c", code)  # type: ignore[attr-defined,no-any-return]


def tcp_hello(client: Client, address: str, port: int) -> bool:
    code = (
        "import socket,sys\ntry:\n"
        f" s=socket.create_connection(({address!r},{port}),timeout=2);print(s.recv(100).decode())\n"
        "except OSError as e: print('failed',e)"
    )
    out = client.ns.run(sys.executable, "-c", code, check=False, timeout=10).stdout
    return "hello from the resource" in out


def dns_query(client: Client, server: str, name: str) -> list[str]:
    code = (
        "import dns.message,dns.query\n"
        f"q=dns.message.make_query({name!r},'A')\n"
        f"r=dns.query.udp(q,{server!r},timeout=3)\n"
        "print(' '.join(str(rd) for rr in r.answer for rd in rr))"
    )
    return client.ns.run(sys.executable, "-c", code, timeout=15).stdout.split()


def tx_packets(client: Client) -> int:
    text = client.ns.run("cat", "/sys/class/net/tpc0/statistics/tx_packets").stdout
    return int(text)


def wait_route(client: Client, network: str, present: bool, limit: float = 2.0) -> float:
    started = time.monotonic()
    while (network in client.ns.run("ip", "route").stdout) != present:
        if time.monotonic() - started > limit:
            what = "not added" if present else "not removed"
            tail = client.log.read_text()[-3000:]
            raise AssertionError(f"route {network} {what} within {limit} s:\n{tail}")
        time.sleep(0.02)
    return time.monotonic() - started


def start_resource_client(net: Net, name: str, workdir: Path) -> Client:
    """``client add``, then the headless client in etc-resolv-conf mode, its resolv.conf a
    bind-mounted file in a private mount namespace (original: nameserver 127.0.0.1)."""
    ns = add_client_ns(net)
    ns.run("ip", "link", "set", "lo", "up")
    token = net.tool("client", "add", name).stdout.strip()
    token_file = workdir / f"{name}.token"
    token_file.touch(mode=0o600)
    token_file.write_text(token)
    resolv = workdir / f"{name}-resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    log = workdir / f"{name}.log"
    command = (
        f"mount --bind {resolv} /etc/resolv.conf && exec {CLIENT} standalone "
        f"--token-path {token_file} --interface tpc0 --state-dir {workdir / (name + '-state')} "
        "--dns-control etc-resolv-conf"
    )
    with log.open("wb") as out:
        process = ns.popen("unshare", "-m", "--propagation", "private", "sh", "-c", command,
                           stdout=out, stderr=subprocess.STDOUT, env=env(**DATA_PATH))  # fmt: skip
    wait_for(log, "tunnel is up on", process)
    client = Client(ns, process, log)
    client.resolv = resolv  # type: ignore[attr-defined]
    return client


def test_resources_added_and_removed_follow_to_the_client_and_dns_resources_resolve(net):
    # The lab network: reachable from the gateway, a resource only once added.
    net.gateway.run("ip", "addr", "add", "10.230.0.1/24", "dev", "veth-res")
    net.resource.run("ip", "addr", "add", f"{LAB}/24", "dev", "veth-gw")
    net.resource.run("ip", "addr", "add", f"{DNS_UPSTREAM}/24", "dev", "veth-gw")
    upstream = net.resource.popen(
        sys.executable, "-m", "tunplug.testing.dns_server", DNS_UPSTREAM, "53",
        f"db.corp.example={LAB}",
    )  # fmt: skip
    service = serve_tcp(net.resource, "0.0.0.0", 5432)
    net.start("--dns-upstream", DNS_UPSTREAM)
    client = start_resource_client(net, "carol", net.workdir)
    original = client.ns.popen(
        sys.executable, "-m", "tunplug.testing.dns_server", "127.0.0.1", "53",
        "www.outside.example=192.0.2.7",
    )  # fmt: skip
    try:
        wait_for(client.log, "resources:", client.process)  # the first view applied
        # A CIDR resource while the client runs.
        started = time.monotonic()
        net.tool("resource", "add", "10.230.0.0/24", "--name", "lab")
        wait_route(client, "10.230.0.0/24", True)
        added = time.monotonic() - started
        assert tcp_hello(client, LAB, 5432)
        started = time.monotonic()
        net.tool("resource", "remove", "lab")
        wait_route(client, "10.230.0.0/24", False)
        removed = time.monotonic() - started
        print(f"route added after {added:.2f} s, removed after {removed:.2f} s")

        # A DNS resource: the stub sends it to the gateway; the gateway answers a proxy.
        net.tool("resource", "add", "*.corp.example", "--name", "corp")
        wait_for(client.log, "DNS corp.example via", client.process, timeout=5)
        assert f"nameserver {STUB}" in client.resolv.read_text()  # type: ignore[attr-defined]
        (proxy,) = dns_query(client, STUB, "db.corp.example")
        assert proxy.startswith("100.")
        assert tcp_hello(client, proxy, 5432)
        # What systemd-resolved would do with the link's servers (resolved cannot run here;
        # its commands are unit-tested with a fake resolvectl): ask the gateway directly.
        gateway_dns = re.search(r"DNS corp\.example via (\S+)", client.log.read_text())
        assert gateway_dns is not None
        assert dns_query(client, gateway_dns.group(1), "db.corp.example") == [proxy]
        # A name outside the resources: the original server, nothing into the tunnel.
        before = tx_packets(client)
        assert dns_query(client, STUB, "www.outside.example") == ["192.0.2.7"]
        assert tx_packets(client) == before

        assert client.stop() == 0
        assert client.resolv.read_text() == "nameserver 127.0.0.1\n"  # type: ignore[attr-defined]
    finally:
        for process in (original, upstream, service):
            process.terminate()
            process.wait(5)
        if client.process is not None:
            client.stop()


def test_the_internet_resource_is_used_only_when_asked_and_the_lan_stays_reachable(net):
    """``--activate-internet-resource``: while the gateway offers the Internet resource,
    everything goes through the tunnel except the client's own LAN (policy routing keeps the
    main table's other routes); when the gateway withdraws it, the full tunnel goes."""
    internet_host = "10.240.0.2"  # behind the gateway, reachable only as "the Internet"
    net.gateway.run("ip", "addr", "add", "10.240.0.1/24", "dev", "veth-res")
    net.resource.run("ip", "addr", "add", f"{internet_host}/24", "dev", "veth-gw")
    net.tool("resource", "add", "internet")
    net.start()
    ns = add_client_ns(net)
    token_file = net.workdir / "erin.token"
    token_file.touch(mode=0o600)
    token_file.write_text(net.tool("client", "add", "erin").stdout.strip())
    log = net.workdir / "erin.log"
    with log.open("wb") as out:
        process = ns.popen(CLIENT, "standalone", "--token-path", str(token_file),
                           "--interface", "tpc0", "--state-dir", str(net.workdir / "erin-state"),
                           "--dns-control", "disabled", "--activate-internet-resource",
                           stdout=out, stderr=subprocess.STDOUT, env=env(**DATA_PATH))  # fmt: skip
    client = Client(ns, process, log)
    with NetNS() as lan:
        veth_pair(ns, lan, "192.168.77.1/24", "192.168.77.2/24", name_a="veth-lan",
                  name_b="veth-lan")  # fmt: skip
        try:
            wait_for(log, "Internet resource on", process)
            assert "default" in ns.run("ip", "route", "show", "table", "51820").stdout
            assert client.ping(internet_host)  # through the tunnel and the gateway
            before = tx_packets(client)
            assert client.ping("192.168.77.2")  # the LAN: directly, not into the tunnel
            assert tx_packets(client) == before
            net.tool("resource", "remove", "internet")
            wait_for(log, "Internet resource off", process, timeout=5)
            assert not client.ping(internet_host, count=1, wait=1)
            assert client.ping("192.168.77.2")
            assert client.stop() == 0
            assert "51820" not in ns.run("ip", "rule").stdout  # nothing left behind
        finally:
            if client.process is not None:
                client.stop()
