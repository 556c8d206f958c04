"""Segmentation offloads of a Linux TUN device: the ``virtio_net_hdr`` packet surgery.

Who calls it: the reader and writer threads of :mod:`tunplug_tun_linux_mq.device` when the
device was opened with ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD``. Every read and write on such a
descriptor starts with a 10-byte ``struct virtio_net_hdr`` (``linux/virtio_net.h``, host byte
order as a tun device uses it by default).

- **Read (TSO/USO split).** The kernel hands over one *super-packet* of up to 64 KiB per read
  instead of MTU-sized segments, with its TCP/UDP checksum left partial (the pseudo-header sum
  in the checksum field, ``NEEDS_CSUM``). :func:`split` turns such a read back into ordinary IP
  packets, each with complete, valid checksums, so the Tun contract does not change.
- **Write (GRO coalesce).** :func:`coalesce` merges runs of same-flow TCP segments of a batch
  into super-packets the kernel accepts in one ``write()`` and takes apart itself, and gives
  everything else a zero header. It returns ``writev`` vectors, so payloads are not copied.

Pure functions over bytes, no platform modules: the tests run them without root. Checksums go
through :mod:`tunplug.checksum` (whole-buffer big-integer arithmetic, in C).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from tunplug.checksum import internet_checksum, ones_complement_sum

#: ``struct virtio_net_hdr``: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
VNET_HDR = struct.Struct("=BBHHHH")
VNET_HDR_LEN = VNET_HDR.size  # 10
#: The header of a packet that needs nothing from the kernel (checksums already complete).
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)

# virtio_net_hdr flags.
NEEDS_CSUM = 0x01
DATA_VALID = 0x02
# virtio_net_hdr gso_type values.
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3  # UFO: never negotiated here
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

#: Most segments :func:`coalesce` puts in one super-packet (Linux GRO's limit as well).
MAX_COALESCED_SEGMENTS = 64
#: Largest IPv4 total length, and largest IPv6 payload length.
MAX_IP_LENGTH = 0xFFFF

TCP = 6
UDP = 17
# TCP flag bits (byte 13 of the header).
_FIN, _SYN, _RST, _PSH, _ACK, _URG, _ECE, _CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
_TCP_CHECKSUM_OFFSET = 16
_UDP_CHECKSUM_OFFSET = 6
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

Buffer = bytes | bytearray | memoryview


class OffloadError(ValueError):
    """A read the backend cannot turn into packets; ``reason`` names the drop counter."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def needs_work(frame: Buffer) -> bool:
    """Whether a read (header included) is more than a header in front of a finished packet."""
    return bool(frame[0] & NEEDS_CSUM or frame[1])


# -- read side -------------------------------------------------------------------------------


def split(frame: Buffer) -> list[bytes]:
    """The ordinary IP packets carried by one read: ``frame`` is the vnet header + packet.

    ``gso_type`` NONE yields the packet itself, with its checksum completed when the kernel
    left it partial (``NEEDS_CSUM``). TCPV4/TCPV6 and UDP_L4 super-packets yield segments of
    ``gso_size`` payload bytes, each with its own IP length, IPv4 id and header checksum, TCP
    sequence number (FIN and PSH only on the last, CWR only on the first) and a complete L4
    checksum.

    :raises OffloadError: the header or packet is malformed, or the GSO type is not one the
        backend negotiated.
    """
    if len(frame) < VNET_HDR_LEN:
        raise OffloadError("rx_short_read", f"{len(frame)} bytes")
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(frame)
    packet = memoryview(frame)[VNET_HDR_LEN:]
    kind = gso_type & ~GSO_ECN
    if kind == GSO_NONE:
        if flags & NEEDS_CSUM:
            return [complete_checksum(packet, csum_start, csum_offset)]
        return [bytes(packet)]
    if kind not in (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4):
        raise OffloadError("rx_gso_unsupported", f"gso_type {gso_type:#x}")
    if not gso_size:
        raise OffloadError("rx_malformed_gso", "gso_size 0")
    version, l4 = _ip_layout(packet, csum_start if flags & NEEDS_CSUM else None)
    if (kind, version) in ((GSO_TCPV4, 6), (GSO_TCPV6, 4)):
        raise OffloadError("rx_malformed_gso", f"gso_type {gso_type:#x} on IPv{version}")
    if kind == GSO_UDP_L4:
        return _split_udp(packet, version, l4, gso_size)
    return _split_tcp(packet, version, l4, gso_size)


