"""tunplug against real WireGuard peers (Debian's wireguard-go) and against itself.

Each test builds two fresh network namespaces joined by veth, runs one endpoint in each, and
sends traffic only between the namespaces' own addresses. Root only; in CI a skip fails.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import time

import pytest

from tunplug.testing.interop import UNDERLAY, Kind, Topology, WireguardGoEndpoint, topology

pytestmark = pytest.mark.root

PAIRS: list[tuple[Kind, Kind]] = [("tunplug", "wireguard-go"), ("tunplug", "tunplug")]
PAIR_IDS = ["vs-wireguard-go", "vs-tunplug"]


@pytest.fixture(autouse=True)
def _need_wireguard_go():
    if shutil.which("wireguard-go") is None or shutil.which("wg") is None:
        pytest.skip("needs wireguard-go and wireguard-tools (scripts/dev setup installs them)")


def received(result) -> int:
    match = re.search(r"(\d+) received", result.stdout)
    return int(match.group(1)) if match else 0


def assert_pings(topo: Topology, src: str, dst: str, count: int = 3) -> None:
    result = topo.ping(src, dst, count=count)  # type: ignore[arg-type]
    assert received(result) == count, f"ping {dst} from {src}:\n{result.stdout}\n{topo_logs(topo)}"


def topo_logs(topo: Topology) -> str:
    parts = []
    for endpoint in (topo.a, topo.b):
        log = getattr(endpoint, "log", None)
        if log:
            parts.append(f"--- {endpoint.kind} {endpoint.side} log ---\n{log()[-2000:]}")
    return "\n".join(parts)


@pytest.mark.parametrize(("kind_a", "kind_b"), PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("initiator", ["a", "b"], ids=["tunplug-initiates", "peer-initiates"])
@pytest.mark.parametrize("psk", [False, True], ids=["no-psk", "psk"])
def test_pings_cross_over_ipv4_and_ipv6(kind_a, kind_b, initiator, psk):
    with topology(kind_a, kind_b) as topo:
        topo.connect(initiator=initiator, preshared_key=psk)
        src = initiator
        dst = topo.b if initiator == "a" else topo.a
        assert_pings(topo, src, dst.tunnel_v4)
        assert_pings(topo, src, dst.tunnel_v6)
        other = "b" if initiator == "a" else "a"
        back = topo.a if initiator == "a" else topo.b
        assert_pings(topo, other, back.tunnel_v4)


@pytest.mark.parametrize(("kind_a", "kind_b"), PAIRS, ids=PAIR_IDS)
def test_iperf3_both_ways(kind_a, kind_b, record_property):
    with topology(kind_a, kind_b) as topo:
        topo.connect(initiator="a")
        assert_pings(topo, "a", topo.b.tunnel_v4, count=1)
        up = topo.iperf3(client="a", seconds=3)
        down = topo.iperf3(client="a", seconds=3, reverse=True)
    up_bps = up["end"]["sum_received"]["bits_per_second"]
    down_bps = down["end"]["sum_received"]["bits_per_second"]
    record_property("upload_mbps", round(up_bps / 1e6))
    record_property("download_mbps", round(down_bps / 1e6))
    print(
        f"\n{kind_a}<->{kind_b}: a->b {up_bps / 1e6:.0f} Mbit/s, b->a {down_bps / 1e6:.0f} Mbit/s"
    )
    assert up_bps > 1e6 and down_bps > 1e6


@pytest.mark.parametrize(("kind_a", "kind_b"), PAIRS, ids=PAIR_IDS)
def test_rekey_completes_during_traffic(kind_a, kind_b):
    # tunplug (side a) rekeys every 3 s; wireguard-go allows one initiation per 5 s.
    timers = {"TUNPLUG_TEST_TIMERS": "rekey_after_time=3"}
    with topology(kind_a, kind_b, tunplug_env=timers) as topo:
        topo.connect(initiator="a")
        assert_pings(topo, "a", topo.b.tunnel_v4, count=1)
        first = _handshake_marker(topo)
        result = topo.ping("a", topo.b.tunnel_v4, count=60, interval=0.2)
        lost = 60 - received(result)
        assert lost <= 2, f"{lost} of 60 pings lost across rekeys\n{topo_logs(topo)}"
        assert _handshake_marker(topo) != first, "no new handshake happened in 12 s"


def _handshake_marker(topo: Topology) -> object:
    for endpoint in (topo.b, topo.a):
        if isinstance(endpoint, WireguardGoEndpoint):
            return endpoint.latest_handshake()
    # tunplug <-> tunplug: count the handshakes tunplug logged
    return topo.a.log().count("handshake complete")  # type: ignore[attr-defined]


@pytest.mark.parametrize(("kind_a", "kind_b"), PAIRS, ids=PAIR_IDS)
def test_tunnel_recovers_when_the_peer_restarts(kind_a, kind_b):
    timers = {"TUNPLUG_TEST_TIMERS": "keepalive_timeout=1,rekey_timeout=1"}
    with topology(kind_a, kind_b, tunplug_env=timers) as topo:
        topo.connect(initiator="a")
        assert_pings(topo, "a", topo.b.tunnel_v4)
        topo.b.restart()  # a fresh process: no sessions, same keys
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if received(topo.ping("a", topo.b.tunnel_v4, count=1, wait=1)) == 1:
                break
        else:
            pytest.fail(f"tunnel did not recover within 20 s\n{topo_logs(topo)}")
        assert_pings(topo, "a", topo.b.tunnel_v4)


@pytest.mark.parametrize(("kind_a", "kind_b"), PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("mover", ["a", "b"], ids=["tunplug-moves", "peer-moves"])
def test_endpoint_roaming_is_followed(kind_a, kind_b, mover):
    with topology(kind_a, kind_b) as topo:
        topo.connect(initiator="a")
        assert_pings(topo, "a", topo.b.tunnel_v4)
        moving = topo.a if mover == "a" else topo.b
        staying = topo.b if mover == "a" else topo.a
        assert_pings(topo, mover, staying.tunnel_v4)
        if isinstance(moving, WireguardGoEndpoint):
            # Debian's wireguard-go (0.0.20220316) keeps its cached ("sticky") source address
            # and stops sending once that address is gone, so it roams by port instead.
            moving.set_listen_port(51999)
            new_endpoint = f"{UNDERLAY[mover][0]}:51999"
        else:
            new_address = "10.201.0.7" if mover == "a" else "10.201.0.8"
            topo.move(mover, new_address)
            new_endpoint = f"{new_address}:{moving.listen_port}"
        # The mover sends from its new endpoint; the other side updates its endpoint from that
        # authenticated packet, and the replies reach the new endpoint.
        assert_pings(topo, mover, staying.tunnel_v4)
        # ...and traffic the staying side starts goes there too.
        assert_pings(topo, "b" if mover == "a" else "a", moving.tunnel_v4)
        if isinstance(staying, WireguardGoEndpoint):
            assert staying.peer_endpoint() == new_endpoint


def test_the_tunnel_runs_on_the_data_path_it_was_given():
    """CI runs this suite twice: with the native core installed (auto: the native engine's
    threads carry the traffic) and with TUNPLUG_DATA_PATH=python. Each run must really use the
    path it claims, or the two passes would test one path twice."""
    chosen = os.environ.get("TUNPLUG_DATA_PATH", "auto")
    native = importlib.util.find_spec("tunplug_fastpath") is not None
    expected = "native" if chosen == "native" or (chosen == "auto" and native) else "python"
    with topology("tunplug", "tunplug") as topo:
        topo.connect(initiator="a")
        assert_pings(topo, "a", topo.b.tunnel_v4)
        for side in (topo.a, topo.b):
            log = side.log()  # type: ignore[attr-defined]
            assert f"up: {expected} data path" in log, log
            assert ("native data plane on" in log) == (expected == "native"), log


def test_deleting_the_interface_ends_the_client_with_a_clear_error():
    with topology("tunplug", "tunplug") as topo:
        topo.connect(initiator="a")
        assert_pings(topo, "a", topo.b.tunnel_v4)
        topo.a.ns.run("ip", "link", "del", topo.a.ifname)
        process = topo.a.process  # type: ignore[attr-defined]
        assert process.wait(10) == 1
        log = topo.a.log()  # type: ignore[attr-defined]
        assert "(was the interface deleted?)" in log, log


def test_several_queues_carry_several_flows_both_ways():
    """--tun-threads 2: on the native path one Rust thread per queue (the log says so); flows
    spread over the queues and every one arrives, in both directions."""
    with topology("tunplug", "tunplug", tunplug_args=("--tun-threads", "2")) as topo:
        topo.connect(initiator="a")
        assert_pings(topo, "a", topo.b.tunnel_v4)
        for reverse in (False, True):
            report = topo.iperf3(seconds=2, streams=4, reverse=reverse)
            assert report["end"]["sum_received"]["bytes"] > 10_000_000, topo_logs(topo)
        log = topo.a.log()  # type: ignore[attr-defined]
        assert "2 queue(s)" in log
        if "native data path" in log:
            assert "native data plane on" in log and "2 queue thread(s)" in log
