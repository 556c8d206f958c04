"""A shared test suite for the :class:`~tunplug.tun.Tun` contract, for every TUN backend.

Who calls it: tunplug's own ``tests/contract`` (fake, linux-mq, wintun over a fake DLL, darwin
over a socket pair) and third-party backend authors, who run the same checks on their backend.
A backend takes part through a small :class:`TunHarness`: it opens one device and plays the
operating system's side of it (puts packets in, takes what the device wrote). Then::

    import pytest
    from tunplug.testing import contract

    class MyHarness(contract.TunHarness):
        async def open(self, options): ...       # the device, opened
        async def inject(self, packets): ...     # the OS sends packets into the device
        async def delivered(self, count): ...    # what the device wrote to the OS, in order
        def released(self): ...                  # the closed device's OS resource is gone

    @pytest.mark.anyio
    @pytest.mark.parametrize(("check", "harness"), contract.cases({"mine": MyHarness}))
    async def test_tun_contract(check, harness):
        await contract.run_check(check, harness)

Each check is also a plain coroutine function (``check_*``) taking a harness. The checks:
``recv_many`` waits for a packet and returns at most its maximum, in order; a maximum above
``batch_size`` and a ``send`` of more than ``batch_size`` packets raise :class:`ValueError`;
``send_ready`` blocks while the OS side is not draining and resumes, losing nothing, once it
drains (skipped for harnesses that set :attr:`TunHarness.backpressure_unsupported`); a closed
device raises :class:`~tunplug.exceptions.ClosedResource` everywhere and wakes its waiters;
the async context manager closes the device and releases its OS resource.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self

import anyio
import pytest

from tunplug.exceptions import ClosedResource
from tunplug.testing import packets as _packets
from tunplug.testing.fake import FakeTun
from tunplug.tun import Tun, TunOptions

__all__ = [
    "CHECKS",
    "Check",
    "FakeTunHarness",
    "TunHarness",
    "cases",
    "make_packets",
    "run_check",
]

#: How long one check may take before it fails (real devices and threads are slow under load).
CHECK_TIMEOUT_SECONDS = 30.0
#: How long a wait must last to count as "blocked".
BLOCKED_SECONDS = 0.25
#: How long a closed device's OS resource may take to disappear.
RELEASE_SECONDS = 5.0
RELEASE_POLL_SECONDS = 0.02
#: The most packets the backpressure check sends before it concludes the device never fills.
FILL_LIMIT_PACKETS = 50_000


class TunHarness(ABC):
    """Opens one device of a backend and plays the operating system's side of it.

    Use it as an async context manager: leaving it closes the device (if still open) and
    everything the harness made. :meth:`open` is called once per harness.

    The OS side takes packets only in :meth:`delivered`: while nobody calls it, the device
    must eventually stop accepting packets (``send_ready`` blocks). A backend whose OS side
    always drains (a kernel TUN device) sets :attr:`backpressure_unsupported` to the reason,
    and the backpressure checks are left out for it.
    """

    #: Why ``send_ready`` cannot be made to block for this backend, or ``None`` if it can.
    backpressure_unsupported: ClassVar[str | None] = None
    #: The device :meth:`open_device` opened (closed on exit if still open).
    device: Tun | None = None

    @abstractmethod
    async def open(self, options: TunOptions) -> Tun:
        """Open a device of the backend with ``options`` and return it."""

    @abstractmethod
    async def inject(self, packets: Sequence[bytes]) -> None:
        """Have the OS send ``packets`` into the device, so that ``recv_many`` returns them.

        May wait while the device is full, but must accept 100 packets of 100 bytes without
        anybody calling ``recv_many``.
        """

    @abstractmethod
    async def delivered(self, count: int) -> list[bytes]:
        """Wait until the device has written ``count`` packets to the OS side; take them."""

    @abstractmethod
    def released(self) -> bool:
        """Whether the OS resource of the device is gone (interface, socket...), right now.

        Called while the device is open (must be false) and after it closed (polled until
        true, for up to :data:`RELEASE_SECONDS`).
        """

    async def aclose(self) -> None:
        """Release what the harness made (the device is closed before this is called)."""
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            if self.device is not None:
                await self.device.aclose()
            await self.aclose()

    async def open_device(self, **options: Any) -> Tun:
        """:meth:`open` with :class:`TunOptions` built from ``options``, remembered for cleanup."""
        device = await self.open(TunOptions(**options))
        self.device = device
        return device


class FakeTunHarness(TunHarness):
    """The harness of the in-memory :class:`~tunplug.testing.FakeTun` (an example to copy)."""

    async def open(self, options: TunOptions) -> Tun:
        self.tun = FakeTun(options, capacity=max(128, 4 * options.batch_size))
        return self.tun

    async def inject(self, packets: Sequence[bytes]) -> None:
        await self.tun.inject(packets)

    async def delivered(self, count: int) -> list[bytes]:
        return await self.tun.delivered(count)

    def released(self) -> bool:
        return self.tun.closed


def make_packets(count: int, *, start: int = 0, size: int = 100) -> list[bytes]:
    """``count`` distinct IPv4 UDP packets of ``size`` bytes, numbered from ``start``.

    Addresses are from TEST-NET-1 (192.0.2.0/24); the number is in the payload.
    """
    filler = bytes(size - 28 - 4)
    return [
        _packets.udp("192.0.2.2", "192.0.2.99", 40000, 40001, n.to_bytes(4, "big") + filler)
        for n in range(start, start + count)
    ]


async def receive(tun: Tun, count: int, max_packets: int | None = None) -> list[bytes]:
    """Call ``recv_many`` until ``count`` packets came; check each batch's size on the way."""
    limit = max_packets if max_packets is not None else tun.batch_size
    received: list[bytes] = []
    while len(received) < count:
        batch = await tun.recv_many(max_packets)
        assert 1 <= len(batch) <= limit, f"recv_many returned {len(batch)} packets (max {limit})"
        received.extend(bytes(packet) for packet in batch)
    assert len(received) == count, f"{len(received) - count} packets more than were injected"
    return received


