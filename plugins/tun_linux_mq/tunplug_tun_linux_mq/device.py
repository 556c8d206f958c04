"""The ``linux-mq`` TUN backend: a Linux TUN device driven by a reader and a writer per queue.

Who calls it: the engine, through the :class:`~tunplug.tun.Tun` contract, once the
``tun-linux-mq`` plugin registered :class:`LinuxMultiQueueTun`.

How it works:

- **Creation.** ``/dev/net/tun`` is opened once per queue with ``IFF_TUN | IFF_NO_PI |
  IFF_MULTI_QUEUE``. The first open also sets ``IFF_TUN_EXCL``: if any device of that name
  exists (another process's, or a persistent one) the kernel answers EBUSY and we refuse,
  instead of silently sharing a device and splitting its traffic (what made Firezone drop
  multi-queue). The device is not persistent: it vanishes when the last descriptor closes,
  also when the process is killed.
- **Reading.** Each queue has a reader thread (``tun-<name>-q<i>-rx``) that reads one packet
  per ``read()`` from its non-blocking descriptor until the queue is empty or a batch is
  full, then hands the batch to the event loop through :class:`._channels.Inbound`: a
  lock-protected deque of at most ``RX_QUEUE_BATCHES`` batches per queue. When it is full the
  reader blocks, the kernel's own queue fills and the kernel drops, so memory stays bounded.
  The reader sleeps in ``poll()`` on its descriptor and a stop pipe only when its queue is
  empty (a blocking ``read()`` could not be interrupted at shutdown: closing a descriptor
  does not wake a thread blocked on it).
- **Hand-off to the event loop.** A batch costs one uncontended lock; the loop is woken
  (``call_soon_threadsafe`` setting an :class:`asyncio.Event`) only when a task is actually
  waiting. The kernel already spreads flows over the queues on this side.
- **Writing.** :meth:`LinuxMultiQueueTun.send` puts each packet in the bounded queue of the
  writer thread (``tun-<name>-q<i>-tx``) chosen by its flow hash (:mod:`.flow`), so one flow
  is always written by one thread, in order. :meth:`~LinuxMultiQueueTun.send_ready` waits until
  every writer queue has room for a whole batch. A packet the kernel rejects is dropped and
  counted; a dead device (EBADFD: the interface was deleted) fails the device.
- **Shutdown.** :meth:`~LinuxMultiQueueTun.aclose` writes to the stop pipe (waking every thread
  blocked in ``poll()``), closes the channels (waking threads blocked on them), joins the
  threads and only then closes the descriptors, so no thread can touch a reused descriptor.

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

import asyncio
import errno
import importlib.util
import logging
import os
import struct
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING, Any, Self, TypedDict

import anyio
import anyio.lowlevel

from tunplug._channels import Inbound, Outbound, fresh
from tunplug.exceptions import (
    BackendUnavailable,
    ClosedResource,
    TunError,
    map_os_errors,
)
from tunplug.sysctl_record import SysctlRecord, netns_record
from tunplug.tun import Packet, Tun, TunOptions
from tunplug_tun_linux_mq._open import TUN_PATH, open_queues
from tunplug_tun_linux_mq.flow import flow_key
from tunplug_tun_linux_mq.offload import VNET_HDR_LEN, OffloadError, Write, coalesce, split

if TYPE_CHECKING:
    import select

    from tunplug_tun_linux_mq.netlink import Route, Rule

log = logging.getLogger(__name__)

#: Batches each reader may have waiting for the event loop before it blocks.
RX_QUEUE_BATCHES = 4
#: Batches (of up to ``batch_size`` packets) each writer queue holds.
TX_QUEUE_BATCHES = 4
#: Bytes asked of each ``read()``: the largest IP packet, so a raised MTU never truncates.
READ_SIZE = 65535
#: How long :meth:`LinuxMultiQueueTun.aclose` waits for each thread to stop.
JOIN_TIMEOUT_SECONDS = 5.0

#: Priority of the full-tunnel rules (``suppress_prefixlength`` rule, then the fwmark rule):
#: before the main table's 32766, like ``wg-quick``'s.
RULE_PRIORITY = 32764
#: The kernel's main routing table.
MAIN_TABLE_ID = 254
#: Lets reverse-path filtering accept replies to marked packets (``wg-quick`` sets it too).
SRC_VALID_MARK = "/proc/sys/net/ipv4/conf/all/src_valid_mark"

#: Errors that mean the device itself is gone; any other write error only drops the packet.
_DEVICE_GONE = frozenset({errno.EBADF, errno.EBADFD, errno.ENODEV, errno.ENXIO})


class QueueStats(TypedDict):
    """Counters of one queue (its reader and its writer)."""

    rx_packets: int
    rx_bytes: int
    tx_packets: int
    tx_bytes: int
    #: Offloads: TSO/USO super-packets read, and the packets they were split into.
    rx_super_packets: int
    rx_segments: int
    #: Offloads: super-packets written, and the packets coalesced into them.
    tx_super_packets: int
    tx_coalesced_packets: int


class TunStats(QueueStats):
    """What :meth:`LinuxMultiQueueTun.stats` returns: totals, drops by reason, per queue."""

    #: e.g. ``{"tx_queue_full": 3, "write_einval": 1}``.
    drops: dict[str, int]
    queues: list[QueueStats]


class _Counters:
    """One queue's counters. Each field has a single writer thread, so no lock is needed."""

    __slots__ = (
        "read_drops",
        "rx_bytes",
        "rx_packets",
        "rx_segments",
        "rx_super_packets",
        "tx_bytes",
        "tx_coalesced_packets",
        "tx_packets",
        "tx_super_packets",
        "write_drops",
    )

    def __init__(self) -> None:
        self.rx_packets = self.rx_bytes = self.tx_packets = self.tx_bytes = 0
        self.rx_super_packets = self.rx_segments = 0
        self.tx_super_packets = self.tx_coalesced_packets = 0
        self.read_drops: Counter[str] = Counter()
        self.write_drops: Counter[str] = Counter()


