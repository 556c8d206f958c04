"""Just enough of the pcap file format for raw IP packets (LINKTYPE_RAW = 101)."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from typing import BinaryIO

MAGIC = 0xA1B2C3D4
LINKTYPE_RAW = 101
SNAPLEN = 65535
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


def write_header(stream: BinaryIO, snaplen: int = SNAPLEN) -> None:
    stream.write(_GLOBAL.pack(MAGIC, 2, 4, 0, 0, snaplen, LINKTYPE_RAW))


def write_packet(
    stream: BinaryIO, packet: bytes | bytearray | memoryview, snaplen: int = SNAPLEN
) -> None:
    """One record: the first ``snaplen`` bytes of ``packet``, with its full length noted."""
    now = time.time()
    seconds = int(now)
    kept = min(len(packet), snaplen)
    stream.write(_RECORD.pack(seconds, int((now - seconds) * 1e6), kept, len(packet)))
    stream.write(packet[:kept])


def read_packets(stream: BinaryIO) -> Iterator[bytes]:
    header = stream.read(_GLOBAL.size)
    if len(header) < _GLOBAL.size or _GLOBAL.unpack(header)[0] != MAGIC:
        raise ValueError("not a little-endian microsecond pcap file")
    if _GLOBAL.unpack(header)[6] != LINKTYPE_RAW:
        raise ValueError("pcap link type is not RAW (101)")
    while record := stream.read(_RECORD.size):
        if len(record) < _RECORD.size:
            raise ValueError("truncated pcap record header")
        length = _RECORD.unpack(record)[2]
        packet = stream.read(length)
        if len(packet) < length:
            raise ValueError("truncated pcap record")
        yield packet