# -- the checks ------------------------------------------------------------------------------


async def check_recv_many_waits_for_a_packet(harness: TunHarness) -> None:
    """``recv_many`` waits while nothing arrived, then returns what arrived."""
    tun = await harness.open_device(batch_size=10)
    first: list[bytes] = []

    async def reader() -> None:
        first.extend(bytes(packet) for packet in await tun.recv_many())

    sent = make_packets(3)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(reader)
        await anyio.sleep(0.05)
        assert first == [], "recv_many returned before any packet arrived"
        await harness.inject(sent)
    assert first, "recv_many returned nothing"
    rest = await receive(tun, len(sent) - len(first))
    assert first + rest == sent


async def check_recv_many_returns_at_most_max_in_order(harness: TunHarness) -> None:
    """Batches never exceed ``max_packets`` (or ``batch_size``) and keep the arrival order."""
    tun = await harness.open_device(batch_size=16)
    sent = make_packets(40)
    await harness.inject(sent)
    assert await receive(tun, 40, max_packets=5) == sent
    more = make_packets(40, start=40)
    await harness.inject(more)
    assert await receive(tun, 40) == more


async def check_recv_many_refuses_max_above_batch_size(harness: TunHarness) -> None:
    """``recv_many(max_packets)`` with ``max_packets`` outside 1..batch_size raises ValueError."""
    tun = await harness.open_device(batch_size=8)
    for wrong in (9, 0):
        with pytest.raises(ValueError, match="max_packets"):
            await tun.recv_many(wrong)
    sent = make_packets(2)
    await harness.inject(sent)
    assert await receive(tun, 2, max_packets=8) == sent


async def check_send_refuses_more_than_a_batch(harness: TunHarness) -> None:
    """``send`` of more than ``batch_size`` packets raises ValueError and writes nothing."""
    tun = await harness.open_device(batch_size=8)
    await tun.send_ready()
    with pytest.raises(ValueError):
        tun.send(make_packets(9, start=100))
    batch = make_packets(8)
    await tun.send_ready()
    tun.send(batch)
    assert await harness.delivered(8) == batch


async def check_send_ready_blocks_while_full_and_resumes_when_drained(
    harness: TunHarness,
) -> None:
    """While the OS side does not drain, ``send_ready`` blocks; once it drains, it returns,
    and every packet sent arrives, in order: backpressure, not drops."""
    tun = await harness.open_device(batch_size=8)
    sent: list[bytes] = []
    while len(sent) < FILL_LIMIT_PACKETS:
        with anyio.move_on_after(BLOCKED_SECONDS) as wait:
            await tun.send_ready()
        if wait.cancelled_caught:
            break
        batch = make_packets(8, start=len(sent))
        tun.send(batch)
        sent.extend(batch)
    else:
        pytest.fail(f"send_ready never blocked after {len(sent)} packets: unbounded buffering")
    assert sent, "send_ready blocked before anything was sent"

    ready = anyio.Event()

    async def wait_ready() -> None:
        await tun.send_ready()
        ready.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(wait_ready)
        await anyio.sleep(0.05)
        assert not ready.is_set(), "send_ready returned while the device was still full"
        got = await harness.delivered(len(sent))
        await ready.wait()
    assert got == sent, "packets were lost or reordered under backpressure"


