"""The Internet checksum (RFC 1071), computed in C through Python's big integers.

The ones'-complement sum of 16-bit big-endian words equals the whole buffer read as one
big-endian integer modulo 0xFFFF (since 2**16 == 1 mod 0xFFFF), with 0 standing for 0xFFFF
when the data is not all zeros. ``int.from_bytes`` and ``%`` run in C, which makes this far
faster than a Python loop over words.
"""

from __future__ import annotations


def ones_complement_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The 16-bit ones'-complement sum of ``data`` (zero-padded to even length) plus ``initial``."""
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    total = int.from_bytes(data, "big") % 0xFFFF + initial
    total = total % 0xFFFF
    if total == 0 and (initial or any(data)):
        return 0xFFFF
    return total


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The value for an IPv4/ICMP/TCP/UDP checksum field over ``data`` (field zeroed)."""
    return (~ones_complement_sum(data, initial)) & 0xFFFF
