"""Handshake floods: the rate limiter refuses first and counts refusals per source, the flood
guard turns them into the set of sources to block in the kernel, and the device reports it."""

from __future__ import annotations

import pytest

from tunplug.wireguard.constants import HANDSHAKE_BURST
from tunplug.wireguard.cookie import RateLimiter
from tunplug.wireguard.flood import FloodFilter, FloodGuard

from ._fakenet import FakeNet, ipv4_packet
from .test_handshake_and_transport import B_ADDR, make_pair

V4 = bytes([192, 0, 2, 9])
V6_64 = bytes.fromhex("20010db8000a000b")
FLOODER = ("203.0.113.7", 4444)


def blocked(update: FloodFilter | None) -> frozenset[bytes] | None:
    return None if update is None else update.blocked


def test_rate_limiter_counts_refusals_per_source_and_hands_them_over_once() -> None:
    limiter = RateLimiter()
    for _ in range(HANDSHAKE_BURST + 7):
        limiter.allow("192.0.2.9", 0.0)
    assert limiter.allow("192.0.2.10", 0.0)
    assert limiter.take_refusals() == {"192.0.2.9": 7}
    assert limiter.take_refusals() == {}


def test_rate_limiter_groups_ipv6_by_64_and_maps_ipv4_in_ipv6() -> None:
    limiter = RateLimiter(burst=1)
    assert limiter.allow("2001:db8:a:b::1", 0.0)
    assert not limiter.allow("2001:db8:a:b::2", 0.0)  # same /64
    assert limiter.allow("2001:db8:a:c::1", 0.0)
    assert limiter.allow("::ffff:192.0.2.9", 0.0)
    assert not limiter.allow("::ffff:192.0.2.9", 0.0)
    refusals = limiter.take_refusals()
    assert refusals == {V6_64: 1, V4: 1}


def test_rate_limiter_is_bounded_and_refuses_new_sources_when_full() -> None:
    limiter = RateLimiter(max_entries=3)
    for host in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        assert limiter.allow(host, 0.0)
    assert not limiter.allow("10.0.0.4", 0.0)
    assert len(limiter) == 3
    limiter.collect(10.0)  # every bucket is full again: all forgotten
    assert len(limiter) == 0
    assert limiter.allow("10.0.0.4", 10.0)


def test_a_source_over_the_threshold_is_blocked_and_one_under_it_is_not() -> None:
    guard = FloodGuard(threshold=100, hold=5.0, sample_one_in=256)
    assert blocked(guard.update({"192.0.2.9": 99, "192.0.2.10": 100}, 0, 1.0)) == frozenset(
        {bytes([192, 0, 2, 10])}
    )
    assert guard.update({}, 0, 2.0) is None  # unchanged: nothing to do


def test_a_block_is_renewed_while_the_sampled_flood_goes_on_and_lifted_after_it_stops() -> None:
    guard = FloodGuard(threshold=100, hold=5.0, sample_one_in=256)
    assert blocked(guard.update({V4: 5000}, 0, 1.0)) == {V4}
    # Blocked: one in 256 arrives; 1 refusal a second stands for 256/s, still a flood.
    for second in range(2, 10):
        assert guard.update({V4: 1}, 0, float(second)) is None
    # The flood stops: the block ends 5 s after it was last renewed (at 9 s).
    assert guard.update({}, 0, 13.0) is None
    assert blocked(guard.update({}, 0, 14.0)) == frozenset()


def test_only_the_heaviest_sources_are_blocked_beyond_the_maximum() -> None:
    guard = FloodGuard(threshold=10, max_blocked=2)
    sources = {f"192.0.2.{i}": 100 * i for i in range(1, 6)}
    assert blocked(guard.update(sources, 0, 1.0)) == {bytes([192, 0, 2, 5]), bytes([192, 0, 2, 4])}


def test_ipv6_prefixes_are_blocked_and_names_ignored() -> None:
    guard = FloodGuard(threshold=10)
    refusals = {V6_64: 50, "not-an-address": 500, b"\x01\x02": 500}
    assert blocked(guard.update(refusals, 0, 1.0)) == {V6_64}


def test_rates_are_per_second_of_the_interval_since_the_last_update() -> None:
    guard = FloodGuard(threshold=100)
    assert guard.update({}, 0, 0.0) is None
    # 150 refusals over 3 s is 50/s: not a flood.
    assert guard.update({V4: 150}, 0, 3.0) is None
    assert blocked(guard.update({V4: 150}, 0, 4.0)) == {V4}


