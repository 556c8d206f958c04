"""The WireGuard interface as a sans-IO state machine: bytes and ``now`` in, bytes out.

Who calls it: the tunnel engine (:mod:`tunplug.engine`) drives one :class:`WireGuardDevice`
per tunnel with three calls, each taking a batch and returning an :class:`Output`:

* :meth:`WireGuardDevice.encrypt` with IP packets read from the TUN device;
* :meth:`WireGuardDevice.decrypt` with UDP datagrams read from the socket;
* :meth:`WireGuardDevice.tick` at :meth:`WireGuardDevice.next_deadline`.

No sockets, threads, clocks or logging per packet: time comes in as ``now`` (monotonic
seconds), randomness from the injected ``random``. Bad input never raises; it is counted in
:attr:`WireGuardDevice.drops` by reason. Behaviour follows the whitepaper and wireguard-go
(``send.go``, ``receive.go``, ``timers.go``, ``noise-protocol.go``) so that the two interoperate,
and the code is split as theirs is:

* this module (``device.go``): :class:`WireGuardDevice`, its construction, peers, and the calls
  a native data plane keeps in step through;
* :mod:`.send` (``send.go``): :meth:`WireGuardDevice.encrypt`, staging, handshake initiation;
* :mod:`.receive` (``receive.go``): :meth:`WireGuardDevice.decrypt`, handshake and cookie
  messages, sessions, transport data;
* :mod:`.device_timers` (``timers.go``): :meth:`WireGuardDevice.tick` and
  :meth:`WireGuardDevice.next_deadline`;
* :mod:`.state`: the attributes those parts share, and :class:`Output`.

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
from ipaddress import IPv4Network, IPv6Network

from tunplug.crypto import Aead, CryptoBackend
from tunplug.tun import DEFAULT_MTU
from tunplug.wireguard.constants import UNDER_LOAD_THRESHOLD
from tunplug.wireguard.cookie import CookieChecker, LoadMonitor, RateLimiter
from tunplug.wireguard.device_timers import TimersMixin
from tunplug.wireguard.endpoint import Endpoint
from tunplug.wireguard.flood import FloodGuard
from tunplug.wireguard.noise import Identity
from tunplug.wireguard.peer import Keypair, Peer, PeerConfig, PeerStats, ReplayCheck
from tunplug.wireguard.receive import ReceiveMixin
from tunplug.wireguard.routing import AllowedIPs
from tunplug.wireguard.send import SendBuffer
from tunplug.wireguard.sessions import IndexTable
from tunplug.wireguard.state import Output
from tunplug.wireguard.timers import INF, Timing

__all__ = ["Output", "WireGuardDevice"]


class WireGuardDevice(ReceiveMixin, TimersMixin):
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
        self._send_buffer = SendBuffer() if reuse_send_buffer else None
        self._wall_clock = wall_clock
        self.identity = Identity(crypto, private_key)
        self.public_key = self.identity.public
        self._peers = {}
        self._peers_by_id: dict[int, Peer] = {}
        self._next_peer_id = 1
        self._changed = set()
        #: Ids of peers removed since the last :meth:`take_changes`.
        self._removed: set[int] = set()
        self._routes = AllowedIPs()
        self._indices = IndexTable(random)
        self._cookies = CookieChecker(crypto, self.public_key, random, timing.cookie_refresh_time)
        self._load = LoadMonitor(under_load_threshold)
        self._limiter = RateLimiter()
        self._flood = FloodGuard()
        self._version = 0
        self._deadline_cache = (-1, INF)
        self._handshakes_seen = 0
        self._last_collect = float("-inf")
        self.drops = collections.Counter()

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
