"""Threads, batching, flow affinity, backpressure and shutdown of the linux-mq device (no root).

The device is driven over ``SOCK_SEQPACKET`` socket pairs instead of ``/dev/net/tun`` queues:
like a tun descriptor, each read and write carries one packet. The test holds the other ends
and plays the kernel.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from tunplug.exceptions import BackendUnavailable, ClosedResource
from tunplug.testing import packets as P
from tunplug.tun import TunOptions
from tunplug_tun_linux_mq import LinuxMultiQueueTun, device
from tunplug_tun_linux_mq.flow import flow_queue

pytestmark = pytest.mark.anyio


def tun_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("tun-sp0-"))


@asynccontextmanager
async def socket_device(
    queues: int = 1,
    batch_size: int = 8,
    small_buffers: bool = False,
    preload: list[list[bytes]] | None = None,
    vnet_hdr: bool = False,
) -> AsyncIterator[tuple[LinuxMultiQueueTun, list[socket.socket]]]:
    """A device over socket pairs; ``preload[i]`` is waiting in queue ``i`` before it starts."""
    peers: list[socket.socket] = []
    fds: list[int] = []
    for _ in range(queues):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if small_buffers:
            for s in (ours, theirs):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        theirs.settimeout(5)
        for packet in preload[len(peers)] if preload else ():
            theirs.send(packet)
        peers.append(theirs)
        fds.append(ours.detach())
    options = TunOptions(batch_size=batch_size, queues=queues)
    tun = LinuxMultiQueueTun(fds, name="sp0", options=options, vnet_hdr=vnet_hdr)
    try:
        yield tun, peers
    finally:
        await tun.aclose()
        for peer in peers:
            peer.close()


def numbered(n: int, start: int = 0, size: int = 100) -> list[bytes]:
    return [P.udp("10.0.0.1", "10.0.0.2", 1, 2, i.to_bytes(4, "big") + bytes(size)) for i in
            range(start, start + n)]  # fmt: skip


async def receive(peer: socket.socket, count: int) -> list[bytes]:
    return [await anyio.to_thread.run_sync(peer.recv, 65535) for _ in range(count)]


async def until(condition, within: float = 5.0) -> None:
    """Poll ``condition``: it reads counters the device's threads update, with no event."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.005)


async def test_packets_read_from_a_queue_arrive_in_batches_and_in_order():
    async with socket_device(batch_size=8) as (tun, (peer,)):
        sent = numbered(50)
        for packet in sent:
            peer.send(packet)
        got: list[bytes] = []
        while len(got) < len(sent):
            batch = await tun.recv_many()
            assert 1 <= len(batch) <= 8
            got.extend(batch)
        assert got == sent
        stats = tun.stats()
        assert stats["rx_packets"] == 50
        assert stats["rx_bytes"] == sum(map(len, sent))


async def test_recv_many_returns_at_most_max_packets_and_keeps_the_rest():
    # Waiting before the reader starts, so the reader hands over one batch of 8.
    async with socket_device(batch_size=8, preload=[numbered(8)]) as (tun, _):
        first = await tun.recv_many(3)
        assert first == numbered(3)
        rest: list[bytes] = []
        while len(rest) < 5:
            rest.extend(await tun.recv_many())
        assert rest == numbered(8)[3:]
        with pytest.raises(ValueError, match="max_packets"):
            await tun.recv_many(9)
        with pytest.raises(ValueError, match="max_packets"):
            await tun.recv_many(0)


async def test_batches_from_several_queues_are_merged_up_to_the_batch_size():
    preload = [numbered(3, start=10 * i) for i in range(4)]
    async with socket_device(queues=4, batch_size=64, preload=preload) as (tun, _):
        await tun.send_ready()  # the first use of the device starts its threads
        # The counters move once a batch is queued for the event loop.
        await until(lambda: tun.stats()["rx_packets"] == 12)
        got = await tun.recv_many()
        assert len(got) == 12  # four small batches handed over as one
        assert sorted(got) == sorted(p for batch in preload for p in batch)


