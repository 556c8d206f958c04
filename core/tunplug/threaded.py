"""A base for TUN backends driven by I/O threads, and the bounded channels those threads use.

Who uses it: backends whose device is read (and possibly written) by threads of their own,
because a blocking call per packet would stall the event loop or the device offers nothing the
loop can wait on: tunplug's ``linux-mq`` (a reader and a writer thread per queue) and ``wintun``
(a receive thread), and any third-party backend built the same way.

- :class:`ThreadedTun` is a :class:`~tunplug.tun.Tun` that owns what such backends share: the
  closed and failed states, the :class:`Inbound` channel and :meth:`~ThreadedTun.recv_many`
  over it, the I/O threads (created, started once, joined with a timeout) and the order of
  :meth:`~ThreadedTun.aclose`. A subclass supplies the thread bodies, ``create``,
  ``send_ready``, ``send``, and how its threads are woken and its device released.
- :class:`Inbound` carries batches from reader threads to the event loop; :class:`Outbound`
  carries packets from the event loop to one writer thread. Both are bounded: the thread side
  blocks on a :class:`threading.Condition`, the loop side awaits an :class:`asyncio.Event` that
  is set (through ``call_soon_threadsafe``) only when a task actually waits, so a hand-off
  usually costs one uncontended lock and no wake-up at all.
- :func:`running_asyncio_loop`: the channels wake the loop with ``call_soon_threadsafe``, so
  these backends run on anyio's asyncio backend only (trio is refused).

A sketch of a backend with one receive thread that writes from the event loop::

    class RingTun(ThreadedTun):
        backend_name = "ring"
        device_kind = "ring device"

        def __init__(self, ring: Ring, *, name: str, options: TunOptions) -> None:
            super().__init__(name=name, options=options, inbound_batches=4)
            self._ring = ring
            self._add_thread(f"ring-{name}-rx", self._receive_loop)
            self._start_threads()

        def _receive_loop(self) -> None:  # the receive thread
            while batch := self._ring.read_batch(self.batch_size):  # may block
                if not self._inbound.put(batch):
                    return  # the device was closed

        def _wake_threads(self) -> None:
            self._ring.interrupt()  # wakes read_batch(), which then returns nothing

        def _release(self) -> None:  # a worker thread, after the threads were told to stop
            if not self._join_threads():
                self._ring.close()

        async def send_ready(self) -> None: ...
        def send(self, packets: Sequence[Packet]) -> None: ...
        @classmethod
        async def create(cls, options: TunOptions) -> Self: ...
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from typing import ClassVar, Protocol

import anyio
import anyio.lowlevel

from tunplug.exceptions import BackendUnavailable, ClosedResource, TunError
from tunplug.tun import Packet, Tun, TunOptions

__all__ = [
    "JOIN_TIMEOUT_SECONDS",
    "Inbound",
    "Outbound",
    "ReadCounters",
    "ThreadedTun",
    "running_asyncio_loop",
]

#: How long :meth:`ThreadedTun._join_threads` waits for each thread by default.
JOIN_TIMEOUT_SECONDS = 5.0


def running_asyncio_loop(backend_name: str) -> asyncio.AbstractEventLoop:
    """The running asyncio event loop, which a threaded backend wakes from its threads.

    :raises ~tunplug.exceptions.BackendUnavailable: no asyncio loop runs in this thread (not
        called from async code, or anyio runs on trio); the message names ``backend_name``.
    """
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise BackendUnavailable(
            f"the {backend_name} backend needs a running asyncio event loop "
            "(anyio's asyncio backend)"
        ) from None


class ReadCounters(Protocol):
    """What :meth:`Inbound.put` counts in: any object with these two attributes."""

    rx_packets: int
    rx_bytes: int


class _Waker:
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
    the closed and failed states that wake everybody.

    Create a channel in the event loop thread (``loop`` is that thread's running loop).
    :meth:`fail` and :meth:`close` may be called from any thread.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self._lock = threading.Lock()
        #: Where the I/O thread waits (for room to read into, or for packets to write).
        self._thread_wakeup = threading.Condition(self._lock)
        self._capacity = capacity
        self._closed = False
        self._failure: TunError | None = None
        self._waker = _Waker(loop)

    def fail(self, error: TunError) -> None:
        """Any thread: the device broke. The loop side raises (a copy of) the first ``error``
        once nothing deliverable is left; the thread side carries on until :meth:`close`."""
        with self._lock:
            if self._failure is None:
                self._failure = error
            if self._waker.waiting:
                self._waker.fire()

    def close(self) -> None:
        """Any thread, idempotent: wake every waiter; from now on the loop side raises the
        closed error and the thread side gets its "closed" answer."""
        with self._lock:
            self._closed = True
            self._discard_on_close()
            self._thread_wakeup.notify_all()
            if self._waker.waiting:
                self._waker.fire()

    def _discard_on_close(self) -> None:
        """Drop what a closed channel must not deliver (called under the lock)."""


class Inbound(_Channel):
    """Batches of packets from reader threads to :meth:`ThreadedTun.recv_many`.

    Holds at most ``capacity`` batches: a reader that finds it full blocks in :meth:`put`, so the
    device's own buffer fills and the device (the kernel, the driver) drops, never this
    process. Any number of reader threads may :meth:`put`; one event-loop task may :meth:`get`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        super().__init__(loop, capacity)
        self._batches: deque[list[bytes]] = deque()

    def put(self, batch: list[bytes], counters: ReadCounters | None = None) -> bool:
        """Reader thread: queue ``batch``, blocking while the channel is full.

        ``counters`` are updated under the lock, so a batch is counted before any consumer
        can see it. The channel owns ``batch`` from then on.

        :returns: ``False`` once the channel is closed (the batch is dropped): the reader
            should return.
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
        """Event loop: wait for packets, return up to ``max_packets``, merging small batches.

        Packets queued before a :meth:`fail` are still delivered; the failure is raised after.

        :raises ~tunplug.exceptions.ClosedResource: a copy of ``closed_error``, once closed.
        :raises ~tunplug.exceptions.TunError: a copy of the error given to :meth:`fail`.
        """
        while True:
            with self._lock:
                if self._closed:
                    raise _fresh(closed_error)
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
                    raise _fresh(self._failure)
                self._waker.arm()
            try:
                await self._waker.wait()
            finally:
                with self._lock:
                    self._waker.waiting = False


class Outbound(_Channel):
    """The bounded packet queue of one writer thread, filled from the event loop.

    ``capacity`` counts packets queued or still being written (taken but not :meth:`done`), so
    the bound covers both. One event-loop task puts and waits for room; one writer thread
    takes.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        super().__init__(loop, capacity)
        self._chunks: deque[list[bytes]] = deque()
        self._pending = 0
        self._wanted = 0

    def put(self, packets: list[bytes], closed_error: ClosedResource) -> int:
        """Event loop, never blocks: queue what fits of ``packets`` (the channel owns the list
        from then on; what does not fit is cut off it).

        :returns: how many packets did not fit and were dropped.
        :raises ~tunplug.exceptions.ClosedResource: a copy of ``closed_error``, once closed.
        :raises ~tunplug.exceptions.TunError: a copy of the error given to :meth:`fail`.
        """
        with self._lock:
            if self._closed:
                raise _fresh(closed_error)
            if self._failure is not None:
                raise _fresh(self._failure)
            dropped = max(0, len(packets) - (self._capacity - self._pending))
            if dropped:
                del packets[len(packets) - dropped :]
            if packets:
                self._chunks.append(packets)
                self._pending += len(packets)
                self._thread_wakeup.notify()
            return dropped

    async def wait_room(self, wanted: int, closed_error: ClosedResource) -> None:
        """Event loop: wait until ``wanted`` more packets fit.

        :raises ~tunplug.exceptions.ClosedResource: a copy of ``closed_error``, once closed.
        :raises ~tunplug.exceptions.TunError: a copy of the error given to :meth:`fail`.
        """
        while True:
            with self._lock:
                if self._closed:
                    raise _fresh(closed_error)
                if self._failure is not None:
                    raise _fresh(self._failure)
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
        """Writer thread: the next chunk of packets, blocking while there is none.

        :returns: ``None`` once the channel is closed: the writer should return.
        """
        with self._lock:
            while not self._chunks and not self._closed:
                self._thread_wakeup.wait()
            if self._closed:
                return None
            return self._chunks.popleft()

    def done(self, count: int) -> None:
        """Writer thread: ``count`` packets of a taken chunk are written (or dropped)."""
        with self._lock:
            self._pending -= count
            if self._waker.waiting and self._capacity - self._pending >= self._wanted:
                self._waker.fire()

    def _discard_on_close(self) -> None:
        self._chunks.clear()