def complete_checksum(packet: memoryview, csum_start: int, csum_offset: int) -> bytes:
    """``packet`` with the partial checksum at ``csum_start + csum_offset`` completed.

    The kernel leaves the pseudo-header sum in the field, so the checksum of everything from
    ``csum_start`` on, field included, is the final value.
    """
    field = csum_start + csum_offset
    if field + 2 > len(packet):
        raise OffloadError("rx_malformed_csum", f"checksum at {field} of {len(packet)} bytes")
    checksum = internet_checksum(packet[csum_start:])
    if checksum == 0 and csum_offset == _UDP_CHECKSUM_OFFSET:
        checksum = 0xFFFF  # 0 means "no checksum" in UDP
    return b"".join((packet[:field], _U16.pack(checksum), packet[field + 2 :]))


def _ip_layout(packet: memoryview, csum_start: int | None) -> tuple[int, int]:
    """The IP version and the offset of the L4 header, checking the IP length fields."""
    if not packet:
        raise OffloadError("rx_malformed_gso", "empty packet")
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < 20 or _U16.unpack_from(packet, 2)[0] != len(packet):
            raise OffloadError("rx_truncated", "IPv4 total length differs from the read")
        l4 = (packet[0] & 0x0F) * 4
    elif version == 6:
        if len(packet) < 40 or _U16.unpack_from(packet, 4)[0] + 40 != len(packet):
            raise OffloadError("rx_truncated", "IPv6 payload length differs from the read")
        l4 = 40
    else:
        raise OffloadError("rx_malformed_gso", f"IP version {version}")
    if csum_start is not None:
        l4 = csum_start  # the kernel knows where L4 starts, after any IPv6 extension headers
    if l4 < 20 or l4 + 8 > len(packet):
        raise OffloadError("rx_malformed_gso", f"L4 header at {l4} of {len(packet)} bytes")
    return version, l4


def _address_sum(packet: Buffer, version: int) -> int:
    return ones_complement_sum(packet[12:20] if version == 4 else packet[8:40])


def _split_tcp(packet: memoryview, version: int, l4: int, gso_size: int) -> list[bytes]:
    header_end = l4 + (packet[l4 + 12] >> 4) * 4
    if header_end < l4 + 20 or header_end > len(packet):
        raise OffloadError("rx_malformed_gso", "TCP header length")
    return _segments(packet, version, l4, header_end, gso_size, TCP)


def _split_udp(packet: memoryview, version: int, l4: int, gso_size: int) -> list[bytes]:
    return _segments(packet, version, l4, l4 + 8, gso_size, UDP)


def _segments(
    packet: memoryview, version: int, l4: int, header_end: int, gso_size: int, protocol: int
) -> list[bytes]:
    """Cut ``packet``'s payload in ``gso_size`` pieces, each behind a fixed-up header copy."""
    total = len(packet)
    template = bytearray(packet[:header_end])
    if protocol == TCP:
        template[l4 + 16 : l4 + 18] = b"\0\0"
        seq = _U32.unpack_from(packet, l4 + 4)[0]
        flags = packet[l4 + 13]
    else:
        template[l4 + 6 : l4 + 8] = b"\0\0"
    ip_end = (packet[0] & 0x0F) * 4
    first_id = _U16.unpack_from(packet, 4)[0]
    address_sum = _address_sum(packet, version)
    segments: list[bytes] = []
    for index, start in enumerate(range(header_end, max(total, header_end + 1), gso_size)):
        end = min(start + gso_size, total)
        length = header_end + end - start
        header = bytearray(template)
        if version == 4:
            _U16.pack_into(header, 2, length)
            _U16.pack_into(header, 4, (first_id + index) & 0xFFFF)
            header[10:12] = b"\0\0"
            _U16.pack_into(header, 10, internet_checksum(memoryview(header)[:ip_end]))
        else:
            _U16.pack_into(header, 4, length - 40)
        if protocol == TCP:
            _U32.pack_into(header, l4 + 4, (seq + index * gso_size) & 0xFFFFFFFF)
            segment_flags = flags
            if end < total:
                segment_flags &= ~(_FIN | _PSH)
            if index:
                segment_flags &= ~_CWR
            header[l4 + 13] = segment_flags
            checksum_at = l4 + _TCP_CHECKSUM_OFFSET
        else:
            _U16.pack_into(header, l4 + 4, length - l4)
            checksum_at = l4 + _UDP_CHECKSUM_OFFSET
        payload = packet[start:end]
        payload_sum = ones_complement_sum(payload, address_sum + protocol + length - l4)
        checksum = internet_checksum(memoryview(header)[l4:], payload_sum)
        if checksum == 0 and protocol == UDP:
            checksum = 0xFFFF  # 0 means "no checksum" in UDP
        _U16.pack_into(header, checksum_at, checksum)
        segments.append(b"".join((header, payload)))
    return segments


