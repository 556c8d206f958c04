"""Attacks and mistakes the device must refuse: replays, stale initiations, floods, forged
sources; and the cookie path under load."""

from __future__ import annotations

import ipaddress

import pytest

from tunplug.wireguard import PeerConfig
from tunplug.wireguard.replay import ReplayWindow

from ._fakenet import FakeNet, ipv4_packet
from .test_handshake_and_transport import A_ADDR, B_ADDR, make_pair


def test_replayed_transport_packet_is_dropped_and_counted() -> None:
    net, a, b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2", b"once")])
    captured = net.in_flight[-1]
    net.flush()
    assert b.received[-1] == ipv4_packet("10.0.0.1", "10.0.0.2", b"once")
    count = len(b.received)
    net.deliver(captured)
    b.device.decrypt([(captured.data, captured.source)] * 3, net.now)
    assert len(b.received) == count
    assert b.device.drops["replay"] == 4


def test_out_of_order_within_window_accepted_beyond_window_dropped() -> None:
    net, a, b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    packets = [ipv4_packet("10.0.0.1", "10.0.0.2", i.to_bytes(2, "big")) for i in range(8200)]
    out = a.device.encrypt(packets, net.now)
    datagrams = [(d, A_ADDR) for d, _ in out.to_network]
    # counters 1..8200: deliver all but the first two, then the two stragglers
    result = b.device.decrypt(datagrams[2:], net.now)
    assert len(result.to_tun) == 8198
    late = b.device.decrypt(datagrams[:2], net.now)
    # counter 1 is 8199 behind the newest (beyond the 8128 window), counter 2 too
    assert late.to_tun == []
    assert b.device.drops["replay"] == 2
    # a straggler inside the window is still accepted, once
    out = a.device.encrypt(packets[:3], net.now)
    fresh = [(d, A_ADDR) for d, _ in out.to_network]
    assert len(b.device.decrypt([fresh[2], fresh[0], fresh[1]], net.now).to_tun) == 3


def test_replay_window_edges() -> None:
    window = ReplayWindow(size=8128, limit=2**64 - 2**13 - 1)
    assert window.check(0)
    assert not window.check(0)
    assert window.check(10_000)
    assert window.check(10_000 - 8128)  # exactly at the edge: accepted
    assert not window.check(10_000 - 8129)  # one beyond: refused
    assert window.check(9_999)
    assert not window.check(9_999)
    assert window.check(30_000)  # a jump clears the bitmap
    assert window.check(30_000 - 100)
    assert not window.check(2**64 - 2**13 - 1)  # REJECT_AFTER_MESSAGES itself is refused
    assert window.last == 30_000


def test_stale_initiation_replay_is_dropped() -> None:
    net, a, b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    initiation = net.in_flight[0]
    net.flush()
    net.advance(1)
    before = net.log[:]
    net.deliver(initiation)
    assert b.device.drops["stale-timestamp"] == 1
    assert net.log == before  # no response to a replayed initiation


def test_restarted_peer_with_older_clock_is_refused() -> None:
    net, a, b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    a2 = net.replace_node(a, wall_clock=lambda: net.wall_clock() - 3600)
    net.connect(a2, b)
    net.advance(5)
    net.send(a2, [ipv4_packet("10.0.0.1", "10.0.0.2", b"from the past")])
    net.flush()
    assert b.device.drops["stale-timestamp"] == 1
    assert b.received[-1] != ipv4_packet("10.0.0.1", "10.0.0.2", b"from the past")


