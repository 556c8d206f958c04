"""Two devices over the fake network: handshake, transport both ways, layouts, roaming, restart."""

from __future__ import annotations

import hashlib
import struct

import pytest

from tunplug.crypto import CryptoBackend
from tunplug.wireguard import PeerConfig, Timing
from tunplug.wireguard.constants import LABEL_MAC1
from tunplug_crypto_cryptography.backend import CryptographyBackend
from tunplug_crypto_sodium.backend import SodiumBackend

from ._fakenet import FakeNet, Node, ipv4_packet, ipv6_packet

A_ADDR = ("192.0.2.1", 51820)
B_ADDR = ("198.51.100.2", 51821)


def make_pair(
    crypto: CryptoBackend | None = None, psk: bytes | None = None, timing: Timing | None = None
) -> tuple[FakeNet, Node, Node]:
    net = FakeNet(crypto, timing)
    a = net.add_node("a", A_ADDR, "10.0.0.1", "fd00::1")
    b = net.add_node("b", B_ADDR, "10.0.0.2", "fd00::2")
    net.connect(a, b, psk=psk)
    return net, a, b


@pytest.mark.parametrize("crypto_cls", [CryptographyBackend, SodiumBackend])
@pytest.mark.parametrize("psk", [None, bytes(range(32))], ids=["no-psk", "psk"])
def test_handshake_then_transport_both_ways_v4_and_v6(
    crypto_cls: type[CryptoBackend], psk: bytes | None
) -> None:
    net, a, b = make_pair(crypto_cls(), psk)
    first = ipv4_packet("10.0.0.1", "10.0.0.2", b"first packet")
    net.send(a, [first])
    net.flush()
    assert b.received == [first]
    # initiation, response, then the staged packet (no extra keepalive: data confirms the key)
    assert net.sent_types() == [1, 2, 4]

    replies = [ipv4_packet("10.0.0.2", "10.0.0.1", b"reply"), ipv6_packet("fd00::2", "fd00::1")]
    net.send(b, replies)
    net.flush()
    assert a.received == replies
    v6 = ipv6_packet("fd00::1", "fd00::2", b"x" * 1000)
    net.send(a, [v6])
    net.flush()
    assert b.received == [first, v6]
    assert not a.device.drops and not b.device.drops
    [stats_a] = a.device.peer_stats()
    [stats_b] = b.device.peer_stats()
    assert stats_a.public_key == b.public_key and stats_a.endpoint == B_ADDR
    assert stats_b.endpoint == A_ADDR  # learned from the authenticated initiation
    assert stats_a.last_handshake == net.now and stats_b.last_handshake == net.now
    assert stats_a.tx_bytes == stats_b.rx_bytes > 0
    assert stats_b.tx_bytes == stats_a.rx_bytes > 0


def test_mismatched_preshared_keys_fail_the_handshake() -> None:
    net = FakeNet()
    a = net.add_node("a", A_ADDR, "10.0.0.1", "fd00::1")
    b = net.add_node("b", B_ADDR, "10.0.0.2", "fd00::2")
    net.connect(a, b, psk=bytes(32))
    # b's side gets a different PSK
    [config] = b.device.peer_stats()
    b.device.add_peer(
        PeerConfig(a.public_key, preshared_key=b"\x01" * 32, allowed_ips=config.allowed_ips)
    )
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    assert b.received == []
    assert a.device.drops["handshake-failed"] == 1


def test_message_layouts_on_the_wire() -> None:
    net, a, b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2", b"x" * 5)])  # 25-byte IP packet
    net.flush()
    initiation, response, transport = (s.data for s in net.log)
    assert len(initiation) == 148 and initiation[:4] == b"\x01\x00\x00\x00"
    mac1_key = hashlib.blake2s(LABEL_MAC1 + b.public_key).digest()
    assert (
        initiation[116:132]
        == hashlib.blake2s(initiation[:116], key=mac1_key, digest_size=16).digest()
    )
    assert initiation[132:] == bytes(16)  # no cookie: mac2 is zeros
    assert len(response) == 92 and response[:4] == b"\x02\x00\x00\x00"
    initiator_index = initiation[4:8]
    responder_index = response[4:8]
    assert response[8:12] == initiator_index
    response_mac1_key = hashlib.blake2s(LABEL_MAC1 + a.public_key).digest()
    assert (
        response[60:76]
        == hashlib.blake2s(response[:60], key=response_mac1_key, digest_size=16).digest()
    )
    # transport: type 4, receiver = responder's index, counter 0, 25 bytes padded to 32 + tag
    assert transport[:4] == b"\x04\x00\x00\x00"
    assert transport[4:8] == responder_index
    assert struct.unpack("<Q", transport[8:16]) == (0,)
    assert len(transport) == 16 + 32 + 16
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    assert struct.unpack("<Q", net.in_flight[-1].data[8:16]) == (1,)


