"""UDP segmentation offload (GSO) and receive offload (GRO): the socket-level pieces.

Who calls it: :class:`tunplug.transport.UdpTransport`, which sends runs of equal-size datagrams
to one peer as a single ``sendmsg`` with a ``UDP_SEGMENT`` control message (the kernel, or the
NIC, cuts it into datagrams), and reads coalesced datagrams with ``UDP_GRO`` enabled (one
``recvmsg`` returns many datagrams of one size, the segment size in a control message).

Linux only (``UDP_SEGMENT`` since 4.18, ``UDP_GRO`` since 5.0); elsewhere the probes report
"unavailable" and the transport uses one system call per datagram. The constants are absent
from Python's :mod:`socket` module; their values come from ``linux/udp.h``.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields

#: ``SOL_UDP``, the socket option level of the two options below (``IPPROTO_UDP``).
SOL_UDP = 17
#: Socket option and control message: send a buffer as datagrams of this many bytes each.
UDP_SEGMENT = 103
#: Socket option: deliver coalesced datagrams; the control message carries the segment size.
UDP_GRO = 104

#: Most segments in one GSO send. The kernel's ``UDP_MAX_SEGMENTS`` was 64 until Linux 6.16
#: raised it to 128; 64 works everywhere.
GSO_MAX_SEGMENTS = 64
#: Most payload bytes in one GSO send: the IPv4 limit (65535 - 20 IP - 8 UDP), which is also
#: below IPv6's.
GSO_MAX_BYTES = 65507
#: Receive buffer for one (possibly coalesced) read: the largest UDP payload.
GRO_BUFFER_BYTES = 65535

#: errnos meaning "this socket or route cannot do GSO": EIO when the device has no transmit
#: checksum offload (wireguard-go turns GSO off on it), EINVAL for a segment larger than the
#: path MTU or an IPsec route, ENOPROTOOPT/EOPNOTSUPP on kernels without ``UDP_SEGMENT``.
GSO_REFUSED_ERRNOS = frozenset({errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP})

_SEGMENT_SIZE = struct.Struct("=H")
_GRO_SIZE = struct.Struct("=i")


@dataclass(slots=True)
class UdpStats:
    """What a :class:`~tunplug.transport.UdpTransport` did, counted per system call.

    ``datagrams_sent``/``datagrams_received`` count datagrams however they travelled;
    ``gso_sends``/``gso_segments`` the GSO ``sendmsg`` calls and the datagrams they carried;
    ``gro_reads``/``gro_segments`` the reads that returned a coalesced buffer and the datagrams
    split from it; ``gso_fallbacks`` the GSO sends the kernel refused (their datagrams were
    then sent one by one, so nothing was lost).
    """

    gso_enabled: bool = False
    gro_enabled: bool = False
    send_calls: int = 0
    datagrams_sent: int = 0
    gso_sends: int = 0
    gso_segments: int = 0
    gso_fallbacks: int = 0
    recv_calls: int = 0
    datagrams_received: int = 0
    gro_reads: int = 0
    gro_segments: int = 0
    truncated: int = 0

    def as_dict(self) -> dict[str, int | bool]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def probe_gso(sock: socket.socket) -> bool:
    """Whether the kernel knows ``UDP_SEGMENT`` for this socket (a refused send still may)."""
    if sys.platform != "linux" or sock.type != socket.SOCK_DGRAM:
        return False
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def enable_gro(sock: socket.socket) -> bool:
    """Ask the kernel to deliver coalesced datagrams on ``sock``; False when it cannot."""
    if sys.platform != "linux" or sock.type != socket.SOCK_DGRAM:
        return False
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def gro_control_space() -> int:
    """Control buffer size for the ``UDP_GRO`` message (one C int)."""
    return socket.CMSG_SPACE(_GRO_SIZE.size)


def segment_control(segment_size: int) -> list[tuple[int, int, bytes]]:
    """The ancillary data of a GSO ``sendmsg``: cut the payload every ``segment_size`` bytes."""
    return [(SOL_UDP, UDP_SEGMENT, _SEGMENT_SIZE.pack(segment_size))]


def gro_segment_size(ancdata: Sequence[tuple[int, int, bytes]]) -> int:
    """The segment size a ``UDP_GRO`` control message reports, or 0 when there is none."""
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= _GRO_SIZE.size:
            size: int = _GRO_SIZE.unpack_from(data)[0]
            return size
    return 0


def split_segments(data: bytes, segment_size: int) -> list[bytes]:
    """Cut a coalesced payload into its datagrams (every one ``segment_size`` bytes but the
    last, which may be shorter).

    Slicing ``bytes`` copies each segment once; measured faster than reading into a reused
    buffer and copying out of it, and the parts stay valid however long the caller keeps them.
    """
    size = len(data)
    if segment_size <= 0 or segment_size >= size:
        return [data]
    return [data[start : start + segment_size] for start in range(0, size, segment_size)]


def gso_runs(
    datagrams: Sequence[tuple[bytes | memoryview, object]],
    max_segments: int = GSO_MAX_SEGMENTS,
    max_bytes: int = GSO_MAX_BYTES,
) -> list[tuple[int, int]]:
    """Cut a batch into GSO runs, as ``(start, stop)`` index pairs covering it in order.

    A run is consecutive datagrams to one endpoint, all as long as the first except that the
    last may be shorter, at most ``max_segments`` of them and ``max_bytes`` in total. Its
    segment size is the length of its first datagram. A run of one is sent plainly.
    """
    runs: list[tuple[int, int]] = []
    count = len(datagrams)
    start = 0
    while start < count:
        data, endpoint = datagrams[start]
        segment = total = len(data)
        end = start + 1
        if segment:
            stop = min(count, start + max_segments)
            while end < stop:
                data, other = datagrams[end]
                size = len(data)
                if (
                    size > segment
                    or total + size > max_bytes
                    or (other is not endpoint and other != endpoint)
                ):
                    break
                total += size
                end += 1
                if size < segment:
                    break  # a shorter datagram may only be last
        runs.append((start, end))
        start = end
    return runs
