"""Peers and their sessions: configuration, keypairs (current/previous/next), staged packets.

Who uses it: :class:`tunplug.wireguard.WireGuardDevice`, which owns every :class:`Peer`; the
engine and the CLIs see only :class:`PeerConfig` (what the operator sets) and
:class:`PeerStats` (what ``tunplug status`` shows).

Keypair slots follow whitepaper section 6.3 / wireguard-go: the initiator starts sending on a
new session at once (``current``); the responder keeps it in ``next`` until the first transport
message from the initiator confirms the key, and only then promotes it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Protocol

from tunplug.crypto import Aead, CryptoBackend
from tunplug.wireguard.constants import KEY_SIZE, MAX_STAGED_PACKETS
from tunplug.wireguard.cookie import CookieGenerator
from tunplug.wireguard.endpoint import Endpoint
from tunplug.wireguard.noise import Handshake, Identity
from tunplug.wireguard.replay import ReplayWindow
from tunplug.wireguard.timers import PeerTimers, Timing


class ReplayCheck(Protocol):
    """A replay window: :class:`ReplayWindow`, or the native data path's (shared with its
    threads)."""

    def check(self, counter: int) -> bool: ...


@dataclass(frozen=True)
class PeerConfig:
    """One ``[Peer]`` section: who the peer is and which inner addresses it may use."""

    public_key: bytes
    preshared_key: bytes | None = None
    endpoint: Endpoint | None = None
    allowed_ips: tuple[IPv4Network | IPv6Network, ...] = ()
    persistent_keepalive: int | None = None

    def __post_init__(self) -> None:
        if len(self.public_key) != KEY_SIZE:
            raise ValueError(f"peer public key must be 32 bytes, got {len(self.public_key)}")
        if self.preshared_key is not None and len(self.preshared_key) != KEY_SIZE:
            raise ValueError(f"preshared key must be 32 bytes, got {len(self.preshared_key)}")
        if self.persistent_keepalive is not None and not 0 <= self.persistent_keepalive <= 65535:
            raise ValueError("persistent keepalive must be between 0 and 65535 seconds")


@dataclass(frozen=True)
class PeerStats:
    """What ``wg show`` reports for a peer. ``last_handshake`` is on the device's monotonic
    clock (the ``now`` passed in), ``None`` before the first handshake."""

    public_key: bytes
    endpoint: Endpoint | None
    last_handshake: float | None
    rx_bytes: int
    tx_bytes: int
    allowed_ips: tuple[IPv4Network | IPv6Network, ...]
    persistent_keepalive: int | None


class Keypair:
    """One transport session: two AEADs, the send counter and the replay window.

    The send counter lives here, or in the send AEAD when it owns it (the native data path's,
    shared with its threads); :meth:`reserve` hands out counters either way. ``replay`` is any
    object with ``check(counter) -> bool`` (default: :class:`ReplayWindow`).
    """

    __slots__ = (
        "_send_counter",
        "created",
        "is_initiator",
        "local_index",
        "peer",
        "receive",
        "remote_index",
        "replay",
        "send",
        "transport_prefix",
    )

    def __init__(
        self,
        peer: Peer,
        send: Aead,
        receive: Aead,
        *,
        is_initiator: bool,
        local_index: int,
        remote_index: int,
        created: float,
        reject_after_messages: int,
        replay: ReplayCheck | None = None,
    ) -> None:
        self.peer = peer
        self.send = send
        self.receive = receive
        self.is_initiator = is_initiator
        self.local_index = local_index
        self.remote_index = remote_index
        self.created = created
        self._send_counter = 0
        self.replay = replay or ReplayWindow(limit=reject_after_messages)
        #: Type word and receiver index: the first 8 bytes of every transport message we send.
        self.transport_prefix = b"\x04\x00\x00\x00" + remote_index.to_bytes(4, "little")

    @property
    def send_counter(self) -> int:
        """The next counter to send with (how many were reserved)."""
        return self.send.counter if self.send.owns_counter else self._send_counter

    def reserve(self, count: int) -> int:
        """Reserve ``count`` consecutive send counters; returns the first."""
        if self.send.owns_counter:
            return self.send.reserve(count)
        start = self._send_counter
        self._send_counter = start + count
        return start


class Peer:
    """Everything the device knows about one peer."""

    __slots__ = (
        "allowed_ips",
        "config",
        "cookie",
        "current",
        "endpoint",
        "handshake",
        "id",
        "last_handshake",
        "last_sent_handshake",
        "next",
        "previous",
        "public_key",
        "rx_bytes",
        "staged",
        "timers",
        "tx_bytes",
    )

    def __init__(
        self,
        config: PeerConfig,
        identity: Identity,
        crypto: CryptoBackend,
        timing: Timing,
        peer_id: int = 0,
    ) -> None:
        #: The device's number for this peer (a native data plane's name for it).
        self.id = peer_id
        self.public_key = config.public_key
        self.config = config
        self.endpoint: Endpoint | None = config.endpoint
        self.handshake = Handshake(identity, config.public_key, config.preshared_key)
        self.cookie = CookieGenerator(crypto, config.public_key, timing.cookie_refresh_time)
        self.timers = PeerTimers(timing, config.persistent_keepalive)
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        self.staged: deque[bytes] = deque(maxlen=MAX_STAGED_PACKETS)
        self.last_sent_handshake = float("-inf")
        self.last_handshake: float | None = None
        self.rx_bytes = 0
        self.tx_bytes = 0

    def keypairs(self) -> list[Keypair]:
        return [k for k in (self.current, self.previous, self.next) if k is not None]
