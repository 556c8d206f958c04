"""Timer-driven behaviour with a fake clock: rekeying, retransmission, giving up, key expiry."""

from __future__ import annotations

import itertools

import pytest

from tunplug.wireguard import Timing
from tunplug.wireguard.timers import PeerTimers

from ._fakenet import FakeNet, Node, ipv4_packet
from .test_handshake_and_transport import A_ADDR, B_ADDR, make_pair


def transport_receiver_indices(net: FakeNet, source: Node) -> list[bytes]:
    return [s.data[4:8] for s in net.log if s.source == source.address and s.data[0] == 4]


def test_rekey_after_time_during_traffic_loses_nothing() -> None:
    net, a, b = make_pair(timing=Timing(rekey_after_time=3))
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2", b"hello")])
    net.flush()  # b learns a's endpoint from the handshake
    sent: list[bytes] = [ipv4_packet("10.0.0.1", "10.0.0.2", b"hello")]
    for i in range(64):  # 16 s of traffic both ways, a packet every 0.25 s
        forward = ipv4_packet("10.0.0.1", "10.0.0.2", i.to_bytes(2, "big"))
        back = ipv4_packet("10.0.0.2", "10.0.0.1", i.to_bytes(2, "big"))
        net.send(a, [forward])
        net.send(b, [back])
        sent.append(forward)
        net.advance(0.25, step=0.05)
    assert b.received == sent
    assert len(a.received) == 64
    initiations = [s for s in net.log if s.data[0] == 1]
    # one at start, then rekeys: due every 3 s, but at most one initiation per REKEY_TIMEOUT
    assert len(initiations) >= 4
    assert all(s.source == A_ADDR for s in initiations)  # only the initiator rekeys on time
    assert len(set(transport_receiver_indices(net, a))) >= 3  # distinct sessions were used
    assert not a.device.drops and not b.device.drops


def test_rekey_after_messages() -> None:
    net, a, b = make_pair(timing=Timing(rekey_after_messages=5))
    for i in range(12):
        net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([i]))])
        net.flush()
        net.advance(0.5)
    assert len(b.received) == 12
    # the first handshake; a rekey once the counter passed 5 (and REKEY_TIMEOUT allowed it)
    assert net.sent_types(a).count(1) == 2


def test_reject_after_messages_stops_using_a_session() -> None:
    net, a, b = make_pair(timing=Timing(rekey_after_messages=2**60, reject_after_messages=4))
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([i])) for i in range(6)])
    net.flush()
    # counters 0..3 on the first session; the rest waits for a new one
    assert len(b.received) == 4
    net.advance(5.5)  # initiations are at most one per REKEY_TIMEOUT
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2", b"next")])
    net.flush()
    assert len(b.received) == 7
    assert len({s.data[4:8] for s in net.log if s.data[0] == 4 and s.source == A_ADDR}) == 2


def test_handshake_retransmitted_when_initiation_is_lost() -> None:
    net, a, b = make_pair()
    lost: list[int] = []

    def lose_first_initiation(sent: object) -> bool:
        if not lost and getattr(sent, "data", b"")[0] == 1:
            lost.append(1)
            return False
        return True

    net.filter = lose_first_initiation
    start = net.now
    packet = ipv4_packet("10.0.0.1", "10.0.0.2")
    net.send(a, [packet])
    net.advance(4.9)
    assert b.received == []
    net.advance(0.5)  # REKEY_TIMEOUT + jitter (< 334 ms)
    assert b.received == [packet]
    second = [s for s in net.log if s.data[0] == 1][1]
    assert second.data[4:8] != net.log[0].data[4:8]  # a fresh initiation, new sender index
    assert net.now - start <= 5.4


def test_handshake_retransmitted_when_response_is_lost() -> None:
    net, a, b = make_pair()
    dropped: list[int] = []

    def lose_first_response(sent: object) -> bool:
        if not dropped and getattr(sent, "data", b"")[0] == 2:
            dropped.append(1)
            return False
        return True

    net.filter = lose_first_response
    packet = ipv4_packet("10.0.0.1", "10.0.0.2")
    net.send(a, [packet])
    net.advance(5.4)
    assert b.received == [packet]
    assert net.sent_types(a).count(1) == 2


