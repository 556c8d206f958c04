"""``WireGuardDevice.retarget``: a handshake at the next tick, even with a working session and
within REKEY_TIMEOUT of the last one, at a new endpoint when given; the engine and a native
data plane learn of it (next_deadline, take_changes)."""

from __future__ import annotations

import pytest

from ._fakenet import FakeNet, Node, ipv4_packet
from .test_handshake_and_transport import B_ADDR, make_pair

#: The gateway's second address (its device answers there too).
B2_ADDR = ("198.51.100.3", 51821)


def _second_address(net: FakeNet, b: Node) -> Node:
    alias = Node("b2", b.device, B2_ADDR, b.inner_v4, b.inner_v6, b.private_key, b.received)
    net.nodes[B2_ADDR] = alias
    return alias


def _connected() -> tuple[FakeNet, Node, Node]:
    net, a, b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2", b"hello")])
    net.flush()
    assert b.received and a.device.peer_stats()[0].last_handshake is not None
    a.device.take_changes()
    return net, a, b


def test_retarget_moves_the_peer_and_handshakes_there_at_once():
    net, a, b = _connected()
    b2 = _second_address(net, b)
    net.filter = lambda sent: B_ADDR not in (sent.source, sent.destination)  # first path cut
    first_handshake = a.device.peer_stats()[0].last_handshake
    net.advance(1.0)  # well within REKEY_TIMEOUT of the first handshake
    a.device.retarget(b.public_key, B2_ADDR)
    deadline = a.device.next_deadline()
    assert deadline is not None and deadline <= net.now  # the engine's timer looks again now
    changed, _ = a.device.take_changes()
    assert [peer.endpoint for peer in changed] == [B2_ADDR]  # a native plane sends there too
    net.tick_all()
    initiations = [s for s in net.log if s.data[0] == 1 and s.at == net.now]
    assert [s.destination for s in initiations] == [B2_ADDR]
    net.flush()
    stats = a.device.peer_stats()[0]
    assert stats.endpoint == B2_ADDR and stats.last_handshake != first_handshake
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2", b"again")])
    net.flush()
    assert b.received[-1] == ipv4_packet("10.0.0.1", "10.0.0.2", b"again")
    net.send(b2, [ipv4_packet("10.0.0.2", "10.0.0.1", b"back")])  # b at its second address
    net.flush()
    assert a.received[-1] == ipv4_packet("10.0.0.2", "10.0.0.1", b"back")


def test_retarget_without_endpoint_is_a_handshake_on_the_current_one():
    net, a, b = _connected()
    net.advance(1.0)
    before = net.sent_types(a).count(1)
    a.device.retarget(b.public_key)
    net.advance(0.1)
    assert net.sent_types(a).count(1) == before + 1
    assert a.device.peer_stats()[0].endpoint == B_ADDR
    assert a.device.peer_stats()[0].last_handshake == pytest.approx(net.now, abs=0.2)


def test_retarget_gives_a_peer_without_endpoint_one():
    net, a, b = make_pair()
    a.device.remove_peer(b.public_key)
    net.connect(a, b, a_knows_b_endpoint=False)
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2", b"lost")])
    assert a.device.drops["no-endpoint"] >= 1
    a.device.retarget(b.public_key, B_ADDR)
    net.advance(0.1)
    assert a.device.peer_stats()[0].last_handshake is not None
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2", b"found")])
    net.flush()
    assert b.received[-1] == ipv4_packet("10.0.0.1", "10.0.0.2", b"found")


def test_retarget_ignores_an_unknown_key():
    _, a, _ = make_pair()
    a.device.take_changes()
    a.device.retarget(bytes(32), B2_ADDR)
    assert a.device.take_changes() == ([], [])
    assert all(peer.endpoint != B2_ADDR for peer in a.device.peer_stats())