async def test_each_flow_is_written_by_one_queue_in_order():
    flows, per_flow = 16, 40
    async with socket_device(queues=4, batch_size=64) as (tun, peers):
        packets = [
            P.udp("10.0.0.1", "10.0.0.2", 3000 + flow, 53, seq.to_bytes(2, "big"))
            for seq in range(per_flow)
            for flow in range(flows)
        ]
        for start in range(0, len(packets), 64):
            await tun.send_ready()
            tun.send(packets[start : start + 64])
        received = {i: [] for i in range(4)}  # type: dict[int, list[bytes]]
        for i, peer in enumerate(peers):
            expected = sum(1 for p in packets if flow_queue(p, 4) == i)
            received[i] = await receive(peer, expected)
    for queue, got in received.items():
        assert got == [p for p in packets if flow_queue(p, 4) == queue]
    assert sum(1 for got in received.values() if got) >= 2, "flows should spread over queues"
    assert tun.stats()["tx_packets"] == flows * per_flow


async def test_send_copies_buffers_the_caller_reuses():
    async with socket_device() as (tun, (peer,)):
        buffer = bytearray(numbered(1)[0])
        original = bytes(buffer)
        await tun.send_ready()
        tun.send([memoryview(buffer)])
        buffer[-1] ^= 0xFF
        assert await receive(peer, 1) == [original]


async def test_send_refuses_more_than_a_batch():
    async with socket_device(batch_size=4) as (tun, _):
        with pytest.raises(ValueError, match="at most 4"):
            tun.send(numbered(5))


async def test_send_ready_waits_while_writer_queues_are_full():
    async with socket_device(batch_size=4, small_buffers=True) as (tun, (peer,)):
        accepted = 0
        with anyio.move_on_after(0.5) as waiting:
            while True:
                await tun.send_ready()
                tun.send(numbered(4, start=accepted, size=1000))
                accepted += 4
        assert waiting.cancelled_caught, "send_ready never pushed back"
        # Bounded: the writer queue plus what the socket buffers hold, nothing more.
        assert accepted <= device.TX_QUEUE_BATCHES * 4 + 64

        # Without send_ready the device drops and counts instead of buffering.
        tun.send(numbered(4, size=1000))
        assert tun.stats()["drops"]["tx_queue_full"] >= 1

        got: list[bytes] = []

        async def drain() -> None:
            while len(got) < accepted:
                got.append(await anyio.to_thread.run_sync(peer.recv, 65535))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(drain)
            with anyio.fail_after(5):
                await tun.send_ready()  # room again once the kernel side reads
        assert got[: accepted - 4] == numbered(accepted, size=1000)[: accepted - 4]


async def test_a_slow_consumer_makes_readers_block_instead_of_buffering():
    batch = 4
    async with socket_device(batch_size=batch, small_buffers=True) as (tun, (peer,)):
        peer.setblocking(False)
        sent: list[bytes] = []
        for packet in numbered(500, size=200):
            try:
                peer.send(packet)
            except BlockingIOError:
                break
            sent.append(packet)
        assert len(sent) < 500, "the peer's buffer should fill while nobody reads"
        await anyio.sleep(0.2)
        # Read so far: at most the inbound queue's batches plus the batch in the reader's hand.
        assert tun.stats()["rx_packets"] <= (device.RX_QUEUE_BATCHES + 1) * batch
        got: list[bytes] = []
        while len(got) < len(sent):
            got.extend(await tun.recv_many())
        assert got == sent


async def test_aclose_wakes_a_waiting_reader_and_stops_every_thread():
    async with socket_device(queues=2) as (tun, _):
        assert tun_threads() == []  # until the device is first used
        await tun.send_ready()
        assert tun_threads() == [
            "tun-sp0-q0-rx", "tun-sp0-q0-tx", "tun-sp0-q1-rx", "tun-sp0-q1-tx",
        ]  # fmt: skip
        outcome: list[str] = []

        async def reader() -> None:
            with pytest.raises(ClosedResource) as caught:
                await tun.recv_many()
            outcome.append(str(caught.value))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(reader)
            await anyio.sleep(0.05)
            started = time.monotonic()
            await tun.aclose()
        assert time.monotonic() - started < 1.0
        assert outcome == ["TUN device 'sp0' is closed"]
        assert tun_threads() == []


