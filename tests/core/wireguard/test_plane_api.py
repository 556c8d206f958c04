"""The device's side of a native data plane (``take_changes``, ``apply_activity``,
``confirm_sessions``): what the plane carried drives the same timers and session changes as
traffic through ``encrypt``/``decrypt`` does."""

from __future__ import annotations

import math

from tunplug.wireguard import Timing

from ._fakenet import ipv4_packet
from .test_handshake_and_transport import make_pair

TIMING = Timing(rekey_timeout_jitter=0)


def connected():
    net, a, b = make_pair(timing=TIMING)
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()
    a.device.take_changes()
    b.device.take_changes()
    return net, a, b


def test_changes_name_the_peers_a_plane_must_update():
    net, a, b = make_pair(timing=TIMING)
    changed, removed = a.device.take_changes()
    assert [peer.public_key for peer in changed] == [b.public_key] and removed == []
    assert a.device.take_changes() == ([], [])
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    net.flush()  # a session was derived on both sides
    assert [p.public_key for p in a.device.take_changes()[0]] == [b.public_key]
    [peer] = b.device.take_changes()[0]
    peer_id = peer.id
    b.device.remove_peer(a.public_key)
    assert b.device.take_changes() == ([], [peer_id])


def test_sent_data_arms_the_new_handshake_timer_and_a_later_answer_cancels_it():
    net, a, _b = connected()
    [peer] = [p for p in a.device._peers.values()]
    timers = peer.timers
    timers.new_handshake = math.inf
    now = net.now
    a.device.apply_activity(peer.id, (1000, 5, now), (0, 0, 0, 0.0), None, now)
    assert timers.new_handshake == now + TIMING.keepalive_timeout + TIMING.rekey_timeout
    assert peer.tx_bytes >= 1000
    # An answer that came after the data cancels it; one that came before does not.
    a.device.apply_activity(peer.id, (0, 0, 0.0), (64, 1, 1, now + 1), None, now + 1)
    assert timers.new_handshake == math.inf
    a.device.apply_activity(peer.id, (1000, 5, now + 3), (64, 1, 0, now + 2), None, now + 3)
    assert timers.new_handshake == now + 3 + TIMING.keepalive_timeout + TIMING.rekey_timeout


def test_received_data_arms_a_keepalive_and_a_new_endpoint_is_followed():
    net, _a, b = connected()
    [peer] = [p for p in b.device._peers.values()]
    timers = peer.timers
    timers.send_keepalive = math.inf
    now = net.now
    moved = ("192.0.2.99", 4000)
    b.device.apply_activity(peer.id, (0, 0, 0.0), (3000, 3, 3, now), moved, now)
    assert timers.send_keepalive == now + TIMING.keepalive_timeout
    assert timers.need_another_keepalive  # more than one packet, as decrypt() counts them
    assert peer.endpoint == moved
    assert b.device.take_changes()[0] == [peer]
    assert peer.rx_bytes >= 3000
    # A keepalive is due later from tick(), as on the Python path.
    out = b.device.tick(now + TIMING.keepalive_timeout)
    assert [d[0] for d, endpoint in out.to_network] == [4] and out.to_network[0][1] == moved


def test_an_initiator_past_rekey_after_time_starts_a_handshake_on_sent_activity():
    net, a, _b = connected()
    [peer] = [p for p in a.device._peers.values()]
    later = net.now + TIMING.rekey_after_time
    out = a.device.apply_activity(peer.id, (100, 1, later), (0, 0, 0, 0.0), None, later)
    assert [d[0] for d, _ in out.to_network] == [1]  # a new initiation


def test_a_confirmed_next_session_becomes_current():
    net, a, b = make_pair(timing=TIMING)
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    [initiation] = net.in_flight
    net.in_flight.clear()
    net.deliver(initiation)  # b answers; its session waits in ``next``
    [peer] = [p for p in b.device._peers.values()]
    assert peer.current is None and peer.next is not None
    index = peer.next.local_index
    b.device.confirm_sessions([index, 12345], net.now)  # an unknown index is ignored
    assert peer.current is not None and peer.current.local_index == index and peer.next is None
    assert b.device.take_changes()[0] == [peer]