@pytest.mark.parametrize(
    ("inner_size", "mtu", "expected_plaintext"),
    [(20, 1420, 32), (32, 1420, 32), (1419, 1420, 1420), (1420, 1420, 1420), (100, 100, 100)],
)
def test_padding_to_sixteen_not_beyond_mtu(
    inner_size: int, mtu: int, expected_plaintext: int
) -> None:
    net = FakeNet()
    a = net.add_node("a", A_ADDR, "10.0.0.1", "fd00::1", mtu=mtu)
    b = net.add_node("b", B_ADDR, "10.0.0.2", "fd00::2", mtu=mtu)
    net.connect(a, b)
    packet = ipv4_packet("10.0.0.1", "10.0.0.2", b"p" * (inner_size - 20))
    net.send(a, [packet])
    net.flush()
    assert len(net.log[-1].data) == 16 + expected_plaintext + 16
    assert b.received == [packet]  # padding removed using the IP length


def test_responder_waits_for_key_confirmation_before_sending() -> None:
    net, a, b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    initiation = net.in_flight.pop()
    net.deliver(initiation)
    response = net.in_flight.pop()
    assert response.data[0] == 2
    # b holds the new session in "next": nothing may be encrypted with it yet
    reply = ipv4_packet("10.0.0.2", "10.0.0.1", b"early reply")
    out = net.send(b, [reply])
    assert [d[0] for d, _ in out.to_network if d[0] == 4] == []
    net.deliver(response)  # a completes and sends its staged packet: key confirmation
    net.flush()
    assert reply in a.received
    assert b.received == [ipv4_packet("10.0.0.1", "10.0.0.2")]


def test_roaming_endpoint_follows_authenticated_packets() -> None:
    net, a, b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    # a moves to a new address: its packets now come from there
    new_address = ("203.0.113.7", 40000)
    del net.nodes[a.address]
    a.address = new_address
    net.nodes[new_address] = a
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2", b"from new place")])
    net.flush()
    assert b.device.peer_stats()[0].endpoint == new_address
    net.send(b, [ipv4_packet("10.0.0.2", "10.0.0.1", b"follow me")])
    assert net.in_flight[-1].destination == new_address
    net.flush()
    assert a.received[-1] == ipv4_packet("10.0.0.2", "10.0.0.1", b"follow me")


def test_unauthenticated_packet_does_not_move_the_endpoint() -> None:
    net, a, b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    forged = bytearray(net.in_flight.pop().data)
    forged[-1] ^= 1
    b.device.decrypt([(bytes(forged), ("203.0.113.66", 1))], net.now)
    assert b.device.drops["decrypt-failed"] == 1
    assert b.device.peer_stats()[0].endpoint == A_ADDR


def test_ipv6_endpoint_four_tuple_is_normalised() -> None:
    net, a, b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    initiation = net.in_flight.pop()
    out = b.device.decrypt([(initiation.data, ("2001:db8::1", 51820, 0, 0))], net.now)  # type: ignore[list-item]
    assert out.to_network[0][1] == ("2001:db8::1", 51820)
    assert b.device.peer_stats()[0].endpoint == ("2001:db8::1", 51820)


def test_peer_restart_recovers() -> None:
    net, a, b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    net.advance(2)
    b = net.replace_node(b)
    # a's peer entry is only refreshed (its stale session is kept)
    net.connect(a, b, b_knows_a_endpoint=True)
    # a still uses the old session: the new b knows nothing of it
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2", b"lost")])
    net.flush()
    assert b.device.drops["unknown-receiver"] == 1
    # the restarted side sends: it has no session, so it handshakes; a accepts (newer TAI64N)
    net.send(b, [ipv4_packet("10.0.0.2", "10.0.0.1", b"i am back")])
    net.flush()
    assert a.received[-1] == ipv4_packet("10.0.0.2", "10.0.0.1", b"i am back")
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2", b"welcome")])
    net.flush()
    assert b.received[-1] == ipv4_packet("10.0.0.1", "10.0.0.2", b"welcome")


def test_restarted_server_without_client_endpoint_recovers_by_client_rehandshake() -> None:
    net, a, b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    b = net.replace_node(b)
    net.connect(a, b)  # the new b does not know where a is
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2", b"lost")])
    net.flush()
    assert b.received == []
    net.advance(15.5)  # a heard nothing back for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2", b"again")])
    net.flush()
    assert b.received == [ipv4_packet("10.0.0.1", "10.0.0.2", b"again")]


