"""The state the parts of the WireGuard device share, declared once, and what each call returns.

Who uses it: the parts of :class:`tunplug.wireguard.WireGuardDevice`, which follow wireguard-go's
files: :mod:`.send` (``send.go``: outbound), :mod:`.receive` (``receive.go``: inbound),
:mod:`.device_timers` (``timers.go``: what runs at ``tick``) and :mod:`.device` (``device.go``:
the class itself, its construction, peers and public API). Each part is a mixin;
:class:`DeviceState` declares, for the type checker and the reader, the attributes several parts
use, and each mixin declares those only it uses. ``WireGuardDevice.__init__`` sets them all.

A part imports only the parts it calls into (:mod:`.receive` and :mod:`.device_timers` build on
:mod:`.send`), never :mod:`.device`, which composes them.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from tunplug.crypto import CryptoBackend
from tunplug.wireguard.cookie import RateLimiter
from tunplug.wireguard.endpoint import Endpoint
from tunplug.wireguard.keys import clamp_private_key
from tunplug.wireguard.noise import Identity
from tunplug.wireguard.peer import Peer
from tunplug.wireguard.routing import AllowedIPs
from tunplug.wireguard.sessions import IndexTable
from tunplug.wireguard.timers import Timing


@dataclass(slots=True)
class Output:
    """What one call produced: datagrams to send, and decrypted IP packets for the TUN device.

    Datagrams for one peer are adjacent (one run per peer and batch), which suits UDP GSO.
    """

    to_network: list[tuple[bytes | memoryview, Endpoint]] = field(default_factory=list)
    to_tun: list[bytes] = field(default_factory=list)


class DeviceState:
    """The attributes of a :class:`~tunplug.wireguard.WireGuardDevice` that several of its
    parts use, and the randomness they all draw on."""

    crypto: CryptoBackend
    timing: Timing
    #: Padding never takes a data message's plaintext beyond this.
    mtu: int
    identity: Identity
    public_key: bytes
    #: Why packets were dropped, by reason; never reset by the device.
    drops: collections.Counter[str]
    _random: Callable[[int], bytes]
    _jitter_source: random.Random
    #: Peers by public key.
    _peers: dict[bytes, Peer]
    #: Peers whose sessions, endpoint or AllowedIPs changed since the last ``take_changes``.
    _changed: set[Peer]
    _routes: AllowedIPs[Peer]
    _indices: IndexTable
    _limiter: RateLimiter
    #: Handshake messages seen since the last ``handshake_floods``.
    _handshakes_seen: int
    #: Bumped by every call that may change a timer: ``next_deadline`` is cached until then.
    _version: int

    def _ephemeral(self) -> bytes:
        return clamp_private_key(self._random(32))

    def _jitter(self) -> float:
        # Timer jitter needs no cryptographic randomness; a syscall per batch showed in
        # profiles, so a PRNG seeded once from ``random`` draws it.
        maximum = self.timing.rekey_timeout_jitter
        if maximum <= 0:
            return 0.0
        return self._jitter_source.random() * maximum
