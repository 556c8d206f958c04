"""Denial-of-service defences: mac1/mac2, cookie replies, load detection, handshake rate limit.

Who calls it: :class:`tunplug.wireguard.WireGuardDevice`. The responder side
(:class:`CookieChecker`, :class:`LoadMonitor`, :class:`RateLimiter`) is one object per device;
the initiator side (:class:`CookieGenerator`) is one per peer. Layouts follow whitepaper
section 5.4.4 and 5.4.7:

* ``mac1 = MAC(HASH("mac1----" || receiver static public), message up to mac1)``;
* ``mac2 = MAC(cookie, message up to mac2)``, zeros without a cookie younger than
  COOKIE_REFRESH_TIME;
* ``cookie = MAC(secret, source address bytes)`` with the secret rotated every
  COOKIE_REFRESH_TIME; the reply carries it XChaCha20-Poly1305 sealed under
  ``HASH("cookie--" || responder static public)`` with a random 24-byte nonce and the
  triggering message's mac1 as associated data.

``MAC`` is keyed BLAKE2s with a 16-byte digest (not HMAC).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from ipaddress import IPv6Address, ip_address

from tunplug.crypto import CryptoBackend, DecryptionFailed
from tunplug.wireguard.constants import (
    COOKIE_REFRESH_TIME,
    HANDSHAKE_BURST,
    HANDSHAKES_PER_SECOND,
    LABEL_COOKIE,
    LABEL_MAC1,
    MAC_SIZE,
    MESSAGE_COOKIE_REPLY,
    RATE_LIMITER_MAX_ENTRIES,
    UNDER_LOAD_AFTER_TIME,
)
from tunplug.wireguard.endpoint import Endpoint
from tunplug.wireguard.messages import COOKIE_REPLY

_ZERO_MAC = bytes(MAC_SIZE)


def source_bytes(endpoint: Endpoint) -> bytes:
    """The bytes a cookie binds to: packed IP address then the port (little-endian, as
    wireguard-go's ``netip.AddrPort.MarshalBinary``)."""
    host, port = endpoint
    try:
        packed = ip_address(host.split("%", 1)[0]).packed
    except ValueError:
        packed = host.encode()
    return packed + (port & 0xFFFF).to_bytes(2, "little")


class CookieChecker:
    """Responder side: verifies mac1/mac2 and writes cookie replies."""

    def __init__(
        self,
        crypto: CryptoBackend,
        local_public: bytes,
        random: Callable[[int], bytes],
        refresh_time: float = COOKIE_REFRESH_TIME,
    ) -> None:
        self._crypto = crypto
        self._random = random
        self._refresh_time = refresh_time
        self._mac1_key = crypto.hash(LABEL_MAC1 + local_public)
        self._cookie_key = crypto.hash(LABEL_COOKIE + local_public)
        self._secret = b""
        self._secret_set = float("-inf")

    def check_mac1(self, message: bytes | bytearray | memoryview) -> bool:
        end = len(message) - MAC_SIZE
        start = end - MAC_SIZE
        expected = self._crypto.mac(self._mac1_key, bytes(message[:start]))
        return hmac.compare_digest(expected, bytes(message[start:end]))

    def check_mac2(
        self, message: bytes | bytearray | memoryview, source: bytes, now: float
    ) -> bool:
        if now - self._secret_set > self._refresh_time:
            return False
        start = len(message) - MAC_SIZE
        cookie = self._crypto.mac(self._secret, source)
        expected = self._crypto.mac(cookie, bytes(message[:start]))
        return hmac.compare_digest(expected, bytes(message[start:]))

    def create_reply(
        self, message: bytes | bytearray | memoryview, receiver: int, source: bytes, now: float
    ) -> bytes:
        """The cookie reply to ``message`` (an initiation or response from ``source``)."""
        if now - self._secret_set > self._refresh_time:
            self._secret = self._random(32)
            self._secret_set = now
        cookie = self._crypto.mac(self._secret, source)
        nonce = self._random(24)
        end = len(message) - MAC_SIZE
        mac1 = bytes(message[end - MAC_SIZE : end])
        sealed = self._crypto.xseal(self._cookie_key, nonce, cookie, mac1)
        return COOKIE_REPLY.pack(MESSAGE_COOKIE_REPLY, receiver, nonce, sealed)


class CookieGenerator:
    """Initiator side, one per peer: writes mac1/mac2 and takes cookies from replies."""

    __slots__ = (
        "_cookie",
        "_cookie_key",
        "_cookie_set",
        "_crypto",
        "_last_mac1",
        "_mac1_key",
        "_refresh_time",
    )

    def __init__(
        self, crypto: CryptoBackend, remote_public: bytes, refresh_time: float = COOKIE_REFRESH_TIME
    ) -> None:
        self._crypto = crypto
        self._refresh_time = refresh_time
        self._mac1_key = crypto.hash(LABEL_MAC1 + remote_public)
        self._cookie_key = crypto.hash(LABEL_COOKIE + remote_public)
        self._cookie = b""
        self._cookie_set = float("-inf")
        self._last_mac1: bytes | None = None

    def add_macs(self, message: bytearray, now: float) -> None:
        """Fill in mac1, and mac2 when we hold a fresh cookie (zeros otherwise)."""
        end = len(message) - MAC_SIZE
        start = end - MAC_SIZE
        mac1 = self._crypto.mac(self._mac1_key, bytes(message[:start]))
        message[start:end] = mac1
        self._last_mac1 = mac1
        if self._cookie and now - self._cookie_set <= self._refresh_time:
            message[end:] = self._crypto.mac(self._cookie, bytes(message[:end]))
        else:
            message[end:] = _ZERO_MAC

    def consume_reply(self, message: bytes | bytearray | memoryview, now: float) -> bool:
        """Take the cookie from a reply to our last message; ``False`` if it doesn't verify."""
        if self._last_mac1 is None:
            return False
        _, _, nonce, sealed = COOKIE_REPLY.unpack_from(message, 0)
        try:
            cookie = self._crypto.xopen(self._cookie_key, nonce, sealed, self._last_mac1)
        except DecryptionFailed:
            return False
        self._cookie = cookie
        self._cookie_set = now
        return True

    @property
    def has_cookie(self) -> bool:
        return bool(self._cookie)


class LoadMonitor:
    """Decides when the device is "under load" and must answer handshakes with cookies.

    Under load means: at least ``threshold`` handshake messages (initiations and responses,
    counted before any check) arrived within the current one-second window, or did within the
    last UNDER_LOAD_AFTER_TIME. ``threshold=0`` keeps the device always under load (tests).
    This is the sans-IO counterpart of wireguard-go's "128 queued handshakes, held for 1 s".
    """

    __slots__ = ("_count", "_threshold", "_until", "_window_start")

    def __init__(self, threshold: int) -> None:
        self._threshold = threshold
        self._window_start = float("-inf")
        self._count = 0
        self._until = float("-inf")

    def observe(self, handshakes: int, now: float) -> bool:
        """Count ``handshakes`` arriving at ``now``; return whether the device is under load."""
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._count = 0
        self._count += handshakes
        if self._count >= self._threshold:
            self._until = now + UNDER_LOAD_AFTER_TIME
        return now < self._until


class RateLimiter:
    """Token bucket per source address (IPv6 by /64): HANDSHAKES_PER_SECOND, burst
    HANDSHAKE_BURST, as wireguard-go's ratelimiter.

    Bounded: at most ``max_entries`` sources are tracked (a new source beyond that is refused,
    as the Linux kernel's ratelimiter does), and sources whose bucket is full again are
    forgotten by :meth:`collect`. Refusals are counted per source until
    :meth:`take_refusals`, which is how a flooding source is found
    (:class:`~tunplug.wireguard.flood.FloodGuard`).
    """

    __slots__ = ("_burst", "_entries", "_max_entries", "_rate", "_refused")

    def __init__(
        self,
        rate: float = HANDSHAKES_PER_SECOND,
        burst: int = HANDSHAKE_BURST,
        max_entries: int = RATE_LIMITER_MAX_ENTRIES,
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._max_entries = max_entries
        # key -> [tokens, last update]
        self._entries: dict[bytes | str, list[float]] = {}
        self._refused: dict[bytes | str, int] = {}

    def allow(self, host: str, now: float) -> bool:
        key = _limiter_key(host)
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self._max_entries:
                self._refused[key] = self._refused.get(key, 0) + 1
                return False
            self._entries[key] = [self._burst - 1, now]
            return True
        tokens = min(self._burst, entry[0] + (now - entry[1]) * self._rate)
        entry[1] = now
        if tokens >= 1.0 - 1e-9:
            entry[0] = tokens - 1.0
            return True
        entry[0] = tokens
        self._refused[key] = self._refused.get(key, 0) + 1
        return False

    def collect(self, now: float) -> None:
        """Forget sources idle long enough to have a full bucket again."""
        refill = self._burst / self._rate
        stale = [k for k, (_, last) in self._entries.items() if now - last >= refill]
        for key in stale:
            del self._entries[key]

    def take_refusals(self) -> dict[bytes | str, int]:
        """Refusals per source since the last call (keyed as :meth:`allow` keys sources)."""
        refused, self._refused = self._refused, {}
        return refused

    def __len__(self) -> int:
        return len(self._entries)


def _limiter_key(host: str) -> bytes | str:
    """A source's key: the dotted IPv4 text as it is (cheap: no parsing per handshake), the
    packed IPv4 of an IPv4-mapped IPv6 address, the first 8 bytes (/64) of another IPv6
    address, or the text itself when it is no address."""
    if ":" not in host:
        return host
    try:
        address = ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped.packed
        return address.packed[:8]
    return address.packed