def test_unanswered_data_triggers_a_new_handshake_after_fifteen_seconds() -> None:
    net, a, _b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    # b vanishes: a keeps sending, hears nothing back
    net.filter = lambda sent: B_ADDR not in (sent.source, sent.destination)
    start = net.now
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2", b"anyone?")])
    net.advance(14.9)
    assert 1 not in net.sent_types(a)[1:]
    net.advance(0.6)
    initiations = [s for s in net.log[3:] if s.data[0] == 1]
    assert len(initiations) == 1
    assert start + 15 <= net.now


def test_keepalive_is_not_forwarded_and_passive_keepalive_answers_data() -> None:
    net, a, _b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    count = len(net.log)
    net.advance(9.9)
    assert len(net.log) == count
    net.advance(0.3)  # KEEPALIVE_TIMEOUT after b received data, b answers with a keepalive
    [keepalive] = net.log[count:]
    assert keepalive.source == B_ADDR and len(keepalive.data) == 32
    assert a.received == []  # keepalives never reach the TUN device
    assert not a.device.drops
    net.advance(30)
    assert len(net.log) == count + 1  # idle tunnel: no more keepalives


def test_persistent_keepalive_brings_the_tunnel_up_and_keeps_it_warm() -> None:
    net = FakeNet()
    a = net.add_node("a", A_ADDR, "10.0.0.1", "fd00::1")
    b = net.add_node("b", B_ADDR, "10.0.0.2", "fd00::2")
    net.connect(a, b, a_keepalive=25)
    assert a.device.next_deadline() is not None
    net.advance(0.1)
    assert net.sent_types()[:3] == [1, 2, 4]  # handshake right away, then a keepalive
    before = len([t for t in net.sent_types(a) if t == 4])
    net.advance(101)
    after = len([t for t in net.sent_types(a) if t == 4])
    assert after - before == 4  # every 25 s of silence


def test_no_route_and_no_endpoint_are_counted() -> None:
    net = FakeNet()
    a = net.add_node("a", A_ADDR, "10.0.0.1", "fd00::1")
    b = net.add_node("b", B_ADDR, "10.0.0.2", "fd00::2")
    net.connect(a, b, a_knows_b_endpoint=False)
    out = a.device.encrypt([ipv4_packet("10.0.0.1", "10.9.9.9"), b"\x45"], net.now)
    assert out.to_network == []
    assert a.device.drops["no-route"] == 2
    a.device.encrypt([ipv4_packet("10.0.0.1", "10.0.0.2")], net.now)
    assert a.device.drops["no-endpoint"] == 1


def test_staged_packets_are_bounded_and_oldest_dropped() -> None:
    net, a, b = make_pair()
    net.filter = lambda sent: False  # lose the first initiation
    packets = [ipv4_packet("10.0.0.1", "10.0.0.2", i.to_bytes(2, "big")) for i in range(200)]
    net.send(a, packets)
    assert a.device.drops["staged-overflow"] == 72
    net.filter = lambda sent: True
    net.advance(6)  # retransmission gets through
    assert b.received == packets[72:]


def test_remove_peer_forgets_routes_and_sessions() -> None:
    net, a, b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    b.device.remove_peer(a.public_key)
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    assert b.device.drops["unknown-receiver"] == 1
    assert b.device.encrypt([ipv4_packet("10.0.0.2", "10.0.0.1")], net.now).to_network == []
    assert b.device.drops["no-route"] == 1
    assert b.device.peer_stats() == []


def test_a_reused_send_buffer_gives_the_same_messages_valid_until_the_next_encrypt() -> None:
    net = FakeNet()
    a = net.add_node("a", A_ADDR, "10.0.0.1", "fd00::1", reuse_send_buffer=True)
    b = net.add_node("b", B_ADDR, "10.0.0.2", "fd00::2")
    net.connect(a, b)
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2", b"hello")])
    net.flush()  # handshake done; that first packet was staged, so it had its own bytes
    first = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([i]) * (100 + i)) for i in range(5)]
    views = [data for data, _ in a.device.encrypt(first, net.now).to_network]
    assert all(isinstance(view, memoryview) for view in views)
    copies = [bytes(view) for view in views]
    second = [ipv4_packet("10.0.0.1", "10.0.0.2", b"z" * 300)]
    later = a.device.encrypt(second, net.now).to_network
    assert [bytes(view) for view in views] != copies  # overwritten: the documented contract
    assert b.device.decrypt([(data, A_ADDR) for data in copies], net.now).to_tun == first
    opened = b.device.decrypt([(bytes(data), A_ADDR) for data, _ in later], net.now)
    assert opened.to_tun == second
    [stats_a] = a.device.peer_stats()
    [stats_b] = b.device.peer_stats()
    assert stats_a.tx_bytes == stats_b.rx_bytes  # byte counts as without the buffer
    assert not b.device.drops
