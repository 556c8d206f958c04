"""UdpTransport on loopback: batches arrive whole and in order, with UDP GSO/GRO on and off.

Every socket here binds to 127.0.0.1 or ::1 (or ::ffff:127.0.0.1, which is loopback too). No
timing is asserted; ``fail_after`` only stops a hung test.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import anyio
import pytest

from tunplug.exceptions import ClosedResource
from tunplug.transport import Datagram, Endpoint, UdpTransport, normalize_endpoint
from tunplug.udp_offload import (
    GSO_MAX_BYTES,
    GSO_MAX_SEGMENTS,
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
    gro_segment_size,
    gso_runs,
    split_segments,
)

pytestmark = pytest.mark.anyio


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


HOSTS = [
    "127.0.0.1",
    pytest.param(
        "::1", marks=pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
    ),
    # A dual-stack socket on the IPv4-mapped loopback address: peers must read as plain IPv4.
    "::ffff:127.0.0.1",
]
LINUX = sys.platform == "linux"


@asynccontextmanager
async def transports(
    host: str, count: int = 2, *, offloads: bool = True
) -> AsyncIterator[list[UdpTransport]]:
    opened = [UdpTransport.bind(0, host, offloads=offloads) for _ in range(count)]
    try:
        yield opened
    finally:
        for transport in opened:
            await transport.aclose()


async def receive(transport: UdpTransport, count: int, max_datagrams: int = 100) -> list[Datagram]:
    received: list[Datagram] = []
    with anyio.fail_after(10):
        while len(received) < count:
            batch = await transport.recv_many(max_datagrams)
            assert 1 <= len(batch) <= max_datagrams
            received.extend(batch)
    assert len(received) == count
    return received


def numbered(count: int, size: int, first: int = 0) -> list[bytes]:
    """Distinct payloads of ``size`` bytes (the number in front, then filler)."""
    return [(first + i).to_bytes(4, "big").ljust(size, b"\xab") for i in range(count)]


# -- pure helpers ---------------------------------------------------------------------------
A, B = ("10.0.0.1", 1), ("10.0.0.2", 2)


def _runs(sizes_and_endpoints: list[tuple[int, Endpoint]], **limits: int) -> list[tuple[int, int]]:
    return gso_runs([(b"x" * size, endpoint) for size, endpoint in sizes_and_endpoints], **limits)


def test_runs_group_equal_sizes_and_end_at_a_shorter_one():
    assert _runs([(100, A)] * 3 + [(40, A), (100, A)]) == [(0, 4), (4, 5)]


def test_runs_break_on_a_longer_datagram_or_another_endpoint():
    assert _runs([(100, A), (100, A), (120, A), (120, B), (120, B)]) == [(0, 2), (2, 3), (3, 5)]


def test_runs_respect_the_segment_and_byte_limits():
    assert _runs([(10, A)] * 130) == [(0, 64), (64, 128), (128, 130)]
    per_run = GSO_MAX_BYTES // 1452
    assert _runs([(1452, A)] * 100)[0] == (0, per_run)
    assert _runs([(10, A)] * 5, max_segments=2) == [(0, 2), (2, 4), (4, 5)]
    assert GSO_MAX_SEGMENTS == 64


def test_runs_of_empty_or_single_datagrams():
    assert _runs([]) == []
    assert _runs([(0, A), (0, A)]) == [(0, 1), (1, 2)]
    assert _runs([(70000, A), (10, A)]) == [(0, 1), (1, 2)]


def test_split_segments_and_the_gro_control_message():
    data = b"".join(numbered(5, 100)) + b"tail"
    parts = split_segments(data, 100)
    assert parts == [*numbered(5, 100), b"tail"]
    assert split_segments(b"abc", 0) == [b"abc"]
    assert split_segments(b"abc", 3) == [b"abc"]
    assert gro_segment_size([(SOL_UDP, UDP_GRO, struct.pack("=i", 1400))]) == 1400
    assert gro_segment_size([(socket.SOL_SOCKET, 1, b"\0" * 4)]) == 0


def test_normalize_endpoint_reduces_mapped_and_four_field_addresses():
    assert normalize_endpoint(("::ffff:10.1.2.3", 51820, 0, 0)) == ("10.1.2.3", 51820)
    assert normalize_endpoint(("fd00::1", 1, 0, 0)) == ("fd00::1", 1)
    assert normalize_endpoint(("10.1.2.3", 5)) == ("10.1.2.3", 5)


# -- loopback -------------------------------------------------------------------------------
@pytest.mark.parametrize("offloads", [True, False], ids=["offloads", "plain"])
@pytest.mark.parametrize("host", HOSTS)
async def test_a_batch_arrives_complete_in_order_with_its_source(host, offloads):
    async with transports(host, offloads=offloads) as (sender, receiver):
        if ":" in host and "." in host:
            assert sender.local_endpoint[0] == "127.0.0.1"
        payloads = [*numbered(200, 1400), b"odd", b"", b"x" * 999, *numbered(3, 1400, 500)]
        payloads += [*numbered(70, 1200, 1000), b"y" * 65000]
        await sender.send_many([(p, receiver.local_endpoint) for p in payloads])
        received = await receive(receiver, len(payloads))
        assert [data for data, _ in received] == payloads
        assert {source for _, source in received} == {sender.local_endpoint}

        sent, got = sender.stats(), receiver.stats()
        assert sent.datagrams_sent == got.datagrams_received == len(payloads)
        if offloads and LINUX and sent.gso_enabled:
            assert got.gro_enabled
            assert sent.gso_sends > 0 and sent.send_calls < len(payloads)
            assert got.gro_reads > 0 and got.recv_calls < len(payloads)
            assert sent.gso_fallbacks == 0
        if not offloads:
            assert not sent.gso_enabled and not got.gro_enabled
            assert sent.gso_sends == got.gro_reads == 0
            assert sent.send_calls == len(payloads)


@pytest.mark.skipif(not LINUX, reason="UDP_SEGMENT/UDP_GRO are Linux socket options")
async def test_gro_reads_are_split_back_into_the_datagrams_sent():
    async with transports("127.0.0.1", 1) as (receiver,):
        if not receiver.stats().gro_enabled:
            pytest.skip("this kernel has no UDP_GRO")
        segments = [*numbered(40, 1000), b"last, shorter"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.bind(("127.0.0.1", 0))
            control = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", 1000))]
            raw.sendmsg([b"".join(segments)], control, 0, receiver.local_endpoint)
            raw.sendto(b"single", receiver.local_endpoint)
            # max_datagrams bounds every answer; the rest of a coalesced read comes next.
            received = await receive(receiver, len(segments) + 1, max_datagrams=7)
            source = normalize_endpoint(raw.getsockname())
        assert [data for data, _ in received] == [*segments, b"single"]
        assert all(endpoint == source for _, endpoint in received)
        stats = receiver.stats()
        assert stats.gro_reads == 1 and stats.gro_segments == len(segments)
        assert stats.recv_calls == 2


async def test_one_batch_to_several_endpoints_keeps_each_ones_order():
    async with transports("127.0.0.1", 3) as (sender, first, second):
        batch: list[Datagram] = []
        for i in range(12):
            target = first if i % 3 else second
            batch += [(p, target.local_endpoint) for p in numbered(5, 1300, 10 * i)]
        await sender.send_many(batch)
        for target in (first, second):
            expected = [data for data, endpoint in batch if endpoint == target.local_endpoint]
            received = await receive(target, len(expected))
            assert [data for data, _ in received] == expected
            assert {source for _, source in received} == {sender.local_endpoint}
        if sender.stats().gso_enabled:
            # Runs alternate: 5 to the second, 10 to the first, and so on: 8 runs, 8 sends.
            assert sender.stats().gso_sends == 8


class _FlakySocket(socket.socket):
    """A UDP socket whose GSO sends fail with chosen errnos, one per call (0: works)."""

    def __init__(self, *args: object, errnos: list[int]) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.errnos = errnos
        self.gso_calls = 0

    def sendmsg(self, buffers, ancdata=(), flags=0, address=None):  # type: ignore[no-untyped-def, override]
        if any(level == SOL_UDP and kind == UDP_SEGMENT for level, kind, _ in ancdata):
            self.gso_calls += 1
            if self.errnos:
                code = self.errnos.pop(0)
                if code:
                    raise OSError(code, errno.errorcode.get(code, "?"))
        return super().sendmsg(buffers, ancdata, flags, address)


@pytest.fixture
def flaky_sender() -> Iterator[object]:
    def make(errnos: list[int]) -> tuple[UdpTransport, _FlakySocket]:
        sock = _FlakySocket(socket.AF_INET, socket.SOCK_DGRAM, errnos=errnos)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        made.append(sock)
        return UdpTransport(sock), sock

    made: list[_FlakySocket] = []
    yield make
    for sock in made:
        sock.close()


@pytest.mark.skipif(not LINUX, reason="UDP_SEGMENT is a Linux socket option")
@pytest.mark.parametrize("code", [errno.EIO, errno.EINVAL, errno.ENOPROTOOPT])
async def test_a_refused_gso_send_falls_back_and_loses_nothing(flaky_sender, code, caplog):
    sender, sock = flaky_sender([code])
    if not sender.stats().gso_enabled:
        pytest.skip("this kernel has no UDP_SEGMENT")
    async with transports("127.0.0.1", 1) as (receiver,):
        payloads = numbered(100, 1400)
        await sender.send_many([(p, receiver.local_endpoint) for p in payloads])
        await sender.send_many([(p, receiver.local_endpoint) for p in payloads])
        received = await receive(receiver, 200)
        assert [data for data, _ in received] == payloads * 2
    stats = sender.stats()
    assert not stats.gso_enabled
    assert stats.gso_fallbacks == 1 and stats.gso_sends == 0
    assert stats.datagrams_sent == stats.send_calls == 200
    assert sock.gso_calls == 1  # never tried again
    assert len([r for r in caplog.records if "segmentation offload" in r.message]) == 1


@pytest.mark.skipif(not LINUX, reason="UDP_SEGMENT is a Linux socket option")
async def test_a_full_buffer_is_waited_out_and_an_unreachable_peer_skipped(flaky_sender):
    sender, sock = flaky_sender([errno.EAGAIN, 0, errno.ECONNREFUSED])
    if not sender.stats().gso_enabled:
        pytest.skip("this kernel has no UDP_SEGMENT")
    async with transports("127.0.0.1", 1) as (receiver,):
        first, second = numbered(10, 500), numbered(10, 500, 100)
        await sender.send_many([(p, receiver.local_endpoint) for p in first])  # EAGAIN, then sent
        await sender.send_many([(p, receiver.local_endpoint) for p in second])  # refused: skipped
        await sender.send_many([(p, receiver.local_endpoint) for p in first])
        received = await receive(receiver, 20)
        assert [data for data, _ in received] == first * 2
    assert sender.stats().gso_enabled and sender.stats().gso_sends == 2
    assert sock.gso_calls == 4


async def test_recv_many_on_a_closed_transport_raises_closed_resource():
    async with transports("127.0.0.1", 1) as (transport,):
        await transport.aclose()
        with pytest.raises(ClosedResource):
            await transport.recv_many()
        with pytest.raises(ClosedResource):
            await transport.send_many([(b"x", ("127.0.0.1", 9))])
        await transport.aclose()  # idempotent


async def test_closing_ends_a_waiting_recv_many_with_closed_resource():
    async with transports("127.0.0.1", 1) as (transport,), anyio.create_task_group() as tasks:
        errors: list[BaseException] = []

        async def wait_for_datagrams() -> None:
            try:
                await transport.recv_many()
            except ClosedResource as error:
                errors.append(error)

        tasks.start_soon(wait_for_datagrams)
        await anyio.wait_all_tasks_blocked()
        await transport.aclose()
    assert len(errors) == 1


@pytest.mark.parametrize("host", HOSTS)
async def test_a_receiver_sees_one_spelling_per_peer(host):
    async with transports(host, 1) as (receiver,):
        family = socket.AF_INET6 if host == "::1" else socket.AF_INET
        peer_host = "::1" if host == "::1" else "127.0.0.1"
        with socket.socket(family, socket.SOCK_DGRAM) as raw:
            raw.bind((peer_host, 0))
            target = receiver.local_endpoint
            raw.sendto(b"hello", target)
            [(data, source)] = await receive(receiver, 1)
            assert data == b"hello"
            assert source == (peer_host, raw.getsockname()[1])
            # Replies to that spelling reach the peer.
            raw.setblocking(False)
            await receiver.send_many([(b"back", source)])
            with anyio.fail_after(10):
                await anyio.wait_readable(raw)
            reply, replier = raw.recvfrom(100)
            assert (reply, normalize_endpoint(replier)) == (b"back", target)
