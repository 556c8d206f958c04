"""The WireGuard interface as a sans-IO state machine: bytes and ``now`` in, bytes out.

Who calls it: the tunnel engine (:mod:`tunplug.engine`) drives one :class:`WireGuardDevice`
per tunnel with three calls, each taking a batch and returning an :class:`Output`:

* :meth:`WireGuardDevice.encrypt` with IP packets read from the TUN device;
* :meth:`WireGuardDevice.decrypt` with UDP datagrams read from the socket;
* :meth:`WireGuardDevice.tick` at :meth:`WireGuardDevice.next_deadline`.

No sockets, threads, clocks or logging per packet: time comes in as ``now`` (monotonic
seconds), randomness from the injected ``random``. Bad input never raises; it is counted in
:attr:`WireGuardDevice.drops` by reason. Behaviour follows the whitepaper and wireguard-go
(``send.go``, ``receive.go``, ``timers.go``, ``noise-protocol.go``) so that the two interoperate.

"Under load" (when handshakes are answered with cookie replies unless they carry a valid mac2)
means at least ``under_load_threshold`` handshake messages within one second, and for
UNDER_LOAD_AFTER_TIME after; see :class:`~tunplug.wireguard.cookie.LoadMonitor`. Handshake
messages are rate-limited per source IP (20/s, burst 5) at all times, before any other check;
a source far over its rate is reported by :meth:`WireGuardDevice.handshake_floods` so that the
engine can have the kernel drop its handshakes (:mod:`tunplug.wireguard.flood`).
"""

from __future__ import annotations

import collections
import os
import random as _random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING

from tunplug.crypto import Aead, CryptoBackend
from tunplug.wireguard.constants import (
    DEFAULT_MTU,
    HANDSHAKE_INITIATION_RATE,
    INITIATION_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    MIN_TRANSPORT_SIZE,
    UNDER_LOAD_THRESHOLD,
)
from tunplug.wireguard.cookie import CookieChecker, LoadMonitor, RateLimiter, source_bytes
from tunplug.wireguard.endpoint import Endpoint
from tunplug.wireguard.flood import FloodFilter, FloodGuard
from tunplug.wireguard.ip import declared_length, destination_address, source_address
from tunplug.wireguard.keys import clamp_private_key
from tunplug.wireguard.messages import (
    COOKIE_REPLY,
    FIXED_SIZES,
    RESPONSE,
    TRANSPORT_HEADER,
    padded,
)
from tunplug.wireguard.noise import (
    HandshakeError,
    Identity,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
    derive_transport_keys,
    open_initiation,
    tai64n,
)
from tunplug.wireguard.peer import (
    Keypair,
    Peer,
    PeerConfig,
    PeerStats,
    ReplayCheck,
)
from tunplug.wireguard.routing import AllowedIPs
from tunplug.wireguard.sessions import IndexTable
from tunplug.wireguard.timers import INF, Timing

if TYPE_CHECKING:
    # Only a type here: tunplug.tun imports this package (for DEFAULT_MTU).
    from tunplug.tun import Packet

#: Slack when comparing a timer deadline with the handshake rate limit (float rounding).
_EPSILON = 1e-6


@dataclass(slots=True)
class Output:
    """What one call produced: datagrams to send, and decrypted IP packets for the TUN device.

    Datagrams for one peer are adjacent (one run per peer and batch), which suits UDP GSO.
    """

    to_network: list[tuple[bytes | memoryview, Endpoint]] = field(default_factory=list)
    to_tun: list[bytes] = field(default_factory=list)


def _normalise(endpoint: tuple[object, ...]) -> Endpoint:
    host, port = endpoint[0], endpoint[1]
    return (str(host), int(port))  # type: ignore[call-overload]


class _SendBuffer:
    """The reusable memory :meth:`WireGuardDevice.encrypt` writes data messages into."""

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


