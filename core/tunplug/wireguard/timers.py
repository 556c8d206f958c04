"""WireGuard's per-peer timers (whitepaper section 6), as deadlines on a monotonic clock.

Who calls it: :class:`tunplug.wireguard.WireGuardDevice`, which reports events to a peer's
:class:`PeerTimers` (``data_sent``, ``handshake_complete``...) and, in ``tick``, runs the
expiry actions of the deadlines that have passed. A deadline of ``inf`` is not armed. The event
names and their effects follow wireguard-go's ``timers.go`` so the two behave alike:

==========================  ==========================================================
retransmit_handshake        REKEY_TIMEOUT + jitter after an initiation; retry or give up
send_keepalive              KEEPALIVE_TIMEOUT after data arrives with nothing sent back
new_handshake               KEEPALIVE_TIMEOUT + REKEY_TIMEOUT after data is sent unanswered
zero_key_material           3 x REJECT_AFTER_TIME after the last session was derived
persistent_keepalive        the configured interval after any authenticated packet
==========================  ==========================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tunplug.wireguard.constants import (
    COOKIE_REFRESH_TIME,
    KEEPALIVE_TIMEOUT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
)

INF = math.inf


@dataclass(frozen=True, slots=True)
class Timing:
    """The protocol's times and message limits; defaults are the whitepaper's.

    Tests and end-to-end checks may shorten them (e.g. ``Timing(rekey_after_time=3)``); both
    sides of a tunnel need not agree, as with ``wireguard-go``'s build-time constants.
    """

    rekey_after_time: float = REKEY_AFTER_TIME
    reject_after_time: float = REJECT_AFTER_TIME
    rekey_attempt_time: float = REKEY_ATTEMPT_TIME
    rekey_timeout: float = REKEY_TIMEOUT
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    cookie_refresh_time: float = COOKIE_REFRESH_TIME
    rekey_timeout_jitter: float = REKEY_TIMEOUT_JITTER_MAX
    rekey_after_messages: int = REKEY_AFTER_MESSAGES
    reject_after_messages: int = REJECT_AFTER_MESSAGES

    @property
    def max_timer_handshakes(self) -> int:
        """Retransmissions before giving up: REKEY_ATTEMPT_TIME / REKEY_TIMEOUT (18)."""
        return int(self.rekey_attempt_time / self.rekey_timeout)

    @property
    def zero_key_material_after(self) -> float:
        return 3 * self.reject_after_time

    @property
    def last_minute_rekey_age(self) -> float:
        """Key age from which a received packet makes the initiator rekey (165 s)."""
        return self.reject_after_time - self.keepalive_timeout - self.rekey_timeout


class PeerTimers:
    """The five deadlines of one peer and the flags that go with them."""

    __slots__ = (
        "handshake_attempts",
        "need_another_keepalive",
        "new_handshake",
        "persistent_keepalive",
        "persistent_keepalive_interval",
        "retransmit_handshake",
        "send_keepalive",
        "sent_last_minute_handshake",
        "timing",
        "zero_key_material",
    )

    def __init__(self, timing: Timing, persistent_keepalive_interval: int | None) -> None:
        self.timing = timing
        self.persistent_keepalive_interval = persistent_keepalive_interval or 0
        self.retransmit_handshake = INF
        self.send_keepalive = INF
        self.new_handshake = INF
        self.zero_key_material = INF
        self.persistent_keepalive = INF
        self.handshake_attempts = 0
        self.need_another_keepalive = False
        self.sent_last_minute_handshake = False

    def next_deadline(self) -> float:
        return min(
            self.retransmit_handshake,
            self.send_keepalive,
            self.new_handshake,
            self.zero_key_material,
            self.persistent_keepalive,
        )

    # -- events (wireguard-go timers.go names) -----------------------------------------------
    def data_sent(self, now: float, jitter: float) -> None:
        """An authenticated data packet left: expect an answer within 15 s."""
        if self.new_handshake == INF:
            timing = self.timing
            self.new_handshake = now + timing.keepalive_timeout + timing.rekey_timeout + jitter

    def data_received(self, now: float, count: int) -> None:
        """``count`` authenticated data packets arrived: answer within KEEPALIVE_TIMEOUT."""
        if self.send_keepalive == INF:
            self.send_keepalive = now + self.timing.keepalive_timeout
            if count > 1:
                self.need_another_keepalive = True
        else:
            self.need_another_keepalive = True

    def any_authenticated_packet_sent(self) -> None:
        self.send_keepalive = INF

    def any_authenticated_packet_received(self) -> None:
        self.new_handshake = INF

    def any_authenticated_packet_traversal(self, now: float) -> None:
        if self.persistent_keepalive_interval > 0:
            self.persistent_keepalive = now + self.persistent_keepalive_interval

    def handshake_initiated(self, now: float, jitter: float) -> None:
        self.retransmit_handshake = now + self.timing.rekey_timeout + jitter

    def handshake_complete(self) -> None:
        self.retransmit_handshake = INF
        self.handshake_attempts = 0
        self.sent_last_minute_handshake = False

    def session_derived(self, now: float) -> None:
        self.zero_key_material = now + self.timing.zero_key_material_after

    def stop_all(self) -> None:
        self.retransmit_handshake = INF
        self.send_keepalive = INF
        self.new_handshake = INF
        self.zero_key_material = INF
        self.persistent_keepalive = INF