def test_the_device_refuses_a_one_source_flood_before_mac1_and_reports_it() -> None:
    net, a, b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    initiation = next(sent.data for sent in net.log if sent.data[0] == 1)
    net.flush()
    junk = b"\x01\x00\x00\x00" + bytes(144)  # no valid mac1
    flood = [(initiation, FLOODER)] * 200 + [(junk, FLOODER)] * 300
    b.device.decrypt(flood, net.now)
    # The burst's first few pass the limiter; everything after is refused for a lookup, bad
    # mac1 or not.
    assert b.device.drops["rate-limited"] == 500 - HANDSHAKE_BURST
    assert b.device.drops["bad-mac1"] == 0
    assert blocked(b.device.handshake_floods(net.now + 1.0)) == {bytes([203, 0, 113, 7])}
    assert b.device.handshake_floods(net.now + 2.0) is None


@pytest.mark.parametrize("source", [("192.0.2.77", 5), ("2001:db8:1:2::5", 5)])
def test_a_legitimate_peer_is_not_reported(source: tuple[str, int]) -> None:
    net = FakeNet()
    server = net.add_node("server", B_ADDR, "10.0.0.2", "fd00::2")
    client = net.add_node("client", source, "10.0.1.1", "fd01::1")
    net.connect(client, server)
    net.send(client, [ipv4_packet("10.0.1.1", "10.0.0.2")])
    net.flush()
    assert server.received == [ipv4_packet("10.0.1.1", "10.0.0.2")]
    assert server.device.handshake_floods(net.now + 1.0) is None


def test_a_flood_spread_over_many_sources_is_sampled_for_everyone_then_lifted() -> None:
    guard = FloodGuard(spread_threshold=4000, spread_admitted=1000, hold=5.0)
    assert guard.update({}, 3000, 1.0) is None  # 3000/s: not yet
    update = guard.update({}, 20_000, 2.0)
    assert update is not None and update.others_one_in == 32  # 20/s per admitted -> 2**5
    assert update.blocked == frozenset()
    # Sampled one in 32: 700 arriving stand for 22,400/s, still a flood; a noisy estimate
    # within a factor of two of the sample in force changes nothing (1,400 -> 44,800/s: 64).
    assert guard.update({}, 700, 3.0) is None
    assert guard.update({}, 1400, 4.0) is None
    update = guard.update({}, 3000, 5.0)  # 96,000/s: one in 128
    assert update is not None and update.others_one_in == 128
    assert guard.update({}, 10, 6.0) is None
    # Over: the sample goes 5 s after the flood was last seen (at 5 s).
    assert guard.update({}, 0, 9.5) is None
    update = guard.update({}, 0, 10.0)
    assert update is not None and update.others_one_in == 1 and not update.active


def test_the_device_counts_every_handshake_message_for_the_spread_estimate() -> None:
    net, a, b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    initiation = next(sent.data for sent in net.log if sent.data[0] == 1)
    net.flush()
    sources = [(initiation, (f"203.0.{i // 250}.{i % 250}", 1000)) for i in range(5000)]
    b.device.decrypt(sources, net.now)
    update = b.device.handshake_floods(net.now + 1.0)
    assert update is not None and update.others_one_in == 8  # 5000/s over 1000 -> 2**3
    assert update.blocked == frozenset()  # no source over its own rate


def test_a_blocked_sources_messages_do_not_count_as_a_spread_flood() -> None:
    guard = FloodGuard(threshold=100, sample_one_in=256, spread_threshold=4000)
    # One source, 100k in a second: blocked, and its messages explain everything that came.
    update = guard.update({V4: 99_980}, 100_000, 1.0)
    assert update is not None and update.blocked == {V4} and update.others_one_in == 1
    # Blocked: 390 of its sampled messages arrive (370 refused), and 30 from others.
    assert guard.update({V4: 370}, 420, 2.0) is None


def test_the_flood_check_forgets_idle_sources_even_when_no_timer_runs() -> None:
    net, _, b = make_pair()
    junk = b"\x01\x00\x00\x00" + bytes(144)
    b.device.decrypt([(junk, (f"203.0.113.{i}", 1)) for i in range(50)], net.now)
    assert b.device.handshake_sources == 50
    b.device.handshake_floods(net.now + 0.1)
    assert b.device.handshake_sources == 50  # not idle long enough yet
    b.device.handshake_floods(net.now + 1.1)
    assert b.device.handshake_sources == 0
