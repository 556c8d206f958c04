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
- at most FLOOD_MAX_BLOCKED sources are blocked, the heaviest first;
- a flood spread over more sources than that (spoofed addresses, each sending a few messages,
  never over its own rate) shows as SPREAD_FLOOD_PER_SECOND handshake messages a second or more
  from sources that are not blocked: then only a random one in ``others_one_in`` of them passes
  the filter, chosen so that about SPREAD_FLOOD_ADMITTED_PER_SECOND get through, a power of two
  (the estimate scales what arrives back up by the sample in force). Transport data is never
  sampled, so established sessions keep working; a new peer's handshake then needs luck
  (it retries every 5 s), which is the price of keeping the data path alive. Lifted, like a
  block, FLOOD_BLOCK_TIME after the flood was last seen.

Sources are IPv4 addresses (4 bytes) or IPv6 /64 prefixes (8 bytes), as the rate limiter groups
them. Pure logic, no I/O: tested in ``tests/core/wireguard/test_flood.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address

from tunplug.wireguard.constants import (
    FLOOD_BLOCK_TIME,
    FLOOD_MAX_BLOCKED,
    FLOOD_REFUSALS_PER_SECOND,
    FLOOD_SAMPLE_ONE_IN,
    HANDSHAKES_PER_SECOND,
    SPREAD_FLOOD_ADMITTED_PER_SECOND,
    SPREAD_FLOOD_PER_SECOND,
)


@dataclass(frozen=True, slots=True)
class FloodFilter:
    """What the socket filter should do with handshake and cookie messages: drop those of
    ``blocked`` sources but one in ``sample_one_in``, and let one in ``others_one_in`` of
    everyone else's through (1: all). Transport data always passes."""

    blocked: frozenset[bytes] = frozenset()
    sample_one_in: int = FLOOD_SAMPLE_ONE_IN
    others_one_in: int = 1

    @property
    def active(self) -> bool:
        return bool(self.blocked) or self.others_one_in > 1


class FloodGuard:
    """Turns the rate limiter's refusals into the set of sources to block."""

    __slots__ = (
        "_admitted",
        "_blocked",
        "_hold",
        "_last",
        "_max",
        "_others",
        "_others_until",
        "_sample",
        "_spread",
        "_threshold",
    )

    def __init__(
        self,
        threshold: float = FLOOD_REFUSALS_PER_SECOND,
        hold: float = FLOOD_BLOCK_TIME,
        sample_one_in: int = FLOOD_SAMPLE_ONE_IN,
        max_blocked: int = FLOOD_MAX_BLOCKED,
        spread_threshold: float = SPREAD_FLOOD_PER_SECOND,
        spread_admitted: float = SPREAD_FLOOD_ADMITTED_PER_SECOND,
    ) -> None:
        self._threshold = threshold
        self._hold = hold
        self._sample = sample_one_in
        self._max = max_blocked
        self._spread = spread_threshold
        self._admitted = spread_admitted
        self._blocked: dict[bytes, float] = {}  # source -> blocked until
        self._others = 1  # one in this many of the other sources' handshakes passes
        self._others_until = 0.0
        self._last: float | None = None

    @property
    def current(self) -> FloodFilter:
        return FloodFilter(frozenset(self._blocked), self._sample, self._others)

    def update(
        self, refusals: Mapping[bytes | str, int], handshakes: int, now: float
    ) -> FloodFilter | None:
        """Account the rate limiter's refusals and the handshake messages that arrived
        (``handshakes``, all sources) since the last update; return the filter if it changed."""
        elapsed = 1.0 if self._last is None else max(now - self._last, 1e-3)
        self._last = now
        before = self.current
        rates: dict[bytes, float] = {}
        raw: dict[bytes, int] = {}
        for key, count in refusals.items():
            source = _packed(key)
            if source is None:
                continue
            raw[source] = raw.get(source, 0) + count
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
        # The other sources' messages: all that arrived but what the blocked sources sent (their
        # refusals, and at most their allowed rate admitted); scaled back up by the sample.
        from_blocked = sum(raw.get(source, 0) for source in self._blocked) + (
            len(self._blocked) * HANDSHAKES_PER_SECOND * elapsed
        )
        estimate = max(0.0, handshakes - from_blocked) * self._others / elapsed
        if estimate >= self._spread:
            wanted = 1 << math.ceil(math.log2(max(2.0, estimate / self._admitted)))
            # Kept within a factor of two (the estimate of a sampled flood is noisy): the filter
            # and the log change only when the flood really does.
            if not self._others // 2 <= wanted <= self._others * 2:
                self._others = wanted
            self._others_until = now + self._hold
        elif self._others > 1 and self._others_until <= now:
            self._others = 1
        after = self.current
        return None if after == before else after


def _packed(key: bytes | str) -> bytes | None:
    """The rate limiter's key as bytes: IPv4 text -> 4 bytes; bytes (4 or 8) as they are."""
    if isinstance(key, bytes):
        return key if len(key) in (4, 8) else None
    try:
        return IPv4Address(key).packed
    except ValueError:
        return None
