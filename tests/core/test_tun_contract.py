"""What is particular to FakeTun: exact batch sizes, oversize drops, names, its capacity.

The Tun contract itself (waiting, ordering, limits, backpressure, closing) is checked on every
backend, FakeTun included, by the shared suite in ``tests/contract``.
"""

from __future__ import annotations

import anyio
import pytest

from tunplug.exceptions import BusyResource
from tunplug.testing import FakeTun
from tunplug.tun import TunOptions

pytestmark = pytest.mark.anyio


def packets(n: int, size: int = 60) -> list[bytes]:
    return [bytes([0x45]) + i.to_bytes(4, "big") + bytes(size - 5) for i in range(n)]


async def test_recv_many_returns_at_most_max_and_keeps_order():
    tun = FakeTun(TunOptions(batch_size=100))
    await tun.inject(packets(250))
    sizes = [len(await tun.recv_many()) for _ in range(3)]
    assert sizes == [100, 100, 50]
    await tun.inject(packets(5))
    assert await tun.recv_many(2) == packets(2)
    with pytest.raises(ValueError, match="max_packets"):
        await tun.recv_many(101)


async def test_send_refuses_more_than_a_batch_and_drops_oversize_packets():
    tun = FakeTun(TunOptions(batch_size=4, mtu=1280))
    with pytest.raises(ValueError, match="batch size"):
        tun.send(packets(5))
    tun.send([bytes(1281), bytes(100)])
    assert tun.dropped_oversize == 1
    assert tun.take_all() == [bytes(100)]


async def test_context_manager_closes_and_frees_the_name():
    async with await FakeTun.create(TunOptions(name="ctx0")) as tun:
        assert FakeTun.opened["ctx0"] is tun
        with pytest.raises(BusyResource):
            await FakeTun.create(TunOptions(name="ctx0"))
    assert tun.closed
    assert "ctx0" not in FakeTun.opened


def test_options_reject_nonsense():
    with pytest.raises(ValueError, match="mtu"):
        TunOptions(mtu=100)
    with pytest.raises(ValueError, match="queues"):
        TunOptions(queues=0)


async def test_inject_beyond_capacity_completes_while_a_reader_drains():
    tun = FakeTun(TunOptions(batch_size=10), capacity=20)
    received: list[bytes] = []

    async def reader() -> None:
        while len(received) < 100:
            received.extend(await tun.recv_many())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(reader)
            await anyio.sleep(0.01)  # the reader is waiting on an empty device
            await tun.inject(packets(100))
    assert received == packets(100)
