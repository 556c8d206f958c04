"""The device's timers (wireguard-go's ``timers.go``, the expiry side): what runs at ``tick``.

Who calls it: :class:`tunplug.wireguard.WireGuardDevice`, of which :class:`TimersMixin` is a
part; the engine calls :meth:`~TimersMixin.tick` at :meth:`~TimersMixin.next_deadline`, and
:meth:`~TimersMixin.handshake_floods` about once a second. The deadlines of a peer and the
events that arm them are :class:`tunplug.wireguard.timers.PeerTimers`; this module runs the
actions of those that passed: retransmitting a handshake or giving up, keepalives, rekeying and
erasing keys.
"""

from __future__ import annotations

from tunplug.wireguard.flood import FloodFilter, FloodGuard
from tunplug.wireguard.send import SendMixin
from tunplug.wireguard.state import Output
from tunplug.wireguard.timers import INF


class TimersMixin(SendMixin):
    """:meth:`tick`, :meth:`next_deadline`, and the handshake rate limiter's periodic report."""

    #: (``_version`` when computed, the deadline): :meth:`next_deadline`'s cache.
    _deadline_cache: tuple[int, float]
    #: When the rate limiter last forgot its idle sources.
    _last_collect: float
    _flood: FloodGuard

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