async def check_closed_device_raises_everywhere_and_wakes_waiters(harness: TunHarness) -> None:
    """Closing wakes a task in ``recv_many`` with ClosedResource; then every call raises it."""
    tun = await harness.open_device(batch_size=8)
    failures: list[BaseException] = []

    async def reader() -> None:
        try:
            await tun.recv_many()
        except ClosedResource as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(reader)
        await anyio.sleep(0.05)
        await tun.aclose()
    assert len(failures) == 1, "the waiting reader was not woken with ClosedResource"
    await tun.aclose()  # idempotent
    with pytest.raises(ClosedResource):
        await tun.recv_many()
    with pytest.raises(ClosedResource):
        await tun.send_ready()
    with pytest.raises(ClosedResource):
        tun.send(make_packets(1))


async def check_close_wakes_a_blocked_send_ready(harness: TunHarness) -> None:
    """A task blocked in ``send_ready`` on a full device gets ClosedResource when it closes."""
    tun = await harness.open_device(batch_size=8)
    sent = 0
    while sent < FILL_LIMIT_PACKETS:
        with anyio.move_on_after(BLOCKED_SECONDS) as wait:
            await tun.send_ready()
        if wait.cancelled_caught:
            break
        tun.send(make_packets(8, start=sent))
        sent += 8
    else:
        pytest.fail(f"send_ready never blocked after {sent} packets: unbounded buffering")
    failures: list[BaseException] = []

    async def writer() -> None:
        try:
            await tun.send_ready()
        except ClosedResource as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(writer)
        await anyio.sleep(0.05)
        await tun.aclose()
    assert len(failures) == 1, "the blocked send_ready was not woken with ClosedResource"


async def check_context_manager_closes_and_releases(harness: TunHarness) -> None:
    """Leaving ``async with`` closes the device and releases its OS resource."""
    tun = await harness.open_device(batch_size=8)
    packet = make_packets(1)
    async with tun:
        await tun.send_ready()
        tun.send(packet)
        assert await harness.delivered(1) == packet
        assert not harness.released()
    # The kernel may take a moment to remove a device after its last descriptor closed.
    for _ in range(int(RELEASE_SECONDS / RELEASE_POLL_SECONDS)):
        if harness.released():
            break
        await anyio.sleep(RELEASE_POLL_SECONDS)
    assert harness.released(), "the device's OS resource outlived the async with block"
    with pytest.raises(ClosedResource):
        tun.send(packet)


@dataclass(frozen=True)
class Check:
    """One contract check: its name, its coroutine function and whether it needs backpressure."""

    name: str
    run: Callable[[TunHarness], Awaitable[None]]
    needs_backpressure: bool = False


#: Every check of the contract, in the order they are reported.
CHECKS: tuple[Check, ...] = (
    Check("recv_many_waits_for_a_packet", check_recv_many_waits_for_a_packet),
    Check("recv_many_returns_at_most_max_in_order", check_recv_many_returns_at_most_max_in_order),
    Check("recv_many_refuses_max_above_batch_size", check_recv_many_refuses_max_above_batch_size),
    Check("send_refuses_more_than_a_batch", check_send_refuses_more_than_a_batch),
    Check(
        "send_ready_blocks_while_full_and_resumes_when_drained",
        check_send_ready_blocks_while_full_and_resumes_when_drained,
        needs_backpressure=True,
    ),
    Check(
        "closed_device_raises_everywhere_and_wakes_waiters",
        check_closed_device_raises_everywhere_and_wakes_waiters,
    ),
    Check(
        "close_wakes_a_blocked_send_ready",
        check_close_wakes_a_blocked_send_ready,
        needs_backpressure=True,
    ),
    Check("context_manager_closes_and_releases", check_context_manager_closes_and_releases),
)


HarnessFactory = Callable[[], TunHarness]


def cases(
    harnesses: Mapping[str, type[TunHarness]],
    marks: Mapping[str, Sequence[pytest.MarkDecorator]] | None = None,
) -> list[Any]:
    """``pytest.param(check, harness_class)`` for every check and harness, ids ``check-name``.

    Backpressure checks are left out for harnesses with ``backpressure_unsupported``.
    ``marks`` adds marks per harness name (e.g. ``{"linux-mq": [pytest.mark.root]}``).
    """
    params = []
    for check in CHECKS:
        for name, harness in harnesses.items():
            if check.needs_backpressure and harness.backpressure_unsupported:
                continue
            extra = (marks or {}).get(name, ())
            params.append(pytest.param(check, harness, id=f"{check.name}-{name}", marks=extra))
    return params


async def run_check(check: Check, harness: HarnessFactory) -> None:
    """Run ``check`` on a fresh harness (closed afterwards, also on failure), with a timeout."""
    async with harness() as instance:
        with anyio.fail_after(CHECK_TIMEOUT_SECONDS):
            await check.run(instance)
