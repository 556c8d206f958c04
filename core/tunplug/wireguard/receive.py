"""The device's inbound half (wireguard-go's ``receive.go``): UDP datagrams become handshakes,
cookie replies and decrypted IP packets.

Who calls it: :class:`tunplug.wireguard.WireGuardDevice`, of which :class:`ReceiveMixin` is a
part (:meth:`~ReceiveMixin.decrypt`); the device's calls for a native data plane
(``confirm_sessions``, ``apply_activity``) also promote sessions and keep keys fresh through it.

Each datagram is classified by message type and length first. A handshake message then passes
the per-source rate limit, mac1 and, under load, mac2 (else a cookie reply goes back), in that
order. Transport messages are decrypted in batches, one AEAD call per session; each packet must
pass the session's replay window, and its inner source must route back to the peer that
decrypted it (cryptokey routing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tunplug.crypto import Aead
from tunplug.wireguard.constants import (
    HANDSHAKE_INITIATION_RATE,
    INITIATION_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    MIN_TRANSPORT_SIZE,
)
from tunplug.wireguard.cookie import CookieChecker, LoadMonitor, source_bytes
from tunplug.wireguard.endpoint import Endpoint
from tunplug.wireguard.ip import inner_headers
from tunplug.wireguard.messages import COOKIE_REPLY, FIXED_SIZES, RESPONSE, TRANSPORT_HEADER
from tunplug.wireguard.noise import (
    HandshakeError,
    consume_initiation,
    consume_response,
    create_response,
    derive_transport_keys,
    open_initiation,
)
from tunplug.wireguard.peer import Keypair, Peer, ReplayCheck
from tunplug.wireguard.send import SendMixin
from tunplug.wireguard.state import Output

if TYPE_CHECKING:
    from tunplug.tun import Packet


class ReceiveMixin(SendMixin):
    """Inbound: :meth:`decrypt`, handshake and cookie handling, sessions, transport data."""

    #: Makes the AEAD of each session direction from its key.
    _transport_aead: Callable[[bytes], Aead]
    #: Makes a session's replay window; ``None``: the default one.
    _replay_window: Callable[[int], ReplayCheck] | None
    _cookies: CookieChecker
    _load: LoadMonitor

    def decrypt(
        self, datagrams: Sequence[tuple[bytes | memoryview, Endpoint]], now: float
    ) -> Output:
        """Process UDP datagrams: handshakes, cookie replies and transport data.

        Runs of transport messages are decrypted in batches (one AEAD call per session); a
        handshake message between them is handled in order, so a response followed by data
        on the new session works within one batch.
        """
        self._version += 1  # timers may change: next_deadline() looks again
        out = Output()
        run: list[tuple[bytes | memoryview, Endpoint]] = []
        under_load: bool | None = None
        for data, raw_endpoint in datagrams:
            size = len(data)
            if size < 4 or data[1] or data[2] or data[3]:
                self.drops["bad-type" if size >= 4 else "bad-length"] += 1
                continue
            kind = data[0]
            if kind == MESSAGE_TRANSPORT:
                if size < MIN_TRANSPORT_SIZE:
                    self.drops["bad-length"] += 1
                else:
                    run.append((data, raw_endpoint))
                continue
            expected = FIXED_SIZES.get(kind)
            if expected is None:
                self.drops["bad-type"] += 1
                continue
            if size != expected:
                self.drops["bad-length"] += 1
                continue
            if run:
                self._decrypt_transport(run, now, out)
                run = []
            endpoint = raw_endpoint if len(raw_endpoint) == 2 else _normalise(raw_endpoint)
            if kind == MESSAGE_COOKIE_REPLY:
                self._handle_cookie_reply(data, now)
                continue
            if under_load is None:
                handshakes = _count_handshakes(datagrams)
                self._handshakes_seen += handshakes
                under_load = self._load.observe(handshakes, now)
            if not self._admit_handshake(data, endpoint, under_load, now, out):
                continue
            if kind == MESSAGE_INITIATION:
                self._handle_initiation(data, endpoint, now, out)
            else:
                self._handle_response(data, endpoint, now, out)
        if run:
            self._decrypt_transport(run, now, out)
        return out

    def _admit_handshake(
        self,
        data: bytes | memoryview,
        endpoint: Endpoint,
        under_load: bool,
        now: float,
        out: Output,
    ) -> bool:
        """The per-IP rate limit (first: a refusal costs one dictionary lookup, so a flood from
        one source is dropped for almost nothing), then mac1, then (under load) mac2 or a
        cookie reply."""
        if not self._limiter.allow(endpoint[0], now):
            self.drops["rate-limited"] += 1
            return False
        if not self._cookies.check_mac1(data):
            self.drops["bad-mac1"] += 1
            return False
        if under_load:
            source = source_bytes(endpoint)
            if not self._cookies.check_mac2(data, source, now):
                sender = int.from_bytes(data[4:8], "little")
                out.to_network.append(
                    (self._cookies.create_reply(data, sender, source, now), endpoint)
                )
                self.drops["cookie-reply-sent"] += 1
                return False
        return True

    def _handle_initiation(
        self, data: bytes | memoryview, endpoint: Endpoint, now: float, out: Output
    ) -> None:
        identity = self.identity
        try:
            opened = open_initiation(identity, data)
        except HandshakeError as error:
            self.drops[error.reason] += 1
            return
        peer = self._peers.get(opened.remote_static)
        if peer is None:
            self.drops["unknown-peer"] += 1
            return
        handshake = peer.handshake
        try:
            consume_initiation(identity, data, opened, handshake, now, HANDSHAKE_INITIATION_RATE)
        except HandshakeError as error:
            self.drops[error.reason] += 1
            return
        self._handshake_message_received(peer, endpoint, INITIATION_SIZE, now)
        timers = peer.timers
        # Whatever we had initiated is superseded: its index must not accept a response.
        local_index = self._indices.new_handshake_index(peer)
        try:
            message = create_response(identity, handshake, local_index, self._ephemeral())
        except HandshakeError as error:
            self._indices.forget_handshake(peer)
            self.drops[error.reason] += 1
            return
        peer.cookie.add_macs(message, now)
        self._begin_session(peer, now)
        timers.session_derived(now)
        timers.any_authenticated_packet_traversal(now)
        timers.any_authenticated_packet_sent()
        out.to_network.append((bytes(message), endpoint))
        peer.tx_bytes += len(message)

    def _handshake_message_received(
        self, peer: Peer, endpoint: Endpoint, size: int, now: float
    ) -> None:
        """An authenticated handshake message arrived: follow its endpoint, count it."""
        if peer.endpoint != endpoint:
            peer.endpoint = endpoint
            self._changed.add(peer)
        peer.timers.any_authenticated_packet_traversal(now)
        peer.timers.any_authenticated_packet_received()
        peer.rx_bytes += size

    def _handle_response(
        self, data: bytes | memoryview, endpoint: Endpoint, now: float, out: Output
    ) -> None:
        receiver = RESPONSE.unpack_from(data, 0)[2]
        owner = self._indices.get(receiver)
        if not isinstance(owner, Peer):
            self.drops["unknown-receiver"] += 1
            return
        peer = owner
        try:
            consume_response(self.identity, peer.handshake, data)
        except HandshakeError as error:
            self.drops[error.reason] += 1
            return
        self._handshake_message_received(peer, endpoint, len(data), now)
        timers = peer.timers
        self._begin_session(peer, now)
        timers.session_derived(now)
        timers.handshake_complete()
        peer.last_handshake = now
        self._send_keepalive(peer, now, out)

    def _handle_cookie_reply(self, data: bytes | memoryview, now: float) -> None:
        receiver = COOKIE_REPLY.unpack_from(data, 0)[1]
        owner = self._indices.get(receiver)
        if owner is None:
            self.drops["unknown-receiver"] += 1
            return
        peer = owner if isinstance(owner, Peer) else owner.peer
        # The cookie applies from the next (re)transmission: mac2 is filled in then.
        if not peer.cookie.consume_reply(data, now):
            self.drops["bad-cookie-reply"] += 1

    def _decrypt_transport(
        self, run: list[tuple[bytes | memoryview, Endpoint]], now: float, out: Output
    ) -> None:
        indices = self._indices.entries
        reject_after_time = self.timing.reject_after_time
        unpack = TRANSPORT_HEADER.unpack_from
        groups: dict[Keypair, tuple[list[int], list[memoryview], list[Endpoint]]] = {}
        # Runs are nearly always one session: look the receiver up only when it changes.
        last_receiver = -1
        group: tuple[list[int], list[memoryview], list[Endpoint]] | None = None
        for data, endpoint in run:
            _, receiver, counter = unpack(data, 0)
            if receiver != last_receiver or group is None:
                keypair = indices.get(receiver)
                if type(keypair) is not Keypair:
                    self.drops["unknown-receiver"] += 1
                    group = None
                    continue
                if now - keypair.created >= reject_after_time:
                    self.drops["expired-session"] += 1
                    group = None
                    continue
                group = groups.get(keypair)
                if group is None:
                    group = groups[keypair] = ([], [], [])
                last_receiver = receiver
            group[0].append(counter)
            group[1].append(memoryview(data)[16:])
            group[2].append(endpoint)
        for keypair, (counters, ciphertexts, endpoints) in groups.items():
            self._receive_batch(keypair, counters, ciphertexts, endpoints, now, out)

    def _receive_batch(
        self,
        keypair: Keypair,
        counters: list[int],
        ciphertexts: list[memoryview],
        endpoints: list[Endpoint],
        now: float,
        out: Output,
    ) -> None:
        plaintexts = keypair.receive.open_many(counters, ciphertexts)
        headers = inner_headers(plaintexts)
        peer = keypair.peer
        replay = keypair.replay.check
        lookup_source = self._routes.lookup_packed
        # A batch comes from few inner sources: check each once (AllowedIPs cannot change
        # within the call).
        allowed_sources: dict[Packet, bool] = {}
        to_tun = out.to_tun
        drops = self.drops
        authenticated = 0
        data_packets = 0
        received_bytes = 0
        last_endpoint: Endpoint | None = None
        for i, plaintext in enumerate(plaintexts):
            if plaintext is None:
                drops["decrypt-failed"] += 1
                continue
            if not replay(counters[i]):
                drops["replay"] += 1
                continue
            if authenticated == 0 and peer.next is keypair:
                self._confirm_next_keypair(peer, keypair, now, out)
            authenticated += 1
            last_endpoint = endpoints[i]
            received_bytes += len(plaintext) + 32
            if not plaintext:
                continue
            data_packets += 1
            size = len(plaintext)
            header = headers[i]
            if header is None or header[0] > size:
                drops["bad-inner-packet"] += 1
                continue
            length, source = header
            allowed = allowed_sources.get(source)
            if allowed is None:
                allowed = allowed_sources[source] = lookup_source(source) is peer
            if not allowed:
                drops["not-allowed-source"] += 1
                continue
            to_tun.append(plaintext if length == size else plaintext[:length])
        if not authenticated:
            return
        assert last_endpoint is not None
        endpoint = last_endpoint if len(last_endpoint) == 2 else _normalise(last_endpoint)
        if endpoint != peer.endpoint:
            peer.endpoint = endpoint
            self._changed.add(peer)
        peer.rx_bytes += received_bytes
        self._keep_key_fresh_receiving(peer, now, out)
        timers = peer.timers
        timers.any_authenticated_packet_traversal(now)
        timers.any_authenticated_packet_received()
        if data_packets:
            timers.data_received(now, data_packets)

    def _confirm_next_keypair(self, peer: Peer, keypair: Keypair, now: float, out: Output) -> None:
        """The initiator used the session we responded with: make it current and send."""
        self._indices.confirm_next(peer, keypair)
        self._changed.add(peer)
        peer.timers.handshake_complete()
        peer.last_handshake = now
        self._send_staged(peer, now, out)

    def _keep_key_fresh_receiving(self, peer: Peer, now: float, out: Output) -> None:
        timers = peer.timers
        if timers.sent_last_minute_handshake:
            return
        keypair = peer.current
        if (
            keypair is not None
            and keypair.is_initiator
            and now - keypair.created >= self.timing.last_minute_rekey_age
        ):
            timers.sent_last_minute_handshake = True
            self._send_initiation(peer, now, out, retry=False)

    def _begin_session(self, peer: Peer, now: float) -> None:
        handshake = peer.handshake
        send_key, receive_key, is_initiator = derive_transport_keys(self.identity, handshake)
        keypair = Keypair(
            peer,
            self._transport_aead(send_key),
            self._transport_aead(receive_key),
            is_initiator=is_initiator,
            local_index=handshake.local_index,
            remote_index=handshake.remote_index,
            created=now,
            reject_after_messages=self.timing.reject_after_messages,
            replay=(
                self._replay_window(self.timing.reject_after_messages)
                if self._replay_window
                else None
            ),
        )
        handshake.clear()
        self._indices.install(peer, keypair)
        self._changed.add(peer)


def _normalise(endpoint: tuple[object, ...]) -> Endpoint:
    host, port = endpoint[0], endpoint[1]
    return (str(host), int(port))  # type: ignore[call-overload]


def _count_handshakes(datagrams: Sequence[tuple[bytes | memoryview, Endpoint]]) -> int:
    return sum(
        1
        for data, _ in datagrams
        if len(data) >= 4 and data[0] in (MESSAGE_INITIATION, MESSAGE_RESPONSE)
    )
