"""Replay protection for transport counters: a sliding bitmap window (RFC 6479 semantics).

Who calls it: :mod:`tunplug.wireguard.device`, once per authenticated transport packet (the
check comes after the AEAD tag verified, so forged packets cannot move the window). The window
is one Python integer used as a bitmap (bit ``i`` = counter ``last - i`` seen), which keeps the
per-packet work to a couple of C-level integer operations. It accepts any counter up to
:data:`~tunplug.wireguard.constants.REPLAY_WINDOW_SIZE` behind the highest one seen, as
wireguard-go's 128 x 64-bit ring does.
"""

from __future__ import annotations

from tunplug.wireguard.constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW_SIZE


class ReplayWindow:
    """Accepts each counter at most once, and none too far behind the newest."""

    __slots__ = ("_bitmap", "_last", "_limit", "_mask", "_size")

    def __init__(self, size: int = REPLAY_WINDOW_SIZE, limit: int = REJECT_AFTER_MESSAGES) -> None:
        self._size = size
        self._mask = (1 << (size + 1)) - 1
        self._limit = limit
        self._last = -1
        self._bitmap = 0

    def check(self, counter: int) -> bool:
        """Record ``counter`` and return ``True`` if it is fresh; ``False`` for a replay."""
        if counter >= self._limit:
            return False
        last = self._last
        if counter > last:
            shift = counter - last
            self._bitmap = ((self._bitmap << shift) | 1) & self._mask if shift <= self._size else 1
            self._last = counter
            return True
        behind = last - counter
        if behind > self._size:
            return False
        bit = 1 << behind
        if self._bitmap & bit:
            return False
        self._bitmap |= bit
        return True

    @property
    def last(self) -> int:
        """The highest counter accepted so far (-1 before the first)."""
        return self._last
