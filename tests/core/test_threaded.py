"""tunplug.threaded: the base a third-party threaded backend builds on, driven by a toy backend.

The toy device is a :class:`queue.Queue` the test fills (the "kernel"); a receive thread
drains it into the inbound channel, and ``send`` goes through one :class:`Outbound` channel to
a writer thread that appends to a list. ``linux-mq`` and ``wintun`` run the same base through
their own tests and the contract suite.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from typing import Self

import anyio
import pytest

from tunplug.exceptions import BackendUnavailable, ClosedResource, TunError
from tunplug.threaded import Outbound, ThreadedTun
from tunplug.tun import Packet, TunOptions

pytestmark = pytest.mark.anyio

STOP = b""  # what the test (or _wake_threads) puts in the toy device to stop the reader


class ToyTun(ThreadedTun):
    backend_name = "toy"
    device_kind = "toy device"

    def __init__(self, *, options: TunOptions, start: bool = True) -> None:
        super().__init__(name="toy0", options=options, inbound_batches=2)
        self.kernel: queue.Queue[bytes] = queue.Queue()
        self.written: list[bytes] = []
        self.released_in: list[str] = []
        self._outbound: Outbound = self._add_outbound(2 * self.batch_size)
        self._add_thread("toy-toy0-rx", self._receive_loop)
        self._add_thread("toy-toy0-tx", self._write_loop)
        if start:
            self._start_threads()

    @classmethod
    async def create(cls, options: TunOptions) -> Self:
        return cls(options=options)

    async def send_ready(self) -> None:
        self._check_open()
        self._start_threads()
        await self._outbound.wait_room(self.batch_size, self._closed_error)

    def send(self, packets: Sequence[Packet]) -> None:
        self._check_open()
        self._start_threads()
        self._outbound.put([bytes(p) for p in packets], self._closed_error)

    def _receive_loop(self) -> None:
        while True:
            packet = self.kernel.get()
            if packet == STOP:
                return
            if packet == b"broken":
                self._fail(TunError("the toy device broke", 5))
                return
            batch = [packet]
            while len(batch) < self.batch_size and not self.kernel.empty():
                more = self.kernel.get()
                if more == STOP:
                    self._inbound.put(batch)
                    return
                batch.append(more)
            if not self._inbound.put(batch):
                return

    def _write_loop(self) -> None:
        while (chunk := self._outbound.take()) is not None:
            self.written.extend(chunk)
            self._outbound.done(len(chunk))

    def _wake_threads(self) -> None:
        self.kernel.put(STOP)

    def _release(self) -> None:
        self.released_in.append(threading.current_thread().name)
        assert self._join_threads() == []


async def test_packets_read_by_a_thread_come_out_of_recv_many_in_order():
    async with ToyTun(options=TunOptions(batch_size=4)) as tun:
        for n in range(6):
            tun.kernel.put(bytes([n]))
        got: list[Packet] = []
        with anyio.fail_after(5):
            while len(got) < 6:
                batch = await tun.recv_many()
                assert 1 <= len(batch) <= 4
                got.extend(batch)
        assert got == [bytes([n]) for n in range(6)]
        with pytest.raises(ValueError, match="max_packets"):
            await tun.recv_many(5)


async def test_sends_reach_the_writer_thread():
    async with ToyTun(options=TunOptions(batch_size=4)) as tun:
        for n in range(3):
            await tun.send_ready()
            tun.send([bytes([n]), bytes([n + 10])])
        with anyio.fail_after(5):  # room for the whole channel: the writer has taken all
            await tun._outbound.wait_room(2 * tun.batch_size, tun._closed_error)
        assert tun.written == [b"\x00", b"\x0a", b"\x01", b"\x0b", b"\x02", b"\x0c"]


async def test_a_failure_from_a_thread_comes_after_what_was_read_and_fails_every_call():
    async with ToyTun(options=TunOptions(batch_size=4)) as tun:
        tun.kernel.put(b"first")
        with anyio.fail_after(5):
            assert await tun.recv_many() == [b"first"]
        tun.kernel.put(b"broken")
        with anyio.fail_after(5), pytest.raises(TunError, match="broke") as first:
            await tun.recv_many()
        with pytest.raises(TunError, match="broke") as second:
            tun.send([b"x"])
        with pytest.raises(TunError, match="broke"):
            await tun.send_ready()
    # Fresh copies, so that tracebacks do not pile up on one object; errno kept.
    assert first.value is not second.value
    assert first.value.errno == second.value.errno == 5


async def test_aclose_wakes_a_waiting_receiver_releases_once_in_a_worker_thread():
    tun = ToyTun(options=TunOptions())
    outcome: list[BaseException] = []

    async def receive() -> None:
        try:
            await tun.recv_many()
        except ClosedResource as exc:
            outcome.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(receive)
            await anyio.sleep(0.01)
            await tun.aclose()
    await tun.aclose()  # idempotent
    assert [str(exc) for exc in outcome] == ["toy device 'toy0' is closed"]
    assert len(tun.released_in) == 1
    assert tun.released_in[0] != threading.current_thread().name
    assert not [t for t in threading.enumerate() if t.name.startswith("toy-toy0-")]
    with pytest.raises(ClosedResource, match="toy device 'toy0' is closed"):
        tun.send([b"x"])
    tun._fail(TunError("after the close"))  # a thread's error during shutdown is ignored
    with pytest.raises(ClosedResource):
        await tun.recv_many()


async def test_threads_start_once_at_first_use_and_never_after_a_close():
    tun = ToyTun(options=TunOptions(), start=False)
    assert not [t for t in threading.enumerate() if t.name.startswith("toy-toy0-")]
    tun.kernel.put(b"late")
    with anyio.fail_after(5):
        assert await tun.recv_many() == [b"late"]
    assert sorted(t.name for t in threading.enumerate() if t.name.startswith("toy-toy0-")) == [
        "toy-toy0-rx",
        "toy-toy0-tx",
    ]
    await tun.aclose()

    never = ToyTun(options=TunOptions(), start=False)
    await never.aclose()
    assert never.released_in  # released although no thread ever ran
    with pytest.raises(ClosedResource):
        never._start_threads()


async def test_a_stuck_thread_is_reported_by_name():
    tun = ToyTun(options=TunOptions(), start=False)
    release = threading.Event()
    tun._threads.clear()
    tun._add_thread("toy-toy0-stuck", release.wait)
    tun._start_threads()
    assert tun._join_threads(timeout=0.01) == ["toy-toy0-stuck"]
    release.set()
    assert tun._join_threads() == []


def test_the_base_needs_a_running_asyncio_loop_and_names_the_backend():
    with pytest.raises(BackendUnavailable, match="the toy backend needs a running asyncio"):
        ToyTun(options=TunOptions())
