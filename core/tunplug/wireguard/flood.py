"""Which sources flood us with handshake messages, so that the kernel can drop them.

Who calls it: :class:`tunplug.wireguard.WireGuardDevice` (:meth:`handshake_floods`), whose engine
hands the result to the UDP transport's socket filter (:mod:`tunplug.socket_filter`) about once a
second. The rate limiter answers "may this handshake go on?" per message; this answers "which
sources are so far over their rate that even looking at their handshakes is too much?":

- a source refused FLOOD_REFUSALS_PER_SECOND times a second or more is blocked for
  FLOOD_BLOCK_TIME: from then on the filter drops its handshake and cookie messages in the
  kernel (its transport data still passes: a blocked peer's tunnel keeps working);
- the filter still lets one in FLOOD_SAMPLE_ONE_IN of a blocked source's handshake messages
  through, at random, so its refusals, scaled back up, show whether the flood goes on: the block
  is renewed while it does and lifted FLOOD_BLOCK_TIME after it stopped;
- at most FLOOD_MAX_BLOCKED sources are blocked, the heaviest first. A flood from more sources
  than that (spoofed addresses) is left to the rate limiter and the cookie replies.

Sources are IPv4 addresses (4 bytes) or IPv6 /64 prefixes (8 bytes), as the rate limiter groups
them. Pure logic, no I/O: tested in ``tests/core/wireguard/test_flood.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address

from tunplug.wireguard.constants import (
    FLOOD_BLOCK_TIME,
    FLOOD_MAX_BLOCKED,
    FLOOD_REFUSALS_PER_SECOND,
    FLOOD_SAMPLE_ONE_IN,
)


class FloodGuard:
    """Turns the rate limiter's refusals into the set of sources to block."""

    __slots__ = ("_blocked", "_hold", "_last", "_max", "_sample", "_threshold")

    def __init__(
        self,
        threshold: float = FLOOD_REFUSALS_PER_SECOND,
        hold: float = FLOOD_BLOCK_TIME,
        sample_one_in: int = FLOOD_SAMPLE_ONE_IN,
        max_blocked: int = FLOOD_MAX_BLOCKED,
    ) -> None:
        self._threshold = threshold
        self._hold = hold
        self._sample = sample_one_in
        self._max = max_blocked
        self._blocked: dict[bytes, float] = {}  # source -> blocked until
        self._last: float | None = None

    @property
    def blocked(self) -> frozenset[bytes]:
        return frozenset(self._blocked)

    @property
    def sample_one_in(self) -> int:
        return self._sample

    def update(self, refusals: Mapping[bytes | str, int], now: float) -> frozenset[bytes] | None:
        """Account the refusals since the last update; return the blocked set if it changed."""
        elapsed = 1.0 if self._last is None else max(now - self._last, 1e-3)
        self._last = now
        before = frozenset(self._blocked)
        rates: dict[bytes, float] = {}
        for key, count in refusals.items():
            source = _packed(key)
            if source is None:
                continue
            scale = self._sample if source in self._blocked else 1
            rates[source] = rates.get(source, 0.0) + count * scale / elapsed
        for source, rate in rates.items():
            if rate >= self._threshold:
                self._blocked[source] = now + self._hold
        for source in [s for s, until in self._blocked.items() if until <= now]:
            del self._blocked[source]
        if len(self._blocked) > self._max:
            heaviest = sorted(self._blocked, key=lambda s: rates.get(s, 0.0), reverse=True)
            self._blocked = {s: self._blocked[s] for s in heaviest[: self._max]}
        after = frozenset(self._blocked)
        return None if after == before else after


def _packed(key: bytes | str) -> bytes | None:
    """The rate limiter's key as bytes: IPv4 text -> 4 bytes; bytes (4 or 8) as they are."""
    if isinstance(key, bytes):
        return key if len(key) in (4, 8) else None
    try:
        return IPv4Address(key).packed
    except ValueError:
        return None
