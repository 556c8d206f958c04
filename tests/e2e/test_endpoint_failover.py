"""A token's endpoints end to end: when the path to the gateway's first address is cut while a
client pings a resource, the pings come back through its second address within 15 s; and a
token whose endpoint name does not resolve at start keeps the client running until it does.

Topology and helpers are :mod:`tests.e2e.test_gateway`'s (gateway, resource network, one
namespace per client). The gateway gets a second address on the client's veth; the cut deletes
the first one (``promote_secondaries`` keeps the second and its route), so the gateway answers
from the second. Names resolve through the test-only ``TUNPLUG_TEST_HOSTS`` file: no DNS query
leaves the namespaces.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e import test_gateway as gw
from tunplug import token
from tunplug.testing.netns import NetNS

pytestmark = pytest.mark.root

# The gateway tests' fixture: a gateway namespace, a resource network behind it, an
# initialised state directory whose token endpoint is FIRST.
net = gw.net

FIRST = "10.201.0.2"  # the gateway's address on the first client's veth (veth-c0)
SECOND = "10.201.0.3"
PORT = 51820
#: The bound the issue sets for pings to come back after the cut (typically about 8 s).
FAILOVER_BOUND = 15.0
#: A name that resolves once the test says so (through TUNPLUG_TEST_HOSTS only).
NAME = "gw.tunplug-test.invalid"
# ``ping -D``: "[1733312345.123456] 64 bytes from 10.210.0.2: icmp_seq=7 ttl=63 time=0.4 ms"
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ")


def token_file(net: gw.Net, name: str, endpoints: list[str]) -> Path:
    """``client add NAME``, its token re-issued with ``endpoints``, in a mode-600 file."""
    issued = token.decode(net.tool("client", "add", name).stdout.strip())
    path = net.workdir / f"{name}.token"
    path.touch(mode=0o600)
    path.write_text(token.encode(issued.model_copy(update={"endpoints": endpoints})))
    return path


def start_client(net: gw.Net, ns: NetNS, name: str, path: Path, **extra: str) -> gw.Client:
    """The headless client with the token in ``path``; on the data path ``TUNPLUG_DATA_PATH``
    names, if set (gw.env drops every TUNPLUG_ variable)."""
    if "TUNPLUG_DATA_PATH" in os.environ:
        extra["TUNPLUG_DATA_PATH"] = os.environ["TUNPLUG_DATA_PATH"]
    log = net.workdir / f"{name}.log"
    with log.open("wb") as out:
        process = ns.popen(
            gw.CLIENT, "standalone", "--token-path", str(path), "--interface", "tpc0",
            "--state-dir", str(net.workdir / f"{name}-state"), "--dns-control", "disabled",
            stdout=out, stderr=subprocess.STDOUT, env=gw.env(**extra),
        )  # fmt: skip
    gw.wait_for(log, "tunnel is up on", process)
    if "TUNPLUG_DATA_PATH" in extra:
        assert f"{extra['TUNPLUG_DATA_PATH']} data path" in log.read_text()
    return gw.Client(ns, process, log)


def replies_after(path: Path, moment: float) -> list[float]:
    """Unix times of the ping replies in ``path`` (``ping -D``) later than ``moment``."""
    times = [float(m.group(1)) for m in map(REPLY.match, path.read_text().splitlines()) if m]
    return [at for at in times if at > moment]


def test_a_cut_path_to_the_first_endpoint_fails_over_to_the_second_within_15_s(net):
    ns = gw.add_client_ns(net)
    net.gateway.run("sysctl", "-qw", "net.ipv4.conf.veth-c0.promote_secondaries=1")
    net.gateway.run("ip", "addr", "add", f"{SECOND}/24", "dev", "veth-c0")
    net.start()
    path = token_file(net, "alice", [f"{FIRST}:{PORT}", f"{SECOND}:{PORT}"])
    client = start_client(net, ns, "alice", path)
    assert client.ping(gw.RESOURCE)
    pings = net.workdir / "pings.txt"
    with pings.open("w") as out:
        ns.popen("ping", "-D", "-i", "0.2", gw.RESOURCE, stdout=out, stderr=subprocess.STDOUT)
    time.sleep(2)
    assert replies_after(pings, 0), pings.read_text()
    net.gateway.run("ip", "addr", "del", f"{FIRST}/24", "dev", "veth-c0")
    cut = time.time()
    while not replies_after(pings, cut):
        assert time.time() - cut < FAILOVER_BOUND + 5, client.log.read_text()[-3000:]
        time.sleep(0.1)
    back = replies_after(pings, cut)[0] - cut
    log = client.log.read_text()
    print(f"\npings came back {back:.1f} s after the cut")
    assert back <= FAILOVER_BOUND, log[-3000:]
    assert f"endpoint {FIRST}:{PORT} stopped answering: trying {SECOND}:{PORT}" in log
    assert client.process is not None and client.process.poll() is None
    assert client.ping(gw.RESOURCE)


def test_an_endpoint_name_that_resolves_only_later_connects_once_it_does(net):
    ns = gw.add_client_ns(net)
    net.start()
    hosts = net.workdir / "hosts"  # missing at first: the name does not resolve
    path = token_file(net, "bob", [f"{NAME}:{PORT}"])
    client = start_client(net, ns, "bob", path, TUNPLUG_TEST_HOSTS=str(hosts))
    assert f"cannot resolve {NAME} (not in TUNPLUG_TEST_HOSTS file" in client.log.read_text()
    assert "retrying every 2 s" in client.log.read_text()
    assert not client.ping(gw.RESOURCE, count=2, wait=1)
    assert client.process is not None and client.process.poll() is None
    hosts.write_text(f"{FIRST} {NAME}\n")
    written = time.monotonic()
    while not client.ping(gw.RESOURCE, count=1, wait=1):
        assert time.monotonic() - written < 10, client.log.read_text()[-3000:]
    print(f"\nconnected {time.monotonic() - written:.1f} s after the name resolved")
    assert f"connecting to {FIRST}:{PORT} ({NAME}:{PORT})" in client.log.read_text()
