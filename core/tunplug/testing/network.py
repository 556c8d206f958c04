"""An in-memory datagram network: UDP-like transports joined without sockets.

Who uses it: tests and the in-process demo, through :class:`MemoryNetwork`. Datagrams are
delivered in order, dropped (and counted) when the receiver's queue is full, as UDP would, and
may be dropped on purpose by a filter (to test loss and retransmission).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence

from tunplug.exceptions import BusyResource, ClosedResource
from tunplug.testing._signal import Signal
from tunplug.transport import Datagram, DatagramTransport, Endpoint

#: Decides whether a datagram is delivered: ``(data, source, destination) -> keep``.
Filter = Callable[[bytes, Endpoint, Endpoint], bool]


class MemoryNetwork:
    """Endpoints on one imaginary network. ``queue_limit`` bounds each receiver, in datagrams."""

    def __init__(self, *, queue_limit: int = 4096) -> None:
        self.queue_limit = queue_limit
        self.filter: Filter | None = None
        self.drops: Counter[str] = Counter()
        self.delivered = 0
        self._bound: dict[Endpoint, MemoryTransport] = {}

    def bind(self, endpoint: Endpoint) -> MemoryTransport:
        """Open a transport at ``endpoint`` (``("10.0.0.1", 51820)``, say)."""
        if endpoint in self._bound:
            raise BusyResource(f"{endpoint[0]}:{endpoint[1]} is already bound")
        transport = MemoryTransport(self, endpoint)
        self._bound[endpoint] = transport
        return transport

    def _deliver(self, data: bytes, source: Endpoint, destination: Endpoint) -> None:
        if self.filter is not None and not self.filter(data, source, destination):
            self.drops["filtered"] += 1
            return
        target = self._bound.get(destination)
        if target is None:
            self.drops["unreachable"] += 1
            return
        if len(target._queue) >= self.queue_limit:
            self.drops["queue-full"] += 1
            return
        target._queue.append((data, source))
        self.delivered += 1
        target._arrived.fire()

    def _unbind(self, transport: MemoryTransport) -> None:
        if self._bound.get(transport.local_endpoint) is transport:
            del self._bound[transport.local_endpoint]


class MemoryTransport(DatagramTransport):
    """One bound endpoint of a :class:`MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, endpoint: Endpoint) -> None:
        self._network = network
        self._endpoint = endpoint
        self._queue: deque[Datagram] = deque()
        self._arrived = Signal()
        self._closed = False

    @property
    def local_endpoint(self) -> Endpoint:
        return self._endpoint

    async def recv_many(self, max_datagrams: int = 100) -> list[Datagram]:
        while not self._queue:
            if self._closed:
                raise ClosedResource(f"transport {self._endpoint} is closed")
            await self._arrived.wait()
        count = min(max_datagrams, len(self._queue))
        return [self._queue.popleft() for _ in range(count)]

    async def send_many(self, datagrams: Sequence[Datagram]) -> None:
        if self._closed:
            raise ClosedResource(f"transport {self._endpoint} is closed")
        for data, destination in datagrams:
            self._network._deliver(bytes(data), self._endpoint, destination)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._network._unbind(self)
            self._arrived.fire()