# -- write side ------------------------------------------------------------------------------


class _Run:
    """Same-flow TCP segments :func:`coalesce` is collecting into one super-packet."""

    __slots__ = ("gso_size", "header_end", "l4", "length", "next_seq", "packets", "version")

    def __init__(self, packet: bytes, version: int, l4: int, header_end: int) -> None:
        self.packets = [packet]
        self.version = version
        self.l4 = l4
        self.header_end = header_end
        self.gso_size = len(packet) - header_end
        self.length = len(packet)  # of the super-packet: one header, every payload
        self.next_seq = (_U32.unpack_from(packet, l4 + 4)[0] + self.gso_size) & 0xFFFFFFFF

    def accepts(self, packet: bytes, l4: int, header_end: int, payload: int) -> bool:
        """Whether ``packet`` (same flow) can follow: same headers, next in sequence."""
        first = self.packets[0]
        return (
            header_end == self.header_end
            and l4 == self.l4
            and 0 < payload <= self.gso_size
            and len(self.packets) < MAX_COALESCED_SEGMENTS
            and self.length + payload - (l4 if self.version == 6 else 0) <= MAX_IP_LENGTH
            and _U32.unpack_from(packet, l4 + 4)[0] == self.next_seq
            # IPv4: TOS and TTL (the rest is fixed by the candidate check);
            # IPv6: version, traffic class, flow label and hop limit.
            and (
                packet[1] == first[1] and packet[8] == first[8]
                if self.version == 4
                else packet[:4] == first[:4] and packet[7] == first[7]
            )
            # ACK number and data offset; flags but PSH; window; urgent pointer and options.
            and packet[l4 + 8 : l4 + 13] == first[l4 + 8 : l4 + 13]
            and packet[l4 + 13] & ~_PSH == first[l4 + 13] & ~_PSH
            and packet[l4 + 14 : l4 + 16] == first[l4 + 14 : l4 + 16]
            and packet[l4 + 18 : header_end] == first[l4 + 18 : header_end]
        )

    def add(self, packet: bytes, payload: int) -> bool:
        """Append ``packet``; ``False`` when nothing may follow it (short or PSH)."""
        self.packets.append(packet)
        self.length += payload
        self.next_seq = (self.next_seq + payload) & 0xFFFFFFFF
        return payload == self.gso_size and not packet[self.l4 + 13] & _PSH


#: One ``writev`` for :func:`coalesce`'s caller: buffers (vnet header first), the number of
#: packets of the batch it carries, and their combined size.
Write = tuple[list[Buffer], int, int]