class LinuxMultiQueueTun(Tun):
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

    def __init__(
        self, fds: Sequence[int], *, name: str, options: TunOptions, vnet_hdr: bool = False
    ) -> None:
        if not fds:
            raise ValueError("at least one descriptor (queue) is needed")
        loop = _running_asyncio_loop()
        self.name = name
        self.mtu = options.mtu
        self.queues = len(fds)
        self.batch_size = options.batch_size
        self.offloads = vnet_hdr
        ops = options.packet_ops
        # The data path's offload surgery (the native core's), else this plugin's Python one.
        self._split: Callable[[memoryview], list[bytes]] = ops.split if ops else split
        self._coalesce: Callable[[list[bytes]], list[Write]] = ops.coalesce if ops else coalesce
        self._fds = list(fds)
        self._closed = False
        self._closed_error = ClosedResource(f"TUN device {name!r} is closed")
        self._failure: TunError | None = None
        self._routes: list[Route] = []
        self._rules: list[Rule] = []
        self._sysctl_restore: dict[str, str] = {}
        self._sysctl_record: SysctlRecord | None = None
        self._counters = [_Counters() for _ in fds]
        self._send_drops: Counter[str] = Counter()
        self._inbound = Inbound(loop, RX_QUEUE_BATCHES * self.queues)
        capacity = TX_QUEUE_BATCHES * self.batch_size
        self._outbound = [Outbound(loop, capacity) for _ in fds]
        for fd in self._fds:
            os.set_blocking(fd, False)
        self._stop_read, self._stop_write = os.pipe()
        self._threads: list[threading.Thread] = []
        for index, fd in enumerate(self._fds):
            for role, target in (("rx", self._read_loop), ("tx", self._write_loop)):
                thread = threading.Thread(
                    target=target,
                    args=(index, fd),
                    name=f"tun-{name}-q{index}-{role}",
                    daemon=True,  # never hold up interpreter exit; aclose joins them
                )
                self._threads.append(thread)
        # Started at the first recv_many/send_ready/send, not here: a native data plane may take
        # the descriptors over instead (take_descriptors), and then they never start.
        self._threads_started = False
        self._descriptors_taken = False

    def _start_threads(self) -> None:
        if not self._threads_started:
            self._check_open()
            if self._descriptors_taken:
                raise TunError(f"{self.name}: the descriptors were handed to a native data plane")
            self._threads_started = True
            for thread in self._threads:
                thread.start()

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
        _running_asyncio_loop()
        # Shielded: a cancellation must not strand descriptors opened by the worker thread.
        with anyio.CancelScope(shield=True):
            name, fds, vnet_hdr = await anyio.to_thread.run_sync(_open_and_configure, options)
        try:
            return cls(fds, name=name, options=options, vnet_hdr=vnet_hdr)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    async def recv_many(self, max_packets: int | None = None) -> Sequence[Packet]:
        self._start_threads()
        max_packets = self.batch_limit(max_packets)
        # A checkpoint even when packets are ready, so a busy device cannot starve the loop.
        await anyio.lowlevel.checkpoint()
        return await self._inbound.get(max_packets, self._closed_error)

    async def send_ready(self) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        self._start_threads()
        for outbound in self._outbound:
            await outbound.wait_room(self.batch_size, self._closed_error)

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
            dropped = self._outbound[0].put(batch, self._closed_error)
        else:
            queues = self.queues
            buckets: list[list[bytes]] = [[] for _ in range(queues)]
            for packet in packets:
                data = packet if type(packet) is bytes else bytes(packet)
                buckets[hash(flow_key(data)) % queues].append(data)
            dropped = 0
            for outbound, bucket in zip(self._outbound, buckets, strict=True):
                if bucket:
                    dropped += outbound.put(bucket, self._closed_error)
        if dropped:
            self._send_drops["tx_queue_full"] += dropped

    async def add_routes(self, networks: Sequence[IPv4Network | IPv6Network]) -> None:
        """Route ``networks`` into this device (see :func:`.netlink.add_routes`).

        The kernel drops a device's routes when the device goes; :meth:`aclose` also removes
        the recorded ones (:attr:`routes`) explicitly while the device still exists.
        """
        from tunplug_tun_linux_mq import netlink

        self._check_open()
        # Shielded so that routes added by the worker thread are always recorded.
        with anyio.CancelScope(shield=True):
            added = await anyio.to_thread.run_sync(netlink.add_routes, self.name, networks)
        self._routes.extend(added)

    async def remove_routes(self, networks: Sequence[IPv4Network | IPv6Network]) -> None:
        """Remove the routes :meth:`add_routes` added for ``networks``."""
        from tunplug_tun_linux_mq import netlink

        self._check_open()
        wanted = set(networks)
        going = [route for route in self._routes if route.network in wanted]
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(netlink.remove_routes, going)
        self._routes = [route for route in self._routes if route not in going]

    async def route_all_traffic(
        self, networks: Sequence[IPv4Network | IPv6Network], mark: int
    ) -> None:
        """Full tunnel with policy routing (see :meth:`Tun.route_all_traffic`).

        Like ``wg-quick``: the default route of each family goes into table ``mark``; rule
        ``not fwmark mark lookup mark`` sends unmarked packets there, and a rule before it,
        ``lookup main suppress_prefixlength 0``, keeps every main-table route except the
        default one. Rules left by a run that was killed are replaced.
        """
        from tunplug_tun_linux_mq import netlink

        self._check_open()
        defaults = [network for network in networks if network.prefixlen == 0]
        families = sorted({network.version for network in defaults})
        rules = [
            rule
            for family in families
            for rule in (
                netlink.Rule(family, RULE_PRIORITY, MAIN_TABLE_ID, suppress_prefixlength=0),
                netlink.Rule(family, RULE_PRIORITY + 1, mark, fwmark=mark, invert=True),
            )
        ]

        def apply() -> None:
            routes = netlink.add_routes(self.name, defaults, table=mark)
            self._routes.extend(routes)
            netlink.remove_rules(rules)  # leftovers of a killed run: same rules, same table
            self._rules.extend(netlink.add_rules(rules))
            if 4 in families:
                self._set_src_valid_mark()

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(apply)
        log.info("full tunnel through %s: %s", self.name, "; ".join(map(str, rules)))

    def _set_src_valid_mark(self) -> None:
        """src_valid_mark on for the full tunnel, the value from before kept in a record
        (:mod:`tunplug.sysctl_record`), so that the run after a SIGKILL puts back the value
        from before the killed run, not the ``1`` it left."""
        record = SysctlRecord(netns_record("tun-linux-mq-src-valid-mark"), "src_valid_mark left on")
        restore = record.adopt()
        try:
            with open(SRC_VALID_MARK, encoding="ascii") as file:
                current = file.read().strip()
        except OSError as exc:
            log.warning("cannot read %s: %s", SRC_VALID_MARK, exc.strerror)
            return
        if current != "1":
            restore.setdefault(SRC_VALID_MARK, current)
        if restore:
            try:
                record.write(restore)
            except OSError as exc:
                log.warning("cannot keep %s: %s (a killed run leaves src_valid_mark on)",
                            record.path, exc.strerror)  # fmt: skip
        self._sysctl_record = record
        self._sysctl_restore.update(restore)
        _set_sysctl(SRC_VALID_MARK, "1")

    @property
    def routes(self) -> list[Route]:
        """The routes :meth:`add_routes` added (not those that were already there)."""
        return list(self._routes)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        os.write(self._stop_write, b"x")  # wakes every thread blocked in poll(), for good
        self._inbound.close()
        for outbound in self._outbound:
            outbound.close()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._join_and_release)

    # -- extras ---------------------------------------------------------------------------

    def stats(self) -> TunStats:
        """Packets and bytes read and written, drops by reason, and the same per queue."""
        queues: list[QueueStats] = [
            {
                "rx_packets": c.rx_packets,
                "rx_bytes": c.rx_bytes,
                "tx_packets": c.tx_packets,
                "tx_bytes": c.tx_bytes,
                "rx_super_packets": c.rx_super_packets,
                "rx_segments": c.rx_segments,
                "tx_super_packets": c.tx_super_packets,
                "tx_coalesced_packets": c.tx_coalesced_packets,
            }
            for c in self._counters
        ]
        drops: Counter[str] = Counter(self._send_drops)
        for counters in self._counters:
            drops.update(counters.read_drops)
            drops.update(counters.write_drops)
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

    # -- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise fresh(self._closed_error)
        if self._failure is not None:
            raise fresh(self._failure)

    def _fail(self, error: TunError) -> None:
        """Any thread: the device broke; every waiting and later call raises ``error``."""
        if self._failure is None:
            self._failure = error
            log.warning("%s", error)
        self._inbound.fail(error)
        for outbound in self._outbound:
            outbound.fail(error)

    def _read_loop(self, index: int, fd: int) -> None:
        import select

        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._stop_read, select.POLLIN)
        counters = self._counters[index]
        inbound = self._inbound
        batch_size = self.batch_size
        read = os.read
        readv = os.readv
        # With offloads: one buffer per reader, big enough for a vnet header + a super-packet.
        buffer = bytearray(VNET_HDR_LEN + READ_SIZE if self.offloads else 0)
        buffers, view = [buffer], memoryview(buffer)
        batch: list[bytes] = []
        while True:
            try:
                if self.offloads:
                    frame = view[: readv(fd, buffers)]
                    packet = b""
                else:
                    packet = read(fd, READ_SIZE)
                    frame = view
            except BlockingIOError:
                if batch:
                    if not inbound.put(batch, counters):
                        return
                    batch = []
                    continue  # more may have arrived meanwhile: read before sleeping
                for ready, _ in poller.poll():
                    if ready == self._stop_read:
                        return
                continue
            except OSError as exc:
                if not self._closed:
                    if batch:
                        inbound.put(batch, counters)
                    self._fail(_io_error(exc, f"read from {self.name} queue {index}"))
                return
            if not (packet or frame):  # end of file: only a stand-in (socket) does this
                if not self._closed:
                    if batch:
                        inbound.put(batch, counters)
                    self._fail(ClosedResource(f"TUN device {self.name!r} queue {index} hung up"))
                return
            if packet:
                batch.append(packet)
            elif len(frame) > VNET_HDR_LEN and not (frame[0] or frame[1]):
                batch.append(bytes(frame[VNET_HDR_LEN:]))  # a finished packet: just unwrap
            else:
                self._split_into(batch, frame, counters)
            if len(batch) >= batch_size:
                if not inbound.put(batch, counters):
                    return
                batch = []

    def _split_into(self, batch: list[bytes], frame: memoryview, counters: _Counters) -> None:
        """Reader thread: append the packets of a read with a vnet header to ``batch``."""
        try:
            packets = self._split(frame)
        except ValueError as exc:  # OffloadError, or the native core's (reason in args[0])
            reason = exc.reason if isinstance(exc, OffloadError) else str(exc.args[0])
            counters.read_drops[reason] += 1
            return
        except (IndexError, struct.error):
            # The Python reference still misreads a few malformed super-packets (a TCP header
            # cut short, an IPv6 USO csum_start inside the IP header): a drop, never a dead
            # reader thread. The native split refuses them as rx_malformed_gso.
            counters.read_drops["rx_malformed_gso"] += 1
            return
        if frame[1]:
            counters.rx_super_packets += 1
            counters.rx_segments += len(packets)
        batch.extend(packets)

    def _write_loop(self, index: int, fd: int) -> None:
        import select

        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        poller.register(self._stop_read, select.POLLIN)
        counters = self._counters[index]
        outbound = self._outbound[index]
        write_one = self._write_one
        while True:
            chunk = outbound.take()
            if chunk is None:
                return
            written = written_bytes = 0
            if self.offloads:
                for buffers, count, size in self._coalesce(chunk):
                    done = write_one(index, fd, poller, os.writev, buffers, count)
                    if done is None:
                        return
                    if done:
                        written += count
                        written_bytes += size
                        if count > 1:
                            counters.tx_super_packets += 1
                            counters.tx_coalesced_packets += count
            else:
                for packet in chunk:
                    done = write_one(index, fd, poller, os.write, packet, 1)
                    if done is None:
                        return
                    if done:
                        written += 1
                        written_bytes += len(packet)
            counters.tx_packets += written
            counters.tx_bytes += written_bytes
            outbound.done(len(chunk))

    def _write_one(
        self,
        index: int,
        fd: int,
        poller: select.poll,
        write: Callable[[int, Any], int],
        data: Any,
        count: int,
    ) -> bool | None:
        """Writer thread: ``write(fd, data)``; ``False`` if dropped, ``None`` to stop."""
        while True:
            try:
                write(fd, data)
            except BlockingIOError:
                # A tun device hardly ever refuses; a socket stand-in does when full.
                if any(ready == self._stop_read for ready, _ in poller.poll()):
                    return None
                continue
            except OSError as exc:
                if exc.errno in _DEVICE_GONE:
                    if not self._closed:
                        self._fail(_io_error(exc, f"write to {self.name} queue {index}"))
                    return None
                reason = errno.errorcode.get(exc.errno or 0, str(exc.errno)).lower()
                self._counters[index].write_drops[f"write_{reason}"] += count
                return False
            return True

    def _join_and_release(self) -> None:
        if self._rules:
            from tunplug_tun_linux_mq import netlink

            try:
                netlink.remove_rules(self._rules)
            except TunError as exc:
                log.error("%s: remove it with 'ip rule del'", exc)
            self._rules.clear()
        for path, value in self._sysctl_restore.items():
            _set_sysctl(path, value)
        self._sysctl_restore.clear()
        if self._sysctl_record is not None:
            self._sysctl_record.remove()
            self._sysctl_record = None
        if self._routes:
            from tunplug_tun_linux_mq import netlink

            try:
                netlink.remove_routes(self._routes)
            except TunError as exc:
                log.warning("%s (the kernel removes them with the device)", exc)
            self._routes.clear()
        stuck = []
        for thread in self._threads if self._threads_started else ():
            thread.join(JOIN_TIMEOUT_SECONDS)
            if thread.is_alive():
                stuck.append(thread.name)
        if stuck:
            # Closing a descriptor a live thread still uses could hit a reused number; leak
            # them instead (the process exit releases them).
            log.error("threads did not stop, leaving their descriptors open: %s", stuck)
            return
        for fd in (*self._fds, self._stop_read, self._stop_write):
            os.close(fd)


def _set_sysctl(path: str, value: str) -> dict[str, str]:
    """Write ``value`` to ``path``; returns ``{path: old value}`` when it changed anything."""
    try:
        with open(path, encoding="ascii") as file:
            old = file.read().strip()
        if old == value:
            return {}
        with open(path, "w", encoding="ascii") as file:
            file.write(value)
    except OSError as exc:
        log.warning("cannot set %s to %s: %s", path, value, exc.strerror)
        return {}
    return {path: old}


def _running_asyncio_loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise BackendUnavailable(
            "the linux-mq backend needs a running asyncio event loop (anyio's asyncio backend)"
        ) from None


def _io_error(exc: OSError, action: str) -> TunError:
    if exc.errno in _DEVICE_GONE:
        reason = f"{exc.strerror} (was the interface deleted?)"
        return ClosedResource(f"failed to {action}: {reason}", exc.errno)
    try:
        with map_os_errors(action):
            raise exc
    except TunError as error:
        return error


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
