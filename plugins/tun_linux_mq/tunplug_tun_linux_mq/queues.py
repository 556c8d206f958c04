"""The queues of a linux-mq device: each one's descriptor, counters, reader and writer thread.

Who calls it: :class:`tunplug_tun_linux_mq.device.LinuxMultiQueueTun`, which makes one
:class:`DeviceQueue` per descriptor and runs :meth:`DeviceQueue.read_loop` and
:meth:`DeviceQueue.write_loop` in that queue's two threads.

- **Reading.** The reader reads one packet per ``read()`` from its non-blocking descriptor until
  the queue is empty or a batch is full, then hands the batch to the event loop through the
  device's :class:`~tunplug.threaded.Inbound` channel. When the channel is full the reader
  blocks, the kernel's own queue fills and the kernel drops, so memory stays bounded. It
  sleeps in ``poll()`` on its descriptor and the device's stop pipe only when its queue is
  empty (a blocking ``read()`` could not be interrupted at shutdown: closing a descriptor does
  not wake a thread blocked on it).
- **Writing.** The writer takes chunks from its :class:`~tunplug.threaded.Outbound` channel and
  writes them in order. A packet the kernel rejects is dropped and counted; a dead device
  (EBADFD: the interface was deleted) fails the device.
- **With vnet headers** (offloads) every read and write starts with a ``virtio_net_hdr``
  (:mod:`.offload`): the reader unwraps plain packets and splits TSO/USO super-packets, the
  writer coalesces each chunk's runs of same-flow TCP segments (one ``writev()`` each).

``select`` is imported inside the thread bodies, so this module imports on every OS.
"""

from __future__ import annotations

import errno
import os
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

from tunplug.exceptions import ClosedResource, TunError, map_os_errors
from tunplug_tun_linux_mq.offload import VNET_HDR_LEN, OffloadError, Write

if TYPE_CHECKING:
    import select

    from tunplug.threaded import Inbound, Outbound

#: Bytes asked of each ``read()``: the largest IP packet, so a raised MTU never truncates.
READ_SIZE = 65535

#: Errors that mean the device itself is gone; any other write error only drops the packet.
DEVICE_GONE = frozenset({errno.EBADF, errno.EBADFD, errno.ENODEV, errno.ENXIO})


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


class QueueCounters:
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

    def stats(self) -> QueueStats:
        return {
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "rx_super_packets": self.rx_super_packets,
            "rx_segments": self.rx_segments,
            "tx_super_packets": self.tx_super_packets,
            "tx_coalesced_packets": self.tx_coalesced_packets,
        }


@dataclass(frozen=True, slots=True)
class QueueShared:
    """What every queue of one device shares.

    ``stop_fd`` is the read end of the device's stop pipe: readable once the device closes.
    ``split`` and ``coalesce`` are the data path's offload functions. ``fail`` fails the
    device (any thread; it ignores errors once the device is closed).
    """

    device_name: str
    batch_size: int
    vnet_hdr: bool
    stop_fd: int
    inbound: Inbound
    split: Callable[[memoryview], list[bytes]]
    coalesce: Callable[[list[bytes]], list[Write]]
    fail: Callable[[TunError], None]


class DeviceQueue:
    """One queue: its descriptor (owned by the device), counters, and thread bodies."""

    def __init__(self, index: int, fd: int, outbound: Outbound, shared: QueueShared) -> None:
        self.index = index
        self.fd = fd
        self.outbound = outbound
        self.counters = QueueCounters()
        self._shared = shared

    def read_loop(self) -> None:
        """The reader thread: read batches into the inbound channel until closed or failed."""
        import select

        shared = self._shared
        fd, stop_fd, vnet_hdr = self.fd, shared.stop_fd, shared.vnet_hdr
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(stop_fd, select.POLLIN)
        counters = self.counters
        inbound = shared.inbound
        batch_size = shared.batch_size
        read = os.read
        readv = os.readv
        # With offloads: one buffer per reader, big enough for a vnet header + a super-packet.
        buffer = bytearray(VNET_HDR_LEN + READ_SIZE if vnet_hdr else 0)
        buffers, view = [buffer], memoryview(buffer)
        batch: list[bytes] = []
        while True:
            try:
                if vnet_hdr:
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
                    if ready == stop_fd:
                        return
                continue
            except OSError as exc:
                # What was read still goes to the loop (a closed channel refuses it).
                if batch:
                    inbound.put(batch, counters)
                shared.fail(io_error(exc, f"read from {shared.device_name} queue {self.index}"))
                return
            if not (packet or frame):  # end of file: only a stand-in (socket) does this
                if batch:
                    inbound.put(batch, counters)
                shared.fail(
                    ClosedResource(f"TUN device {shared.device_name!r} queue {self.index} hung up")
                )
                return
            if packet:
                batch.append(packet)
            elif len(frame) > VNET_HDR_LEN and not (frame[0] or frame[1]):
                batch.append(bytes(frame[VNET_HDR_LEN:]))  # a finished packet: just unwrap
            else:
                self._split_into(batch, frame)
            if len(batch) >= batch_size:
                if not inbound.put(batch, counters):
                    return
                batch = []

    def _split_into(self, batch: list[bytes], frame: memoryview) -> None:
        """Reader thread: append the packets of a read with a vnet header to ``batch``."""
        counters = self.counters
        try:
            packets = self._shared.split(frame)
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

    def write_loop(self) -> None:
        """The writer thread: write what the outbound channel holds until it is closed."""
        import select

        shared = self._shared
        fd = self.fd
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        poller.register(shared.stop_fd, select.POLLIN)
        counters = self.counters
        outbound = self.outbound
        write_one = self._write_one
        coalesce = shared.coalesce
        while True:
            chunk = outbound.take()
            if chunk is None:
                return
            written = written_bytes = 0
            if shared.vnet_hdr:
                for buffers, count, size in coalesce(chunk):
                    done = write_one(poller, os.writev, buffers, count)
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
                    done = write_one(poller, os.write, packet, 1)
                    if done is None:
                        return
                    if done:
                        written += 1
                        written_bytes += len(packet)
            counters.tx_packets += written
            counters.tx_bytes += written_bytes
            outbound.done(len(chunk))

    def _write_one(
        self, poller: select.poll, write: Callable[[int, Any], int], data: Any, count: int
    ) -> bool | None:
        """Writer thread: ``write(fd, data)``; ``False`` if dropped, ``None`` to stop."""
        while True:
            try:
                write(self.fd, data)
            except BlockingIOError:
                # A tun device hardly ever refuses; a socket stand-in does when full.
                if any(ready == self._shared.stop_fd for ready, _ in poller.poll()):
                    return None
                continue
            except OSError as exc:
                if exc.errno in DEVICE_GONE:
                    action = f"write to {self._shared.device_name} queue {self.index}"
                    self._shared.fail(io_error(exc, action))
                    return None
                reason = errno.errorcode.get(exc.errno or 0, str(exc.errno)).lower()
                self.counters.write_drops[f"write_{reason}"] += count
                return False
            return True


def io_error(exc: OSError, action: str) -> TunError:
    """The tunplug error for ``exc`` (while doing ``action``); a vanished device is closed."""
    if exc.errno in DEVICE_GONE:
        reason = f"{exc.strerror} (was the interface deleted?)"
        return ClosedResource(f"failed to {action}: {reason}", exc.errno)
    try:
        with map_os_errors(action):
            raise exc
    except TunError as error:
        return error