def coalesce(packets: Sequence[bytes], *, verify_checksums: bool = False) -> list[Write]:
    """Turn a batch into ``writev`` vectors for a descriptor with a vnet header.

    Consecutive segments of one TCP flow (in the batch's order for that flow, other flows may
    come between them) become one super-packet when they may: IPv4 without options and with
    DF, or IPv6 without extension headers; equal TOS/traffic class and TTL/hop limit; equal
    ACK number, window and options; only ACK set (PSH on the last); contiguous sequence
    numbers; equal payload sizes but a shorter last one; at most 64 segments and 64 KiB.
    Every other packet gets a zero header. A super-packet takes the place of its first
    segment, so the packets of one flow are never reordered.

    The kernel does not verify the checksums of a super-packet's segments. With
    ``verify_checksums`` a run whose IP or TCP checksums do not verify is written as single
    packets (the kernel then drops the bad ones), at the cost of one full checksum per segment
    (in CPython about as much as the ``write()`` it saves). The device leaves it off: its
    packets come out of WireGuard, authenticated, so a wrong checksum can only be the peer's
    own doing, and the peer could as well have sent a valid one.
    """
    entries: list[bytes | _Run] = []
    open_runs: dict[bytes, _Run] = {}
    for packet in packets:
        parsed = _tcp_layout(packet)
        if parsed is None:
            entries.append(packet)
            continue
        key, version, l4, header_end, candidate = parsed
        payload = len(packet) - header_end
        run = open_runs.get(key)
        if run is not None:
            if candidate and run.accepts(packet, l4, header_end, payload):
                if not run.add(packet, payload):
                    del open_runs[key]
                continue
            del open_runs[key]
        if candidate and payload:
            run = _Run(packet, version, l4, header_end)
            entries.append(run)
            if not packet[l4 + 13] & _PSH:
                open_runs[key] = run
        else:
            entries.append(packet)
    writes: list[Write] = []
    for entry in entries:
        if not isinstance(entry, _Run):
            writes.append(([ZERO_VNET_HDR, entry], 1, len(entry)))
        elif len(entry.packets) == 1 or (verify_checksums and not _checksums_valid(entry)):
            writes.extend(([ZERO_VNET_HDR, p], 1, len(p)) for p in entry.packets)
        else:
            writes.append(_super_packet(entry))
    return writes


def _tcp_layout(packet: bytes) -> tuple[bytes, int, int, int, bool] | None:
    """Flow key, IP version, L4 offset, header end and whether ``packet`` may be coalesced.

    ``None`` for anything but an unfragmented TCP packet (those never join a run, and do not
    break one).
    """
    length = len(packet)
    if length < 40:
        return None
    version = packet[0] >> 4
    if version == 4:
        l4 = (packet[0] & 0x0F) * 4
        if packet[9] != TCP or (packet[6] & 0x3F) or packet[7] or length < l4 + 20:
            return None
        key = packet[12:20] + packet[l4 : l4 + 4]
        candidate = l4 == 20 and packet[6] == 0x40 and _U16.unpack_from(packet, 2)[0] == length
    elif version == 6:
        l4 = 40
        if packet[6] != TCP or length < 60:
            return None  # extension headers: never coalesced, keyed like other protocols
        key = packet[8:44]
        candidate = _U16.unpack_from(packet, 4)[0] + 40 == length
    else:
        return None
    header_end = l4 + (packet[l4 + 12] >> 4) * 4
    candidate = candidate and l4 + 20 <= header_end <= length and packet[l4 + 13] & ~_PSH == _ACK
    return key, version, l4, header_end, candidate


def _checksums_valid(run: _Run) -> bool:
    l4, version = run.l4, run.version
    address_sum = _address_sum(run.packets[0], version)
    for packet in run.packets:
        if version == 4 and ones_complement_sum(packet[:20]) != 0xFFFF:
            return False
        tcp_length = len(packet) - l4
        if ones_complement_sum(packet[l4:], address_sum + TCP + tcp_length) != 0xFFFF:
            return False
    return True


def _super_packet(run: _Run) -> Write:
    first, last = run.packets[0], run.packets[-1]
    l4, header_end, length = run.l4, run.header_end, run.length
    header = bytearray(first[:header_end])
    if run.version == 4:
        _U16.pack_into(header, 2, length)
        header[10:12] = b"\0\0"
        _U16.pack_into(header, 10, internet_checksum(memoryview(header)[:l4]))
        gso_type = GSO_TCPV4
    else:
        _U16.pack_into(header, 4, length - 40)
        gso_type = GSO_TCPV6
    header[l4 + 13] = last[l4 + 13]  # PSH, if any, belongs to the last segment
    # CHECKSUM_PARTIAL: the field holds the (uncomplemented) pseudo-header sum over the whole
    # super-packet; the kernel's segmentation adjusts it per segment.
    partial = ones_complement_sum(b"", _address_sum(header, run.version) + TCP + length - l4)
    _U16.pack_into(header, l4 + _TCP_CHECKSUM_OFFSET, partial)
    vnet = VNET_HDR.pack(NEEDS_CSUM, gso_type, header_end, run.gso_size, l4, _TCP_CHECKSUM_OFFSET)
    buffers: list[Buffer] = [vnet, header]
    buffers.extend(memoryview(p)[header_end:] for p in run.packets)
    count = len(run.packets)
    return buffers, count, length + (count - 1) * header_end
