"""The ``fake`` TUN backend: an in-memory device with the full contract, for tests and demos.

The engine uses a :class:`FakeTun` like any device. The test (standing in for the kernel) puts
packets in with :meth:`FakeTun.inject` and takes what the engine wrote with
:meth:`FakeTun.delivered`. Both directions are bounded: ``inject`` waits while the engine is not
reading, and :meth:`FakeTun.send_ready` waits while the test has not taken what was written, so
backpressure is real.

Registered as a builtin plugin (``tun-fake``), so ``--tun fake`` works without root.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import ClassVar, Self
from weakref import WeakValueDictionary

from tunplug._marker import hookimpl
from tunplug.exceptions import BusyResource, ClosedResource
from tunplug.testing._signal import Signal
from tunplug.tun import Packet, Tun, TunOptions

_numbers = itertools.count()


class FakeTun(Tun):
    """An in-memory TUN device. ``capacity`` bounds each direction, in packets."""

    backend_name = "fake"
    description = "in-memory device for tests and demos (no root needed)"

    #: Open devices by name, so a test can find the device an engine created.
    opened: ClassVar[WeakValueDictionary[str, FakeTun]] = WeakValueDictionary()

    def __init__(self, options: TunOptions | None = None, *, capacity: int = 1024) -> None:
        options = options or TunOptions()
        if capacity < options.batch_size:
            raise ValueError("capacity must hold at least one batch")
        self.name = options.name or f"fake{next(_numbers)}"
        self.mtu = options.mtu
        self.queues = 1
        self.batch_size = options.batch_size
        self.addresses = options.addresses
        self.capacity = capacity
        self._inbox: deque[bytes] = deque()  # "kernel" -> engine (recv_many)
        self._outbox: deque[bytes] = deque()  # engine -> "kernel" (send)
        self._inbox_changed = Signal()
        self._outbox_changed = Signal()
        self._closed = False
        self.dropped_oversize = 0
        #: Networks routed into the device with :meth:`add_routes`, in order.
        self.routes: list[IPv4Network | IPv6Network] = []

    @classmethod
    async def create(cls, options: TunOptions) -> Self:
        if options.name is not None and options.name in cls.opened:
            raise BusyResource(f"interface {options.name!r} already exists")
        device = cls(options)
        cls.opened[device.name] = device
        return device

    # -- the engine's side (the Tun contract) ------------------------------------------------
    async def recv_many(self, max_packets: int | None = None) -> Sequence[Packet]:
        limit = self.batch_limit(max_packets)
        while not self._inbox:
            self._check_open()
            await self._inbox_changed.wait()
        self._check_open()
        count = min(limit, len(self._inbox))
        batch = [self._inbox.popleft() for _ in range(count)]
        self._inbox_changed.fire()
        return batch

    async def send_ready(self) -> None:
        while len(self._outbox) + self.batch_size > self.capacity:
            self._check_open()
            await self._outbox_changed.wait()
        self._check_open()

    def send(self, packets: Sequence[Packet]) -> None:
        self._check_open()
        if len(packets) > self.batch_size:
            raise ValueError(f"{len(packets)} packets exceed the batch size {self.batch_size}")
        for packet in packets:
            if len(packet) > self.mtu:
                self.dropped_oversize += 1
                continue
            self._outbox.append(bytes(packet))
        self._outbox_changed.fire()

    async def add_routes(self, networks: Sequence[IPv4Network | IPv6Network]) -> None:
        self._check_open()
        self.routes.extend(network for network in networks if network not in self.routes)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.opened.get(self.name) is self:
            del self.opened[self.name]
        self._inbox_changed.fire()
        self._outbox_changed.fire()

    # -- the test's side (the "kernel") ----------------------------------------------------
    async def inject(self, packets: Sequence[Packet]) -> None:
        """Put packets where :meth:`recv_many` finds them, waiting while the inbox is full."""
        pending = deque(bytes(packet) for packet in packets)
        while pending:
            self._check_open()
            while pending and len(self._inbox) < self.capacity:
                self._inbox.append(pending.popleft())
            self._inbox_changed.fire()  # wake the reader before waiting for it to make room
            if pending:
                await self._inbox_changed.wait()

    async def delivered(self, count: int = 1) -> list[bytes]:
        """Wait until ``count`` packets were sent to the device, and take them."""
        while len(self._outbox) < count:
            self._check_open()
            await self._outbox_changed.wait()
        taken = [self._outbox.popleft() for _ in range(count)]
        self._outbox_changed.fire()
        return taken

    def take_all(self) -> list[bytes]:
        """Take every packet sent to the device so far, without waiting."""
        taken = list(self._outbox)
        self._outbox.clear()
        self._outbox_changed.fire()
        return taken

    @property
    def pending_out(self) -> int:
        """Packets the engine wrote that the test has not taken."""
        return len(self._outbox)

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResource(f"fake device {self.name} is closed")


@hookimpl
def tunplug_register_tun_backends() -> Sequence[type[Tun]]:
    return [FakeTun]