class WireGuardDevice:
    """One WireGuard interface: a static key, its peers, their sessions and timers.

    ``private_key`` is the interface's 32-byte static key; ``crypto`` supplies the primitives.
    ``timing`` may shorten the protocol's times (tests). ``random`` supplies indices, ephemeral
    keys, jitter and cookie secrets; ``wall_clock`` (Unix seconds) feeds the TAI64N timestamps
    of initiations, which must grow across restarts. ``mtu`` bounds padding.
    ``under_load_threshold`` is the handshake messages per second from which the device answers
    with cookie replies (0: always).

    ``reuse_send_buffer``: :meth:`encrypt` writes its data messages into one buffer the device
    reuses, and returns views of it that stay valid only until the next :meth:`encrypt` call.
    For an I/O loop that sends each output before encrypting the next batch (the engine does);
    it saves an allocation and a copy per packet. Other calls (:meth:`decrypt`, :meth:`tick`)
    always return their own bytes.

    ``transport_aead`` makes the AEAD of each session direction from its key (default:
    ``crypto.aead``); the data path supplies it (:meth:`tunplug.datapath.DataPath.transport_aead`),
    e.g. the native core's. Handshakes always use ``crypto``. ``replay_window(limit)`` makes a
    session's replay window (default :class:`~tunplug.wireguard.replay.ReplayWindow`).

    A native data plane that carries transport data beside the device keeps in step through
    :meth:`take_changes` (which peers' sessions, endpoints or AllowedIPs changed),
    :meth:`apply_activity` (what it sent and received, for the timers) and
    :meth:`confirm_sessions`.
    """

    def __init__(
        self,
        private_key: bytes,
        crypto: CryptoBackend,
        *,
        timing: Timing = Timing(),  # noqa: B008 - frozen, shared default is fine
        random: Callable[[int], bytes] = os.urandom,
        wall_clock: Callable[[], float] = time.time,
        mtu: int = DEFAULT_MTU,
        under_load_threshold: int = UNDER_LOAD_THRESHOLD,
        reuse_send_buffer: bool = False,
        transport_aead: Callable[[bytes], Aead] | None = None,
        replay_window: Callable[[int], ReplayCheck] | None = None,
    ) -> None:
        if len(private_key) != 32:
            raise ValueError(f"private key must be 32 bytes, got {len(private_key)}")
        if mtu < 16:
            raise ValueError(f"MTU must be at least 16, got {mtu}")
        self.crypto = crypto
        self._transport_aead = transport_aead or crypto.aead
        self._replay_window = replay_window
        self.timing = timing
        self.mtu = mtu
        self._random = random
        self._jitter_source = _random.Random(int.from_bytes(random(8), "little"))
        self._send_buffer: _SendBuffer | None = _SendBuffer() if reuse_send_buffer else None
        self._wall_clock = wall_clock
        self.identity = Identity(crypto, private_key)
        self.public_key = self.identity.public
        self._peers: dict[bytes, Peer] = {}
        self._peers_by_id: dict[int, Peer] = {}
        self._next_peer_id = 1
        #: Peers whose sessions, endpoint or AllowedIPs changed, and ids of removed peers,
        #: since the last :meth:`take_changes`.
        self._changed: set[Peer] = set()
        self._removed: set[int] = set()
        self._routes: AllowedIPs[Peer] = AllowedIPs()
        self._indices = IndexTable(random)
        self._cookies = CookieChecker(crypto, self.public_key, random, timing.cookie_refresh_time)
        self._load = LoadMonitor(under_load_threshold)
        self._limiter = RateLimiter()
        self._flood = FloodGuard()
        # next_deadline() is cached until a call that may change timers bumps the version.
        self._version = 0
        self._deadline_cache: tuple[int, float] = (-1, INF)
        self._handshakes_seen = 0
        self._last_collect = float("-inf")
        #: Why packets were dropped, by reason; never reset by the device.
        self.drops: collections.Counter[str] = collections.Counter()

    # -- configuration ----------------------------------------------------------------------
    def add_peer(self, config: PeerConfig) -> None:
        """Add a peer, or update one with the same public key (sessions are kept).

        :raises ValueError: the key is this device's own public key.
        """
        self._version += 1  # timers may change: next_deadline() looks again
        if config.public_key == self.public_key:
            raise ValueError("a peer cannot have the interface's own public key")
        peer = self._peers.get(config.public_key)
        if peer is None:
            peer = Peer(config, self.identity, self.crypto, self.timing, self._next_peer_id)
            self._next_peer_id += 1
            self._peers[config.public_key] = peer
            self._peers_by_id[peer.id] = peer
        else:
            peer.config = config
            if config.endpoint is not None:
                peer.endpoint = config.endpoint
            peer.handshake.preshared_key = config.preshared_key or bytes(32)
            peer.timers.persistent_keepalive_interval = config.persistent_keepalive or 0
            self._routes.remove_value(peer)
        for network in config.allowed_ips:
            self._routes.insert(network, peer)
        self._changed.add(peer)
        if config.persistent_keepalive:
            # wireguard-go sends a keepalive as soon as the peer is up: due at the next tick.
            peer.timers.persistent_keepalive = float("-inf")

    def remove_peer(self, public_key: bytes) -> None:
        """Remove a peer and erase its sessions; unknown keys are ignored."""
        self._version += 1  # timers may change: next_deadline() looks again
        peer = self._peers.pop(public_key, None)
        if peer is None:
            return
        self._routes.remove_value(peer)
        self._indices.zero_and_flush(peer)
        peer.timers.stop_all()
        del self._peers_by_id[peer.id]
        self._changed.discard(peer)
        self._removed.add(peer.id)

    def connect(self) -> None:
        """Start a handshake with every peer that has an endpoint, at the next :meth:`tick`.

        WireGuard itself waits for the first packet to send; a client that wants to know at
        once whether it can reach its peers (``--exit``, status for a GUI) calls this.
        """
        self._version += 1  # timers may change: next_deadline() looks again
        for peer in self._peers.values():
            if peer.endpoint is not None and peer.current is None:
                peer.timers.new_handshake = float("-inf")

    def retarget(self, public_key: bytes, endpoint: Endpoint | None = None) -> None:
        """Handshake with a peer at the next :meth:`tick`, even while a session works; first
        point it at ``endpoint`` when given. Unknown keys are ignored.

        For a client that suspects its path (:mod:`tunplug.endpoints`): the initiation goes
        out even if one left less than REKEY_TIMEOUT ago, since it is asked for seconds apart
        (once per suspicion), never per packet.
        """
        self._version += 1  # timers may change: next_deadline() looks again
        peer = self._peers.get(public_key)
        if peer is None:
            return
        if endpoint is not None and endpoint != peer.endpoint:
            peer.endpoint = endpoint
            self._changed.add(peer)  # a native data plane sends there too
        peer.timers.new_handshake = float("-inf")
        peer.last_sent_handshake = float("-inf")

    def peer_stats(self) -> list[PeerStats]:
        """One entry per peer, in the order they were added."""
        return [
            PeerStats(
                public_key=peer.public_key,
                endpoint=peer.endpoint,
                last_handshake=peer.last_handshake,
                rx_bytes=peer.rx_bytes,
                tx_bytes=peer.tx_bytes,
                allowed_ips=tuple(self._routes.networks(peer)),
                persistent_keepalive=peer.config.persistent_keepalive,
            )
            for peer in self._peers.values()
        ]

    def route(self, address: str) -> bytes | None:
        """The public key of the peer an inner ``address`` routes to (cryptokey routing)."""
        peer = self._routes.lookup_address(address)
        return None if peer is None else peer.public_key

    # -- outbound ---------------------------------------------------------------------------
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
        for packet in packets:
            destination = destination_address(packet)
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
            buffer.used = 0  # the previous call's views are no longer in use (see __init__)
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
        buffer: _SendBuffer | None = None,
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

    # -- inbound ----------------------------------------------------------------------------
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
        peer = keypair.peer
        replay = keypair.replay.check
        lookup_source = self._routes.lookup_packed
        # A batch comes from few inner sources: check each once (AllowedIPs cannot change
        # within the call).
        allowed_sources: dict[bytes | None, bool] = {}
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
            length = declared_length(plaintext)
            if length is None or length > size:
                drops["bad-inner-packet"] += 1
                continue
            source = source_address(plaintext)  # not None: the header is whole
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

    # -- sessions and indices ---------------------------------------------------------------
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

    def _ephemeral(self) -> bytes:
        return clamp_private_key(self._random(32))

    def _jitter(self) -> float:
        # Timer jitter needs no cryptographic randomness; a syscall per batch showed in
        # profiles, so a PRNG seeded once from ``random`` draws it.
        maximum = self.timing.rekey_timeout_jitter
        if maximum <= 0:
            return 0.0
        return self._jitter_source.random() * maximum

    # -- a native data plane beside the device ----------------------------------------------
    def take_changes(self) -> tuple[list[Peer], list[int]]:
        """Peers whose sessions, endpoint or AllowedIPs changed since the last call, and the
        ids of peers removed meanwhile: what a native data plane must update."""
        changed, removed = list(self._changed), list(self._removed)
        self._changed.clear()
        self._removed.clear()
        return changed, removed

    def allowed_networks(self, peer: Peer) -> list[IPv4Network | IPv6Network]:
        """``peer``'s AllowedIPs as the routing table holds them."""
        return list(self._routes.networks(peer))

    def apply_activity(
        self,
        peer_id: int,
        sent: tuple[int, int, float],
        received: tuple[int, int, int, float],
        endpoint: Endpoint | None,
        now: float,
    ) -> Output:
        """What a native data plane did for a peer since it was last asked: ``sent`` is (bytes,
        data messages, when the last went), ``received`` (bytes, authenticated messages, data
        packets among them, when the last came), ``endpoint`` where it came from. Runs the same
        timer events and key-freshness checks as :meth:`encrypt` and :meth:`decrypt` do for the
        traffic they carry, in the order the traffic happened."""
        self._version += 1  # timers may change: next_deadline() looks again
        out = Output()
        peer = self._peers_by_id.get(peer_id)
        if peer is None:
            return out
        tx_bytes, tx_messages, tx_last = sent
        rx_bytes, rx_messages, rx_data, rx_last = received
        timers = peer.timers
        events = sorted([(tx_last, 0)] * bool(tx_messages) + [(rx_last, 1)] * bool(rx_messages))
        for when, kind in events:
            timers.any_authenticated_packet_traversal(when)
            if kind == 0:
                peer.tx_bytes += tx_bytes
                timers.any_authenticated_packet_sent()
                if timers.new_handshake == INF:
                    timers.data_sent(when, self._jitter())
                if peer.current is not None:
                    self._keep_key_fresh_sending(peer, peer.current, now, out)
            else:
                if endpoint is not None and endpoint != peer.endpoint:
                    peer.endpoint = endpoint
                    self._changed.add(peer)
                peer.rx_bytes += rx_bytes
                self._keep_key_fresh_receiving(peer, now, out)
                timers.any_authenticated_packet_received()
                if rx_data:
                    timers.data_received(when, rx_data)
        return out

    def confirm_sessions(self, local_indices: Sequence[int], now: float) -> Output:
        """A native data plane saw the first packets on these (``next``) sessions: promote them
        as :meth:`decrypt` would have."""
        self._version += 1  # timers may change: next_deadline() looks again
        out = Output()
        for index in local_indices:
            keypair = self._indices.get(index)
            if type(keypair) is Keypair and keypair.peer.next is keypair:
                self._confirm_next_keypair(keypair.peer, keypair, now, out)
        return out

    # -- timers -----------------------------------------------------------------------------
    @property
    def handshake_sources(self) -> int:
        """Sources the handshake rate limiter tracks now (bounded; idle ones are forgotten
        within about a second)."""
        return len(self._limiter)

    def handshake_floods(self, now: float) -> FloodFilter | None:
        """What the socket filter should drop of the handshake messages (sources flooding us,
        a sample of everyone's under a flood from too many sources), when that changed since
        the last call, else None. The engine calls it about once a second and hands it to the
        transport; see :mod:`tunplug.wireguard.flood`. Also forgets the rate limiter's idle
        sources."""
        seen, self._handshakes_seen = self._handshakes_seen, 0
        update = self._flood.update(self._limiter.take_refusals(), seen, now)
        # Idle sources are forgotten here too: tick() may not run for minutes on a quiet
        # gateway, and the rate limiter must not keep a flood's sources that long.
        self._limiter.collect(now)
        self._last_collect = now
        return update

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must run next (``now`` scale), or ``None`` if no timer is armed.

        A deadline in the past (``-inf`` included) means: tick now.
        """
        version, deadline = self._deadline_cache
        if version != self._version:
            # Every peer is looked at (O(peers)), so only after a call that may have changed a
            # timer: an idle gateway with 10,000 clients is asked ten times a second.
            deadline = min(
                (peer.timers.next_deadline() for peer in self._peers.values()), default=INF
            )
            self._deadline_cache = (self._version, deadline)
        return None if deadline == INF else deadline

    def tick(self, now: float) -> Output:
        """Run the timers due at ``now``: handshake retransmission, rekeying, keepalives and
        key erasure."""
        self._version += 1  # timers may change: next_deadline() looks again
        out = Output()
        timing = self.timing
        for peer in list(self._peers.values()):
            timers = peer.timers
            if timers.retransmit_handshake <= now:
                timers.retransmit_handshake = INF
                if timers.handshake_attempts > timing.max_timer_handshakes:
                    # Give up (after REKEY_ATTEMPT_TIME): drop what waited for the session
                    # and erase the keys later.
                    peer.staged.clear()
                    if timers.zero_key_material == INF:
                        timers.zero_key_material = now + timing.zero_key_material_after
                else:
                    timers.handshake_attempts += 1
                    self._send_initiation(peer, now, out, retry=True)
            if timers.send_keepalive <= now:
                timers.send_keepalive = INF
                self._send_keepalive(peer, now, out)
                if timers.need_another_keepalive:
                    timers.need_another_keepalive = False
                    timers.send_keepalive = now + timing.keepalive_timeout
            if timers.new_handshake <= now:
                timers.new_handshake = INF
                self._send_initiation(peer, now, out, retry=False)
            if timers.zero_key_material <= now:
                timers.zero_key_material = INF
                self._indices.zero_and_flush(peer)
                self._changed.add(peer)
            if timers.persistent_keepalive <= now:
                timers.persistent_keepalive = INF
                if timers.persistent_keepalive_interval > 0:
                    self._send_keepalive(peer, now, out)
        if now - self._last_collect >= 1.0:
            self._last_collect = now
            self._limiter.collect(now)
        return out


def _count_handshakes(datagrams: Sequence[tuple[bytes | memoryview, Endpoint]]) -> int:
    return sum(
        1
        for data, _ in datagrams
        if len(data) >= 4 and data[0] in (MESSAGE_INITIATION, MESSAGE_RESPONSE)
    )
