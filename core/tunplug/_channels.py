"""Bounded, thread-safe hand-off between a device's I/O threads and its event loop.

Who calls it: the TUN backends with I/O threads (``linux-mq``, ``wintun``). :class:`Inbound`
carries batches from the reader threads to ``recv_many``; one :class:`Outbound` per queue
carries packets from ``send`` to that queue's writer thread. Both are bounded, and the thread
side blocks on a :class:`threading.Condition` while the loop side awaits an
:class:`asyncio.Event` that is set (through ``call_soon_threadsafe``) only when a task actually
waits, so a hand-off usually costs one uncontended lock and no wake-up at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from typing import Protocol

from tunplug.exceptions import ClosedResource, TunError


class ReadCounters(Protocol):
    """What :meth:`Inbound.put` counts in."""

    rx_packets: int
    rx_bytes: int


class Waker:
    """Wakes the one event-loop task waiting on a channel, from any thread.

    ``waiting`` and the calls to :meth:`arm` and :meth:`fire` are guarded by the owning
    channel's lock, so a wake-up can neither be lost nor sent when nobody waits.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._event = asyncio.Event()
        self.waiting = False

    def arm(self) -> None:
        self._event.clear()
        self.waiting = True

    def fire(self) -> None:
        self.waiting = False
        if threading.get_ident() == self._loop_thread:
            self._event.set()
            return
        # RuntimeError: the loop is closed, so nobody can be waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self) -> None:
        await self._event.wait()


class _Channel:
    """What both channels share: one lock, the I/O thread's condition, the loop's waker, and
    the closed/failed states that wake everybody."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self._lock = threading.Lock()
        #: Where the I/O thread waits (for room to read into, or for packets to write).
        self._thread_wakeup = threading.Condition(self._lock)
        self._capacity = capacity
        self._closed = False
        self._failure: TunError | None = None
        self._waker = Waker(loop)

    def fail(self, error: TunError) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = error
            if self._waker.waiting:
                self._waker.fire()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._discard_on_close()
            self._thread_wakeup.notify_all()
            if self._waker.waiting:
                self._waker.fire()

    def _discard_on_close(self) -> None:
        """Drop what a closed channel must not deliver (called under the lock)."""


class Inbound(_Channel):
    """Batches from the reader threads to :meth:`LinuxMultiQueueTun.recv_many`. Bounded."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        super().__init__(loop, capacity)
        self._batches: deque[list[bytes]] = deque()

    def put(self, batch: list[bytes], counters: ReadCounters | None = None) -> bool:
        """Reader side: queue ``batch``, blocking while full. ``False`` once closed.

        ``counters`` are updated under the lock, so a batch is counted before any consumer
        can see it.
        """
        size = sum(map(len, batch)) if counters is not None else 0
        with self._lock:
            while len(self._batches) >= self._capacity and not self._closed:
                self._thread_wakeup.wait()
            if self._closed:
                return False
            self._batches.append(batch)
            if counters is not None:
                counters.rx_packets += len(batch)
                counters.rx_bytes += size
            if self._waker.waiting:
                self._waker.fire()
            return True

    async def get(self, max_packets: int, closed_error: ClosedResource) -> list[bytes]:
        """Loop side: wait for packets, return up to ``max_packets``, merging small batches."""
        while True:
            with self._lock:
                if self._closed:
                    raise fresh(closed_error)
                if self._batches:
                    packets = self._batches.popleft()
                    if len(packets) > max_packets:
                        self._batches.appendleft(packets[max_packets:])
                        del packets[max_packets:]
                    else:
                        while self._batches and len(packets) + len(self._batches[0]) <= max_packets:
                            packets += self._batches.popleft()
                        self._thread_wakeup.notify_all()
                    return packets
                if self._failure is not None:
                    raise fresh(self._failure)
                self._waker.arm()
            try:
                await self._waker.wait()
            finally:
                with self._lock:
                    self._waker.waiting = False


class Outbound(_Channel):
    """The bounded packet queue of one writer thread, filled by :meth:`LinuxMultiQueueTun.send`.

    ``_pending`` counts packets queued or being written, so the bound covers both.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        super().__init__(loop, capacity)
        self._chunks: deque[list[bytes]] = deque()
        self._pending = 0
        self._wanted = 0

    def put(self, packets: list[bytes], closed_error: ClosedResource) -> int:
        """Loop side, never blocks: queue what fits and return how many packets did not."""
        with self._lock:
            if self._closed:
                raise fresh(closed_error)
            if self._failure is not None:
                raise fresh(self._failure)
            dropped = max(0, len(packets) - (self._capacity - self._pending))
            if dropped:
                del packets[len(packets) - dropped :]
            if packets:
                self._chunks.append(packets)
                self._pending += len(packets)
                self._thread_wakeup.notify()
            return dropped

    async def wait_room(self, wanted: int, closed_error: ClosedResource) -> None:
        """Loop side: wait until ``wanted`` more packets fit."""
        while True:
            with self._lock:
                if self._closed:
                    raise fresh(closed_error)
                if self._failure is not None:
                    raise fresh(self._failure)
                if self._capacity - self._pending >= wanted:
                    return
                self._wanted = wanted
                self._waker.arm()
            try:
                await self._waker.wait()
            finally:
                with self._lock:
                    self._waker.waiting = False

    def take(self) -> list[bytes] | None:
        """Writer side: the next chunk, blocking while empty. ``None`` once closed."""
        with self._lock:
            while not self._chunks and not self._closed:
                self._thread_wakeup.wait()
            if self._closed:
                return None
            return self._chunks.popleft()

    def done(self, count: int) -> None:
        """Writer side: ``count`` packets of a taken chunk are written (or dropped)."""
        with self._lock:
            self._pending -= count
            if self._waker.waiting and self._capacity - self._pending >= self._wanted:
                self._waker.fire()

    def _discard_on_close(self) -> None:
        self._chunks.clear()


def fresh(error: TunError) -> TunError:
    """A new exception like ``error``: raising one shared object would pile up tracebacks."""
    return type(error)(str(error), error.errno)