async def test_aclose_is_quick_while_threads_are_blocked_both_ways():
    async with socket_device(batch_size=4, small_buffers=True) as (tun, (peer,)):
        peer.setblocking(False)
        with anyio.move_on_after(0.3):  # writer stuck on a full socket, queue full
            while True:
                await tun.send_ready()
                tun.send(numbered(4, size=1000))
        for packet in numbered(200, size=1000):  # reader stuck on a full inbound queue
            try:
                peer.send(packet)
            except BlockingIOError:
                break
        await anyio.sleep(0.1)
        started = time.monotonic()
        await tun.aclose()
        assert time.monotonic() - started < 1.0
        assert tun_threads() == []


async def test_a_closed_device_raises_closed_resource_everywhere():
    async with socket_device() as (tun, _):
        await tun.aclose()
        await tun.aclose()  # idempotent
        with pytest.raises(ClosedResource):
            await tun.recv_many()
        with pytest.raises(ClosedResource):
            await tun.send_ready()
        with pytest.raises(ClosedResource):
            tun.send(numbered(1))
        assert "closed" in repr(tun)


async def test_a_hung_up_queue_fails_the_device_after_delivering_what_was_read():
    async with socket_device() as (tun, (peer,)):
        peer.send(numbered(1)[0])
        peer.close()
        assert await tun.recv_many() == numbered(1)
        with pytest.raises(ClosedResource, match="hung up"):
            await tun.recv_many()
        with pytest.raises(ClosedResource, match="hung up"):
            await tun.send_ready()


def test_the_device_needs_a_running_asyncio_loop():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs, pytest.raises(BackendUnavailable, match="asyncio"):
        LinuxMultiQueueTun([ours.fileno()], name="sp0", options=TunOptions())


def test_the_device_needs_a_descriptor():
    with pytest.raises(ValueError, match="descriptor"):
        LinuxMultiQueueTun([], name="sp0", options=TunOptions())


# -- with vnet headers (offloads), the socket peer playing the kernel --------------------------


async def test_with_vnet_headers_super_packets_are_read_as_ordinary_segments():
    from .test_mq_offload import GSO_TCPV4, kernel_super_packet, l4_valid, tcp

    big = tcp(bytes(range(250)) * 20, flags=0x18)  # 5000 bytes of payload, ACK | PSH
    ping = P.icmp_echo("10.0.0.1", "10.0.0.2", 1, 1)
    frames = [kernel_super_packet(big, GSO_TCPV4, 1200), bytes(10) + ping, b"\x01" * 4]
    async with socket_device(batch_size=8, vnet_hdr=True, preload=[frames]) as (tun, _):
        assert tun.offloads
        got: list[bytes] = []
        while len(got) < 6:
            got.extend(await tun.recv_many())
        await until(lambda: tun.stats()["drops"] == {"rx_short_read": 1})
        stats = tun.stats()
    assert [len(p) for p in got] == [1240] * 4 + [240, len(ping)]
    assert all(l4_valid(p) for p in got[:5])
    assert got[5] == ping
    assert (stats["rx_super_packets"], stats["rx_segments"], stats["rx_packets"]) == (1, 5, 6)


async def test_with_vnet_headers_a_batch_is_written_coalesced():
    from .test_mq_offload import stream

    segments = stream(6)
    ping = P.icmp_echo("10.0.0.1", "10.0.0.2", 1, 1)
    async with socket_device(batch_size=8, vnet_hdr=True) as (tun, (peer,)):
        await tun.send_ready()
        tun.send([segments[0], ping, *segments[1:]])
        frames = await receive(peer, 2)
        await until(lambda: tun.stats()["tx_packets"] == 7)
        stats = tun.stats()
    super_frame, ping_frame = frames
    assert super_frame[1] == 1  # GSO_TCPV4
    assert len(super_frame) == 10 + 40 + 6 * 1000
    assert ping_frame == bytes(10) + ping
    assert (stats["tx_super_packets"], stats["tx_coalesced_packets"]) == (1, 6)
    assert stats["tx_bytes"] == sum(map(len, segments)) + len(ping)
