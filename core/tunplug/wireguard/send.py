"""The device's outbound half (wireguard-go's ``send.go``): IP packets from the TUN device become
data messages, and sending starts the handshakes it needs.

Who calls it: :class:`tunplug.wireguard.WireGuardDevice`, of which :class:`SendMixin` is a part
(:meth:`~SendMixin.encrypt`); the inbound half (:mod:`.receive`), to answer a handshake with a
keepalive and to send what waited for a session; the timers (:mod:`.device_timers`), for
retransmissions, rekeys and keepalives.

A packet's inner destination picks its peer (cryptokey routing). Packets for a peer without a
usable session wait in its staging queue while a handshake runs. Keys are kept fresh on the
sending side here: after REKEY_AFTER_MESSAGES messages, or REKEY_AFTER_TIME for the initiator,
sending starts a new handshake.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tunplug.wireguard.ip import destinations
from tunplug.wireguard.messages import padded
from tunplug.wireguard.noise import HandshakeError, create_initiation, tai64n
from tunplug.wireguard.peer import Keypair, Peer
from tunplug.wireguard.state import DeviceState, Output
from tunplug.wireguard.timers import INF

if TYPE_CHECKING:
    # Only a type here: tunplug.tun imports this package (for DEFAULT_MTU).
    from tunplug.tun import Packet

#: Slack when comparing a timer deadline with the handshake rate limit (float rounding).
_EPSILON = 1e-6


class SendBuffer:
    """The reusable memory :meth:`SendMixin.encrypt` writes data messages into (the device's
    ``reuse_send_buffer``)."""

    __slots__ = ("memory", "used")

    def __init__(self) -> None:
        self.memory = memoryview(bytearray(0))
        self.used = 0

    def take(self, size: int) -> memoryview:
        """The next ``size`` bytes. A larger buffer replaces a full one (never resized in
        place: views of it may still be alive); the old one goes when its views do."""
        if self.used + size > len(self.memory):
            self.memory = memoryview(bytearray(max(2 * len(self.memory), size, 1 << 16)))
            self.used = 0
        region = self.memory[self.used : self.used + size]
        self.used += size
        return region


class SendMixin(DeviceState):
    """Outbound: :meth:`encrypt`, staging, key freshness, keepalives and initiations."""

    #: Where :meth:`encrypt` writes data messages with ``reuse_send_buffer``, else ``None``.
    _send_buffer: SendBuffer | None
    #: Unix seconds, for the TAI64N timestamp of initiations.
    _wall_clock: Callable[[], float]

    def encrypt(self, packets: Sequence[Packet], now: float) -> Output:
        """Encrypt IP packets from the TUN device for the peers their destinations route to.

        Packets for a peer without a usable session are staged (at most MAX_STAGED_PACKETS,
        oldest dropped) and a handshake starts.
        """
        self._version += 1  # timers may change: next_deadline() looks again
        out = Output()
        by_peer: dict[Peer, list[Packet]] = {}
        lookup = self._routes.lookup_packed
        # A batch goes to few destinations: route each once.
        routed: dict[bytes, Peer | None] = {}
        for packet, destination in zip(packets, destinations(packets), strict=True):
            if destination is None:
                self.drops["no-route"] += 1
                continue
            if destination in routed:
                peer = routed[destination]
            else:
                peer = routed[destination] = lookup(destination)
            if peer is None:
                self.drops["no-route"] += 1
                continue
            batch = by_peer.get(peer)
            if batch is None:
                by_peer[peer] = [packet]
            else:
                batch.append(packet)
        buffer = self._send_buffer
        if buffer is not None:
            buffer.used = 0  # the previous call's views are out of use (reuse_send_buffer)
        for peer, batch in by_peer.items():
            if not peer.staged and self._usable_for_sending(peer.current, now):
                self._send_packets(peer, batch, now, out, buffer)
            else:
                self._stage(peer, batch)
                self._send_staged(peer, now, out)
        return out

    def _usable_for_sending(self, keypair: Keypair | None, now: float) -> bool:
        return (
            keypair is not None
            and keypair.send_counter < self.timing.reject_after_messages
            and now - keypair.created < self.timing.reject_after_time
        )

    def _stage(self, peer: Peer, packets: Sequence[Packet]) -> None:
        staged = peer.staged
        overflow = len(staged) + len(packets) - (staged.maxlen or 0)
        if overflow > 0:
            self.drops["staged-overflow"] += overflow
        staged.extend(bytes(p) for p in packets)

    def _send_staged(self, peer: Peer, now: float, out: Output) -> None:
        """Send staged packets on the current session, or start a handshake for them."""
        if not peer.staged:
            return
        if not self._usable_for_sending(peer.current, now):
            self._send_initiation(peer, now, out, retry=False)
            return
        packets = list(peer.staged)
        peer.staged.clear()
        self._send_packets(peer, packets, now, out)

    def _send_packets(
        self,
        peer: Peer,
        packets: Sequence[Packet],
        now: float,
        out: Output,
        buffer: SendBuffer | None = None,
    ) -> None:
        keypair = peer.current
        assert keypair is not None
        endpoint = peer.endpoint
        if endpoint is None:
            self.drops["no-endpoint"] += len(packets)
            return
        timing = self.timing
        start = keypair.reserve(len(packets))
        room = max(timing.reject_after_messages - start, 0)
        if len(packets) > room:
            self._stage(peer, packets[room:])
            packets = packets[:room]
        count = len(packets)
        mtu = self.mtu
        prefix = keypair.transport_prefix
        append = out.to_network.append
        if buffer is not None:
            sent = 0
            for view in keypair.send.seal_transport(start, packets, prefix, mtu, buffer.take):
                sent += len(view)
                append((view, endpoint))
        else:
            sent = 0
            counters = range(start, start + count)
            plaintexts = [padded(p, mtu) for p in packets]
            sealed = keypair.send.seal_many(counters, plaintexts)
            for counter, ciphertext in zip(counters, sealed, strict=True):
                message = prefix + counter.to_bytes(8, "little") + ciphertext
                sent += len(message)
                append((message, endpoint))
        peer.tx_bytes += sent
        timers = peer.timers
        timers.any_authenticated_packet_traversal(now)
        timers.any_authenticated_packet_sent()
        # The timer is armed once per quiet period: draw the jitter (a syscall) only then.
        if timers.new_handshake == INF and any(packets):
            timers.data_sent(now, self._jitter())
        self._keep_key_fresh_sending(peer, keypair, now, out)
        if peer.staged:
            self._send_initiation(peer, now, out, retry=False)

    def _keep_key_fresh_sending(
        self, peer: Peer, keypair: Keypair, now: float, out: Output
    ) -> None:
        """Rekey after RekeyAfterMessages, or (initiator) RekeyAfterTime, of sending."""
        timing = self.timing
        if keypair.send_counter > timing.rekey_after_messages or (
            keypair.is_initiator and now - keypair.created >= timing.rekey_after_time
        ):
            self._send_initiation(peer, now, out, retry=False)

    def _send_keepalive(self, peer: Peer, now: float, out: Output) -> None:
        if not peer.staged:
            peer.staged.append(b"")
        self._send_staged(peer, now, out)

    def _send_initiation(self, peer: Peer, now: float, out: Output, *, retry: bool) -> None:
        timers = peer.timers
        if not retry:
            timers.handshake_attempts = 0
        if now - peer.last_sent_handshake < self.timing.rekey_timeout - _EPSILON:
            return
        endpoint = peer.endpoint
        if endpoint is None:
            self.drops["no-endpoint"] += 1
            return
        handshake = peer.handshake
        local_index = self._indices.new_handshake_index(peer)
        try:
            message = create_initiation(
                self.identity,
                handshake,
                local_index,
                self._ephemeral(),
                tai64n(self._wall_clock()),
            )
        except HandshakeError as error:
            self._indices.forget_handshake_index(peer)
            handshake.local_index = 0
            self.drops[error.reason] += 1
            return
        peer.last_sent_handshake = now
        peer.cookie.add_macs(message, now)
        timers.any_authenticated_packet_traversal(now)
        timers.any_authenticated_packet_sent()
        out.to_network.append((bytes(message), endpoint))
        peer.tx_bytes += len(message)
        timers.handshake_initiated(now, self._jitter())
