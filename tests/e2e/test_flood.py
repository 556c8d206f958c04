"""A handshake flood against a tunplug endpoint (issue 14): one process resends an initiation
with a valid mac1 from one source address as fast as it can, while the tunnel carries traffic.

The flooding source is found and its handshakes are dropped in the kernel, the tunnel keeps
carrying data (pings answered, TCP moving), and a peer that must handshake anew during the
flood gets through (by the cookie path: the endpoint is under load). Throughput under a flood
is measured by ``benchmarks/flood.py``, not here. Runs on the data path tunplug picks (native
when installed); the test command runs ``tests/e2e`` again with ``TUNPLUG_DATA_PATH=python``.
"""

from __future__ import annotations

import re
import time

import pytest

from tunplug.testing.flood import (
    add_sources,
    flood_result,
    many_sources,
    start_flood,
    valid_initiation,
)
from tunplug.testing.interop import UNDERLAY, TunplugEndpoint, topology
from tunplug.wireguard.keys import parse_key

pytestmark = pytest.mark.root

FLOODER = "10.201.0.3"
FLOOD_SECONDS = 25.0


def wait_for_log(endpoint: TunplugEndpoint, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in endpoint.log():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} in {timeout} s:\n{endpoint.log()[-3000:]}")
        time.sleep(0.1)


def received(output: str) -> int:
    match = re.search(r"(\d+) received", output)
    return int(match.group(1)) if match else 0


def test_a_one_source_handshake_flood_is_blocked_and_the_tunnel_keeps_working():
    with topology("tunplug", "tunplug") as topo:
        a, b = topo.a, topo.b
        assert isinstance(a, TunplugEndpoint) and isinstance(b, TunplugEndpoint)
        topo.connect(initiator="a")
        assert received(topo.ping("a", b.tunnel_v4, count=1).stdout) == 1
        a.ns.run("ip", "addr", "add", f"{FLOODER}/24", "dev", "veth-a")
        message = valid_initiation(parse_key(b.keys.public))
        flood = start_flood(
            a.ns, (UNDERLAY["b"][0], b.listen_port), message,
            seconds=FLOOD_SECONDS, sources=[FLOODER],
        )  # fmt: skip
        try:
            wait_for_log(b, f"handshake flood from {FLOODER}", timeout=8.0)
            # Data keeps flowing during the flood, both ways.
            pings = topo.ping("a", b.tunnel_v4, count=20, interval=0.1)
            assert received(pings.stdout) >= 18, pings.stdout
            report = topo.iperf3(client="a", seconds=2)
            assert report["end"]["sum_received"]["bytes"] > 0
            # A fresh handshake during the flood (a new process on side a, new sessions):
            # b is under load, so it answers with a cookie first and a's retry carries mac2.
            a.restart()
            deadline = time.monotonic() + 20
            while received(topo.ping("a", b.tunnel_v4, count=1, wait=1.0).stdout) != 1:
                assert time.monotonic() < deadline, f"no handshake during the flood:\n{a.log()}"
            result = flood_result(flood, timeout=FLOOD_SECONDS + 30)
        finally:
            if flood.poll() is None:
                flood.kill()
                flood.wait()
        # The flood was real (tens of thousands a second), and once it stops the block goes.
        assert result["sent"] / result["seconds"] > 10_000, result
        wait_for_log(b, f"handshake flood from {FLOODER} is over: unblocked", timeout=10.0)
        b.stop()
        drops = re.search(r"dropped: (.*)", b.log())
        assert drops is not None and "rate-limited" in drops.group(1), b.log()[-2000:]
        assert "cookie-reply-sent" in drops.group(1), b.log()[-2000:]


def test_a_flood_from_a_thousand_sources_is_sampled_and_the_tunnel_keeps_working():
    """Spread over 1,000 addresses, no source goes far over its own rate: the endpoint lets
    only a sample of everyone's handshakes through the kernel, and data keeps flowing."""
    with topology("tunplug", "tunplug") as topo:
        a, b = topo.a, topo.b
        assert isinstance(a, TunplugEndpoint) and isinstance(b, TunplugEndpoint)
        topo.connect(initiator="a")
        assert received(topo.ping("a", b.tunnel_v4, count=1).stdout) == 1
        sources = many_sources(1000)
        add_sources(a.ns, "veth-a", sources, b.ns, "veth-b")
        message = valid_initiation(parse_key(b.keys.public))
        flood = start_flood(
            a.ns, (UNDERLAY["b"][0], b.listen_port), message, seconds=15.0, sources=sources
        )
        try:
            wait_for_log(b, "handshake flood from many sources: only one in", timeout=8.0)
            pings = topo.ping("a", b.tunnel_v4, count=20, interval=0.1)
            assert received(pings.stdout) >= 18, pings.stdout
            report = topo.iperf3(client="a", seconds=2)
            assert report["end"]["sum_received"]["bytes"] > 0
            result = flood_result(flood, timeout=45)
        finally:
            if flood.poll() is None:
                flood.kill()
                flood.wait()
        assert result["sent"] / result["seconds"] > 10_000, result
        wait_for_log(b, "handshake flood from many sources is over", timeout=10.0)