def test_retransmission_gives_up_after_rekey_attempt_time() -> None:
    net, a, _ = make_pair()
    net.filter = lambda sent: False  # b is unreachable
    start = net.now
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.advance(200, step=0.5)
    initiations = [s for s in net.log if s.data[0] == 1]
    # the first one plus MAX_TIMER_HANDSHAKES + 1 retries, as wireguard-go
    assert len(initiations) == 20
    # every REKEY_TIMEOUT + jitter: the last one about 95-101 s after the first
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(initiations)]
    assert all(5.0 <= gap <= 5.0 + 0.334 + 0.5 for gap in gaps)
    assert 95 <= initiations[-1].at - start <= 19 * 5.834
    assert a.device.next_deadline() is not None  # only key erasure remains
    # after giving up, nothing is sent until new traffic asks for a handshake
    count = len(net.log)
    net.advance(50, step=1)
    assert len(net.log) == count
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    assert net.log[-1].data[0] == 1


def test_session_expires_after_reject_after_time() -> None:
    net, a, b = make_pair(timing=Timing(rekey_after_time=100, reject_after_time=8))
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2", b"late")])
    late = net.in_flight.pop()
    net.advance(8.5, step=0.5)
    # the receiver refuses a packet of a session older than REJECT_AFTER_TIME
    net.deliver(late)
    assert b.device.drops["expired-session"] == 1
    # and the sender starts a handshake rather than use it
    out = a.device.encrypt([ipv4_packet("10.0.0.1", "10.0.0.2")], net.now)
    assert [d[0] for d, _ in out.to_network] == [1]


def test_keys_are_zeroed_after_three_times_reject_after_time() -> None:
    # reject_after_time 26 s: b's passive keepalive at 10 s still uses the session, and is
    # younger than the last-minute rekey age (26 - 10 - 5 = 11 s)
    net, a, b = make_pair(timing=Timing(rekey_after_time=100, reject_after_time=26))
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2", b"old")])
    old = net.in_flight.pop()
    net.advance(77.5, step=0.5)
    assert b.device.next_deadline() == pytest.approx(1078)
    net.advance(0.5)
    assert a.device.next_deadline() is None  # nothing left to time
    assert b.device.next_deadline() is None
    net.deliver(old)
    assert b.device.drops["unknown-receiver"] == 1  # the session is gone, not just expired


def test_initiator_rekeys_on_receive_when_key_is_old() -> None:
    timing = Timing(rekey_after_time=1000, reject_after_time=30)  # last-minute age 15 s
    net, a, b = make_pair(timing=timing)
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    net.advance(14, step=1)
    out = net.send(b, [ipv4_packet("10.0.0.2", "10.0.0.1")])
    assert out.to_network[0][0][0] == 4
    received = net.deliver(net.in_flight.pop())
    assert received is not None and received.to_network == []
    net.advance(1.5, step=0.5)
    net.send(b, [ipv4_packet("10.0.0.2", "10.0.0.1")])
    received = net.deliver(net.in_flight.pop())
    assert received is not None
    assert [d[0] for d, _ in received.to_network] == [1]  # the initiator rekeys
    assert a.received[-1] == ipv4_packet("10.0.0.2", "10.0.0.1")


@pytest.mark.parametrize("step", [0.5, 1.7])
def test_next_deadline_is_honest(step: float) -> None:
    """Ticking only at next_deadline() gives the same traffic as ticking often."""
    net, a, b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    deadline = b.device.next_deadline()
    assert deadline is not None
    out = b.device.tick(deadline - 0.001)
    assert out.to_network == []
    out = b.device.tick(deadline)
    assert [len(d) for d, _ in out.to_network] == [32]  # the passive keepalive
    assert B_ADDR != A_ADDR and step > 0


def test_next_deadline_looks_at_the_peers_again_only_after_a_call_that_may_change_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net, a, b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    calls = []
    original = PeerTimers.next_deadline

    def counted(self: PeerTimers) -> float:
        calls.append(1)
        return original(self)

    monkeypatch.setattr(PeerTimers, "next_deadline", counted)
    first = b.device.next_deadline()
    assert b.device.next_deadline() == first and len(calls) == 1  # cached
    b.device.encrypt([ipv4_packet("10.0.0.2", "10.0.0.1")], net.now)
    assert b.device.next_deadline() is not None and len(calls) == 2  # looked again