def test_initiations_closer_than_twenty_ms_are_a_flood() -> None:
    net, a, b = make_pair()
    wall = [0.0]
    a2 = net.replace_node(a, wall_clock=lambda: net.wall_clock() + wall[0])
    net.connect(a2, b)
    net.send(a2, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    first = net.in_flight.pop()
    a3 = net.replace_node(a2, wall_clock=lambda: net.wall_clock() + 1)  # newer timestamp
    net.connect(a3, b)
    net.send(a3, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    second = net.in_flight.pop()
    net.deliver(first)
    net.now += 0.01
    net.deliver(second)
    assert b.device.drops["initiation-flood"] == 1


def test_packet_from_a_source_the_peer_may_not_use_is_dropped() -> None:
    net, a, b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    spoofed = ipv4_packet("10.0.0.99", "10.0.0.2", b"spoofed")  # routed by dst, so a sends it
    net.send(a, [spoofed])
    net.flush()
    assert spoofed not in b.received
    assert b.device.drops["not-allowed-source"] == 1


def test_inner_packet_with_bad_length_is_dropped() -> None:
    net, a, b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    bad = bytearray(ipv4_packet("10.0.0.1", "10.0.0.2", b"abc"))
    bad[2:4] = (500).to_bytes(2, "big")  # claims more bytes than it has
    net.send(a, [bytes(bad)])
    net.flush()
    assert b.device.drops["bad-inner-packet"] == 1


def test_cookie_reply_under_load_then_handshake_with_mac2() -> None:
    net = FakeNet()
    a = net.add_node("a", A_ADDR, "10.0.0.1", "fd00::1")
    b = net.add_node("b", B_ADDR, "10.0.0.2", "fd00::2", under_load_threshold=0)
    net.connect(a, b)
    packet = ipv4_packet("10.0.0.1", "10.0.0.2")
    net.send(a, [packet])
    net.flush()
    assert net.sent_types() == [1, 3]  # initiation answered with a cookie reply
    assert len(net.log[1].data) == 64
    assert net.log[1].data[4:8] == net.log[0].data[4:8]  # addressed to the sender index
    assert b.device.drops["cookie-reply-sent"] == 1
    assert net.log[0].data[132:] == bytes(16)
    net.advance(5.5)  # the retransmission carries mac2 and is accepted
    retry = [s for s in net.log if s.data[0] == 1][1]
    assert retry.data[132:] != bytes(16)
    assert b.received == [packet]
    assert b.device.drops["cookie-reply-sent"] == 1


def test_cookie_is_bound_to_the_source_address() -> None:
    net = FakeNet()
    a = net.add_node("a", A_ADDR, "10.0.0.1", "fd00::1")
    b = net.add_node("b", B_ADDR, "10.0.0.2", "fd00::2", under_load_threshold=0)
    net.connect(a, b)
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    net.advance(5.5, step=5.5)
    retry = [s for s in net.in_flight + net.log if s.data[0] == 1][-1]
    # the same message from another address has a mac2 for the wrong source
    b.device.decrypt([(retry.data, ("203.0.113.5", 9))], net.now)
    assert b.device.drops["cookie-reply-sent"] == 2


def test_forged_cookie_reply_is_ignored() -> None:
    net, a, _b = make_pair()
    net.filter = lambda sent: False
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    initiation = net.log[0].data
    forged = b"\x03\x00\x00\x00" + initiation[4:8] + bytes(24) + bytes(32)
    a.device.decrypt([(forged, B_ADDR)], net.now)
    assert a.device.drops["bad-cookie-reply"] == 1
    a.device.decrypt([(b"\x03\x00\x00\x00" + b"\xff" * 60, B_ADDR)], net.now)
    assert a.device.drops["unknown-receiver"] == 1


def test_handshakes_rate_limited_per_source_ip() -> None:
    net = FakeNet()
    server = net.add_node("server", B_ADDR, "10.0.0.2", "fd00::2")
    clients = []
    for i in range(8):
        client = net.add_node(f"c{i}", ("192.0.2.50", 40000 + i), f"10.0.1.{i}", f"fd01::{i}")
        net.connect(client, server)
        clients.append(client)
    for client in clients:
        net.send(client, [ipv4_packet(client.inner_v4, "10.0.0.2")])
    batch = [(s.data, s.source) for s in net.in_flight]
    net.in_flight.clear()
    out = server.device.decrypt(batch, net.now)
    assert [d[0] for d, _ in out.to_network] == [2] * 5  # burst of 5
    assert server.device.drops["rate-limited"] == 3
    # another source IP is not affected
    other = net.add_node("other", ("192.0.2.51", 1), "10.0.2.1", "fd02::1")
    net.connect(other, server)
    net.send(other, [ipv4_packet("10.0.2.1", "10.0.0.2")])
    net.flush()
    assert server.received == [ipv4_packet("10.0.2.1", "10.0.0.2")]


def test_garbage_never_raises_and_is_counted() -> None:
    net, _a, b = make_pair()
    junk = [
        b"",
        b"\x01",
        b"\x04\x00\x00\x00",
        b"\x05\x00\x00\x00" + bytes(60),
        b"\x01\x01\x00\x00" + bytes(144),
        b"\x01\x00\x00\x00" + bytes(144),
        b"\x02\x00\x00\x00" + bytes(88),
        b"\x04\x00\x00\x00" + bytes(40),
    ]
    out = b.device.decrypt([(j, A_ADDR) for j in junk], net.now)
    assert out.to_tun == [] and out.to_network == []
    assert sum(b.device.drops.values()) == len(junk)


def test_peer_config_validation() -> None:
    _, a, _ = make_pair()
    with pytest.raises(ValueError, match="own public key"):
        a.device.add_peer(PeerConfig(a.public_key))
    with pytest.raises(ValueError, match="32 bytes"):
        PeerConfig(b"short")
    with pytest.raises(ValueError, match="preshared"):
        PeerConfig(bytes(32), preshared_key=b"x")
    with pytest.raises(ValueError, match="keepalive"):
        PeerConfig(bytes(32), persistent_keepalive=70000)
    assert ipaddress.ip_network("10.0.0.2/32") in a.device.peer_stats()[0].allowed_ips


def test_allowed_source_is_checked_per_packet_in_a_mixed_batch():
    """One batch with allowed and forbidden inner sources: only the allowed ones pass."""
    from ipaddress import ip_network

    from tunplug.testing.packets import udp
    from tunplug.wireguard import PeerConfig, WireGuardDevice
    from tunplug_crypto_cryptography.backend import CryptographyBackend

    crypto = CryptographyBackend()
    key_a, key_b = crypto.generate_private_key(), crypto.generate_private_key()
    a, b = WireGuardDevice(key_a, crypto), WireGuardDevice(key_b, crypto)
    a.add_peer(
        PeerConfig(
            public_key=crypto.public_key(key_b),
            endpoint=("192.0.2.2", 1),
            allowed_ips=(ip_network("10.9.0.0/24"),),
        )
    )
    b.add_peer(
        PeerConfig(public_key=crypto.public_key(key_a), allowed_ips=(ip_network("10.9.0.1/32"),))
    )
    now = 10.0
    first = a.encrypt([udp("10.9.0.1", "10.9.0.2", 1, 2, b"hello")], now)
    reply = b.decrypt([(d, ("192.0.2.1", 1)) for d, _ in first.to_network], now)
    a.decrypt([(d, ("192.0.2.2", 1)) for d, _ in reply.to_network], now)
    good = [udp("10.9.0.1", "10.9.0.2", 1, 2, bytes([i])) for i in range(3)]
    bad = [udp("10.9.0.7", "10.9.0.2", 1, 2, bytes([i])) for i in range(3)]
    mixed = [good[0], bad[0], good[1], bad[1], bad[2], good[2]]
    before = b.drops["not-allowed-source"]
    out = a.encrypt(mixed, now)
    result = b.decrypt([(d, ("192.0.2.1", 1)) for d, _ in out.to_network], now)
    assert result.to_tun == good
    assert b.drops["not-allowed-source"] - before == 3


def test_encrypt_routes_any_buffer_type_and_never_routes_malformed_packets():
    from ipaddress import ip_network

    from tunplug.testing.packets import udp
    from tunplug.wireguard import PeerConfig, WireGuardDevice
    from tunplug_crypto_cryptography.backend import CryptographyBackend

    crypto = CryptographyBackend()
    device = WireGuardDevice(crypto.generate_private_key(), crypto)
    device.add_peer(
        PeerConfig(
            public_key=crypto.public_key(crypto.generate_private_key()),
            endpoint=("192.0.2.2", 1),
            allowed_ips=(ip_network("10.9.0.0/24"),),
        )
    )
    packet = udp("10.9.0.1", "10.9.0.2", 1, 2, b"x")
    # A truncated "IPv6" packet whose bytes 24..28 spell a routed IPv4 destination.
    short_v6 = bytes([0x60]) + bytes(23) + bytes([10, 9, 0, 2])
    before = device.drops["no-route"]
    out = device.encrypt([packet, bytearray(packet), memoryview(packet), short_v6], 1.0)
    assert device.drops["no-route"] - before == 1
    assert len(out.to_network) == 1  # the handshake initiation; the three are staged