class ThreadedTun(Tun):
    """A :class:`~tunplug.tun.Tun` whose device is read (and possibly written) by I/O threads.

    The base implements :meth:`recv_many` (over :attr:`_inbound`) and :meth:`aclose`; a
    subclass implements ``create``, ``send_ready``, ``send``, the thread bodies and
    :meth:`_release`, and may override :meth:`_wake_threads`.

    Construct it in the event loop thread: the constructor captures the running asyncio loop.
    A subclass's constructor calls ``super().__init__`` first, then adds its threads
    (:meth:`_add_thread`) and writer channels (:meth:`_add_outbound`), and starts the threads
    with :meth:`_start_threads` when the device should start carrying packets (at once, or
    lazily: :meth:`recv_many` starts them on first use).

    What a subclass uses, and from which thread:

    - :attr:`_inbound` (reader threads: :meth:`Inbound.put`).
    - :attr:`_closed`, read anywhere: set by :meth:`aclose` before anything is woken, so a
      thread that fails after it can tell a shutdown from a broken device.
    - :meth:`_check_open` (event loop), :meth:`_fail` (any thread).

    Errors: :meth:`recv_many` and :meth:`_check_open` raise a fresh copy of the closed error
    (:class:`~tunplug.exceptions.ClosedResource` naming :attr:`device_kind` and :attr:`name`)
    once closed, or of the first error given to :meth:`_fail`, so tracebacks never pile up on
    one shared exception object.

    :raises ~tunplug.exceptions.BackendUnavailable: (constructor) no asyncio loop is running.
    """

    #: What the closed error calls the device: ``"<device_kind> '<name>' is closed"``.
    device_kind: ClassVar[str] = "TUN device"

    def __init__(
        self, *, name: str, options: TunOptions, queues: int = 1, inbound_batches: int
    ) -> None:
        """``inbound_batches``: batches the readers may have waiting for the event loop before
        they block (the capacity of :attr:`_inbound`). ``queues`` sets :attr:`queues`."""
        self._loop = running_asyncio_loop(self.backend_name)
        self.name = name
        self.mtu = options.mtu
        self.queues = queues
        self.batch_size = options.batch_size
        self._closed = False
        self._closed_error = ClosedResource(f"{self.device_kind} {name!r} is closed")
        self._failure: TunError | None = None
        #: The channel from the reader threads to :meth:`recv_many`.
        self._inbound = Inbound(self._loop, inbound_batches)
        self._channels: list[Inbound | Outbound] = [self._inbound]
        self._threads: list[threading.Thread] = []
        self._threads_started = False

    # -- the Tun contract ---------------------------------------------------------------

    async def recv_many(self, max_packets: int | None = None) -> Sequence[Packet]:
        """Start the threads if they are not running yet, then wait for the readers' packets.

        Delivers what the readers queued before a failure, then raises it.
        """
        self._start_threads()
        max_packets = self.batch_limit(max_packets)
        # A checkpoint even when packets are ready, so a busy device cannot starve the loop.
        await anyio.lowlevel.checkpoint()
        return await self._inbound.get(max_packets, self._closed_error)

    async def aclose(self) -> None:
        """Mark the device closed, :meth:`_wake_threads`, close every channel (waking threads
        blocked on them), then run :meth:`_release` in a worker thread, shielded from
        cancellation so that a cancelled close still releases the device."""
        if self._closed:
            return
        self._closed = True
        self._wake_threads()
        for channel in self._channels:
            channel.close()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._release)

    # -- for subclasses ---------------------------------------------------------------------

    def _add_outbound(self, capacity: int) -> Outbound:
        """A new writer channel of ``capacity`` packets, failed and closed with the device.

        Event loop thread (normally the constructor).
        """
        channel = Outbound(self._loop, capacity)
        self._channels.append(channel)
        return channel

    def _add_thread(self, name: str, target: Callable[..., object], *args: object) -> None:
        """Create (not start) a daemon I/O thread running ``target(*args)``.

        Daemon, so that a device nobody closed never holds up the interpreter's exit;
        :meth:`aclose` stops and joins them.
        """
        self._threads.append(threading.Thread(target=target, args=args, name=name, daemon=True))

    def _start_threads(self) -> None:
        """Event loop: start the threads, once (later calls do nothing).

        :raises ~tunplug.exceptions.ClosedResource: closed before they ever started.
        :raises ~tunplug.exceptions.TunError: the device already failed.
        """
        if self._threads_started:
            return
        self._check_open()
        self._threads_started = True
        for thread in self._threads:
            thread.start()

    def _join_threads(self, timeout: float = JOIN_TIMEOUT_SECONDS) -> list[str]:
        """Worker thread (:meth:`_release`): wait up to ``timeout`` for each started thread.

        :returns: the names of the threads still running. While any runs, the device's
            resources must not be released (a thread could touch a reused descriptor or freed
            memory): leak them instead, the process exit releases them.
        """
        stuck = []
        for thread in self._threads if self._threads_started else ():
            thread.join(timeout)
            if thread.is_alive():
                stuck.append(thread.name)
        return stuck

    def _check_open(self) -> None:
        """Event loop: raise unless the device is open and working.

        :raises ~tunplug.exceptions.ClosedResource: the device is closed.
        :raises ~tunplug.exceptions.TunError: the device failed (see :meth:`_fail`).
        """
        if self._closed:
            raise _fresh(self._closed_error)
        if self._failure is not None:
            raise _fresh(self._failure)

    def _fail(self, error: TunError) -> None:
        """Any thread: the device broke. Every waiting and later call raises ``error`` (the
        first one given, if called again), after the packets already read are delivered.

        Ignored once the device is closed: an I/O error then is the shutdown's doing.
        """
        if self._closed:
            return
        if self._failure is None:
            self._failure = error
        for channel in self._channels:
            channel.fail(error)

    def _wake_threads(self) -> None:
        """Event loop, once, from :meth:`aclose`, before the channels close: wake the threads
        wherever they wait outside the channels (a stop pipe, an event), and drop loop-side
        state. The default does nothing."""

    @abstractmethod
    def _release(self) -> None:
        """Worker thread, once, from :meth:`aclose`, after the threads were told to stop: join
        them (:meth:`_join_threads`) and release the device. Log failures; never raise."""


def _fresh(error: TunError) -> TunError:
    """A new exception like ``error``: raising one shared object would pile up tracebacks."""
    return type(error)(str(error), error.errno)
