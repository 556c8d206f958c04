"""The ``linux-mq`` TUN backend: a Linux TUN device driven by a reader and a writer per queue.

Who calls it: the engine, through the :class:`~tunplug.tun.Tun` contract, once the
``tun-linux-mq`` plugin registered :class:`LinuxMultiQueueTun`.

How it works:

- **Creation.** ``/dev/net/tun`` is opened once per queue with ``IFF_TUN | IFF_NO_PI |
  IFF_MULTI_QUEUE`` (:mod:`._open`). The first open also sets ``IFF_TUN_EXCL``: if any device
  of that name exists (another process's, or a persistent one) the kernel answers EBUSY and we
  refuse, instead of silently sharing a device and splitting its traffic (what made Firezone
  drop multi-queue). The device is not persistent: it vanishes when the last descriptor
  closes, also when the process is killed.
- **Reading.** Each queue has a reader thread (``tun-<name>-q<i>-rx``, :mod:`.queues`) that
  hands batches to the event loop through the :class:`~tunplug.threaded.Inbound` channel of
  :class:`~tunplug.threaded.ThreadedTun`: at most ``RX_QUEUE_BATCHES`` batches per queue.
  When it is full the reader blocks, the kernel's own queue fills and the kernel drops, so
  memory stays bounded.
- **Hand-off to the event loop.** A batch costs one uncontended lock; the loop is woken
  (``call_soon_threadsafe`` setting an :class:`asyncio.Event`) only when a task is actually
  waiting. The kernel already spreads flows over the queues on this side.
- **Writing.** :meth:`LinuxMultiQueueTun.send` puts each packet in the bounded queue of the
  writer thread (``tun-<name>-q<i>-tx``) chosen by its flow hash (:mod:`.flow`), so one flow
  is always written by one thread, in order. :meth:`~LinuxMultiQueueTun.send_ready` waits until
  every writer queue has room for a whole batch. A packet the kernel rejects is dropped and
  counted; a dead device (EBADFD: the interface was deleted) fails the device.
- **Shutdown.** :meth:`~LinuxMultiQueueTun.aclose` writes to the stop pipe (waking every thread
  blocked in ``poll()``), closes the channels (waking threads blocked on them), removes what
  :mod:`.routing` added, joins the threads and only then closes the descriptors, so no thread
  can touch a reused descriptor.

Runs on anyio's asyncio backend (the engine's); trio is refused with :class:`BackendUnavailable`.

- **Offloads** (``TunOptions(offloads=True)``). The queues are opened with ``IFF_VNET_HDR``,
  so every read and write starts with a ``virtio_net_hdr`` (:mod:`.offload`). The writer
  coalesces each chunk's runs of same-flow TCP segments into super-packets (one ``writev()``
  each) and writes everything else behind a zero header. With :data:`._open.RX_OFFLOADS`
  (off by default: in CPython the per-segment checksums cost more than the reads saved) the
  device is also given ``TUNSETOFFLOAD`` ``CSUM | TSO4 | TSO6 | USO4 | USO6`` (without the
  USO bits when the kernel refuses them), and the reader splits each TSO/USO super-packet
  (up to 64 KiB, one ``read()``) into ordinary packets and completes partial checksums
  before the batch goes to the loop.
  So :meth:`~LinuxMultiQueueTun.recv_many` and :meth:`~LinuxMultiQueueTun.send` keep carrying
  ordinary IP packets; the gain is fewer syscalls. When the kernel refuses the offloads
  (EINVAL) the device is reopened plain, once, and :attr:`offloads` says which is active.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING, Self

import anyio
import anyio.lowlevel

from tunplug.exceptions import BackendUnavailable, TunError
from tunplug.threaded import ThreadedTun, running_asyncio_loop
from tunplug.tun import Packet, TunOptions
from tunplug_tun_linux_mq._open import TUN_PATH, open_queues
from tunplug_tun_linux_mq.flow import flow_key
from tunplug_tun_linux_mq.offload import coalesce, split
from tunplug_tun_linux_mq.queues import DeviceQueue, QueueShared, QueueStats
from tunplug_tun_linux_mq.routing import DeviceRoutes

if TYPE_CHECKING:
    from tunplug_tun_linux_mq.netlink import Route

__all__ = ["LinuxMultiQueueTun", "QueueStats", "TunStats"]

log = logging.getLogger(__name__)

#: Batches each reader may have waiting for the event loop before it blocks.
RX_QUEUE_BATCHES = 4
#: Batches (of up to ``batch_size`` packets) each writer queue holds.
TX_QUEUE_BATCHES = 4


class TunStats(QueueStats):
    """What :meth:`LinuxMultiQueueTun.stats` returns: totals, drops by reason, per queue."""

    #: e.g. ``{"tx_queue_full": 3, "write_einval": 1}``.
    drops: dict[str, int]
    queues: list[QueueStats]


class LinuxMultiQueueTun(ThreadedTun):
    """A Linux TUN device with one reader and one writer thread per queue.

    Open one with :meth:`create`. The constructor drives descriptors that are already open
    (one per queue, each carrying one IP packet per read and write): :meth:`create` uses it
    for ``/dev/net/tun`` queues, tests for ``SOCK_SEQPACKET`` socket pairs, and it would serve
    descriptors handed over by a privileged helper. With ``vnet_hdr=True`` every read and
    write on them starts with a ``virtio_net_hdr`` (queues opened with ``IFF_VNET_HDR`` and
    offloads set), and the device splits and coalesces (:attr:`offloads` is then true). It
    must be called in the event loop thread, and owns (closes) the descriptors from then on.
    """

    backend_name = "linux-mq"
    description = "Linux TUN, multi-queue threads, per-flow write ordering, exclusive create"
    platforms = frozenset({"linux"})

    def __init__(
        self, fds: Sequence[int], *, name: str, options: TunOptions, vnet_hdr: bool = False
    ) -> None:
        if not fds:
            raise ValueError("at least one descriptor (queue) is needed")
        super().__init__(
            name=name,
            options=options,
            queues=len(fds),
            inbound_batches=RX_QUEUE_BATCHES * len(fds),
        )
        self.offloads = vnet_hdr
        self._fds = list(fds)
        self._routing = DeviceRoutes(name)
        self._send_drops: Counter[str] = Counter()
        for fd in self._fds:
            os.set_blocking(fd, False)
        self._stop_read, self._stop_write = os.pipe()
        ops = options.packet_ops
        # The data path's offload surgery (the native core's), else this plugin's Python one.
        shared = QueueShared(
            device_name=name,
            batch_size=self.batch_size,
            vnet_hdr=vnet_hdr,
            stop_fd=self._stop_read,
            inbound=self._inbound,
            split=ops.split if ops else split,
            coalesce=ops.coalesce if ops else coalesce,
            fail=self._fail,
        )
        capacity = TX_QUEUE_BATCHES * self.batch_size
        self._queues = [
            DeviceQueue(index, fd, self._add_outbound(capacity), shared)
            for index, fd in enumerate(self._fds)
        ]
        for queue in self._queues:
            self._add_thread(f"tun-{name}-q{queue.index}-rx", queue.read_loop)
            self._add_thread(f"tun-{name}-q{queue.index}-tx", queue.write_loop)
        # Started at the first recv_many/send_ready/send, not here: a native data plane may take
        # the descriptors over instead (take_descriptors), and then they never start.
        self._descriptors_taken = False

    def take_descriptors(self) -> tuple[list[int], bool]:
        """Hand the queue descriptors to a native data plane that reads and writes them itself:
        the device's own threads never start. Returns the descriptors (one per queue, still
        owned and closed by this device) and whether they carry vnet headers.

        :raises TunError: the device's threads already run (it was used through the contract).
        """
        if self._threads_started:
            raise TunError(f"{self.name}: already carrying packets through its own threads")
        self._check_open()
        self._descriptors_taken = True
        return list(self._fds), self.offloads

    # -- the Tun contract ---------------------------------------------------------------

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not sys.platform.startswith("linux"):
            return f"needs Linux (this system is {sys.platform})"
        if not os.path.exists(TUN_PATH):
            return f"{TUN_PATH} is missing (load the 'tun' kernel module)"
        if importlib.util.find_spec("pyroute2") is None:
            return "needs the pyroute2 package"
        return None

    @classmethod
    async def create(cls, options: TunOptions) -> Self:
        reason = cls.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"{cls.backend_name}: {reason}")
        running_asyncio_loop(cls.backend_name)
        # Shielded: a cancellation must not strand descriptors opened by the worker thread.
        with anyio.CancelScope(shield=True):
            name, fds, vnet_hdr = await anyio.to_thread.run_sync(_open_and_configure, options)
        try:
            return cls(fds, name=name, options=options, vnet_hdr=vnet_hdr)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    async def send_ready(self) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        self._start_threads()
        for queue in self._queues:
            await queue.outbound.wait_room(self.batch_size, self._closed_error)

    def send(self, packets: Sequence[Packet]) -> None:
        if len(packets) > self.batch_size:
            raise ValueError(f"at most {self.batch_size} packets per send, not {len(packets)}")
        self._check_open()
        self._start_threads()
        if not packets:
            return
        # Copies of anything but bytes: the writers use the packets after send() returns,
        # when the caller may already have reused its buffers.
        if self.queues == 1:
            batch = [p if type(p) is bytes else bytes(p) for p in packets]
            dropped = self._queues[0].outbound.put(batch, self._closed_error)
        else:
            queues = self.queues
            buckets: list[list[bytes]] = [[] for _ in range(queues)]
            for packet in packets:
                data = packet if type(packet) is bytes else bytes(packet)
                buckets[hash(flow_key(data)) % queues].append(data)
            dropped = 0
            for queue, bucket in zip(self._queues, buckets, strict=True):
                if bucket:
                    dropped += queue.outbound.put(bucket, self._closed_error)
        if dropped:
            self._send_drops["tx_queue_full"] += dropped

    async def add_routes(self, networks: Sequence[IPv4Network | IPv6Network]) -> None:
        """Route ``networks`` into this device (see :func:`.netlink.add_routes`).

        The kernel drops a device's routes when the device goes; :meth:`aclose` also removes
        the recorded ones (:attr:`routes`) explicitly while the device still exists.
        """
        self._check_open()
        await self._routing.add(networks)

    async def remove_routes(self, networks: Sequence[IPv4Network | IPv6Network]) -> None:
        """Remove the routes :meth:`add_routes` added for ``networks``."""
        self._check_open()
        await self._routing.remove(networks)

    async def route_all_traffic(
        self, networks: Sequence[IPv4Network | IPv6Network], mark: int
    ) -> None:
        """Full tunnel with policy routing, like ``wg-quick`` (see
        :meth:`.routing.DeviceRoutes.route_all_traffic`)."""
        self._check_open()
        await self._routing.route_all_traffic(networks, mark)

    @property
    def routes(self) -> list[Route]:
        """The routes :meth:`add_routes` added (not those that were already there)."""
        return self._routing.routes

    # -- extras ---------------------------------------------------------------------------

    def stats(self) -> TunStats:
        """Packets and bytes read and written, drops by reason, and the same per queue."""
        queues = [queue.counters.stats() for queue in self._queues]
        drops: Counter[str] = Counter(self._send_drops)
        for queue in self._queues:
            drops.update(queue.counters.read_drops)
            drops.update(queue.counters.write_drops)
        return {
            "rx_packets": sum(q["rx_packets"] for q in queues),
            "rx_bytes": sum(q["rx_bytes"] for q in queues),
            "tx_packets": sum(q["tx_packets"] for q in queues),
            "tx_bytes": sum(q["tx_bytes"] for q in queues),
            "rx_super_packets": sum(q["rx_super_packets"] for q in queues),
            "rx_segments": sum(q["rx_segments"] for q in queues),
            "tx_super_packets": sum(q["tx_super_packets"] for q in queues),
            "tx_coalesced_packets": sum(q["tx_coalesced_packets"] for q in queues),
            "drops": dict(drops),
            "queues": queues,
        }

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.name!r} queues={self.queues} {state}>"

    # -- ThreadedTun ------------------------------------------------------------------------

    def _start_threads(self) -> None:
        if self._descriptors_taken:
            self._check_open()
            raise TunError(f"{self.name}: the descriptors were handed to a native data plane")
        super()._start_threads()

    def _fail(self, error: TunError) -> None:
        if self._failure is None and not self._closed:
            log.warning("%s", error)
        super()._fail(error)

    def _wake_threads(self) -> None:
        os.write(self._stop_write, b"x")  # wakes every thread blocked in poll(), for good

    def _release(self) -> None:
        self._routing.release()
        stuck = self._join_threads()
        if stuck:
            # Closing a descriptor a live thread still uses could hit a reused number; leak
            # them instead (the process exit releases them).
            log.error("threads did not stop, leaving their descriptors open: %s", stuck)
            return
        for fd in (*self._fds, self._stop_read, self._stop_write):
            os.close(fd)


def _open_and_configure(options: TunOptions) -> tuple[str, list[int], bool]:
    """Worker thread: open the queues, then set MTU, txqueuelen, addresses and link up."""
    from tunplug_tun_linux_mq import netlink

    ops = options.packet_ops
    name, fds, vnet_hdr = open_queues(
        options.name, options.queues, options.offloads, rx_offloads=ops.rx_offloads if ops else None
    )
    try:
        netlink.configure_interface(name, options.addresses, options.mtu)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return name, fds, vnet_hdr
