"""Helpers of the flow-log tests: a TCP segment builder (``tunplug.testing.packets`` has none
yet), a clock a test moves by hand, and reading the log back."""

from __future__ import annotations

import json
import struct
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any

from tunplug.checksum import internet_checksum, ones_complement_sum

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def tcp(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    flags: int,
    payload: bytes = b"",
    *,
    seq: int = 0,
    ack: int = 0,
    options: bytes = b"",
) -> bytes:
    """An IPv4 or IPv6 TCP segment with correct checksums; ``options`` pads the data offset."""
    if len(options) % 4:
        raise ValueError("TCP options must be a multiple of 4 bytes")
    source, dest = ip_address(src), ip_address(dst)
    offset = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags, 65535, 0, 0)
    segment = header + options + payload
    if isinstance(source, IPv4Address):
        pseudo = source.packed + dest.packed + struct.pack("!BBH", 0, 6, len(segment))
    else:
        pseudo = source.packed + dest.packed + struct.pack("!IxxxB", len(segment), 6)
    checksum = internet_checksum(segment, ones_complement_sum(pseudo))
    segment = segment[:16] + struct.pack("!H", checksum) + segment[18:]
    if isinstance(source, IPv4Address):
        ip = bytearray(
            struct.pack(
                "!BBHHHBBH4s4s",
                0x45,
                0,
                20 + len(segment),
                0,
                0x4000,
                64,
                6,
                0,
                source.packed,
                dest.packed,
            )
        )
        struct.pack_into("!H", ip, 10, internet_checksum(ip))
        return bytes(ip) + segment
    return (
        struct.pack("!IHBB16s16s", 6 << 28, len(segment), 6, 64, source.packed, dest.packed)
        + segment
    )


T0 = 1_700_000_000.0


class Clock:
    """A clock a test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def read_log(directory: Path, name: str = "flows.jsonl") -> list[dict[str, Any]]:
    """The lines of one flow log file, parsed (none when it does not exist)."""
    path = directory / name
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]
