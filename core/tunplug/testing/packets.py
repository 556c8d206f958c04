"""Build and read small IP packets (ICMP echo, UDP) for tests, examples and the demo.

Correct checksums, IPv4 and IPv6. Not a general packet library: just enough to drive a tunnel
and to check what came out of it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from tunplug.checksum import internet_checksum, ones_complement_sum

ICMP = 1
UDP = 17
ICMPV6 = 58

AnyAddress = IPv4Address | IPv6Address


def _ipv4(src: IPv4Address, dst: IPv4Address, protocol: int, payload: bytes, ttl: int) -> bytes:
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(payload),
            0,
            0x4000,
            ttl,
            protocol,
            0,
            src.packed,
            dst.packed,
        )
    )
    struct.pack_into("!H", header, 10, internet_checksum(header))
    return bytes(header) + payload


def _ipv6(src: IPv6Address, dst: IPv6Address, next_header: int, payload: bytes, hops: int) -> bytes:
    return (
        struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, hops, src.packed, dst.packed)
        + payload
    )


def _pseudo_sum(src: AnyAddress, dst: AnyAddress, protocol: int, length: int) -> int:
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, protocol, length)
    else:
        pseudo = src.packed + dst.packed + struct.pack("!IxxxB", length, protocol)
    return ones_complement_sum(pseudo)


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes, ttl: int = 64) -> bytes:
    """An IPv4 or IPv6 UDP packet (the family follows the addresses)."""
    source, dest = ip_address(src), ip_address(dst)
    length = 8 + len(payload)
    segment = struct.pack("!HHHH", sport, dport, length, 0) + payload
    checksum = internet_checksum(segment, _pseudo_sum(source, dest, UDP, length)) or 0xFFFF
    segment = segment[:6] + struct.pack("!H", checksum) + segment[8:]
    return _wrap(source, dest, UDP, segment, ttl)


def icmp_echo(
    src: str, dst: str, ident: int, seq: int, payload: bytes = b"tunplug", *, reply: bool = False
) -> bytes:
    """An ICMP (v4) or ICMPv6 echo request, or reply with ``reply=True``."""
    source, dest = ip_address(src), ip_address(dst)
    if source.version == 4:
        kind, protocol, initial = (0 if reply else 8), ICMP, 0
    else:
        kind, protocol = (129 if reply else 128), ICMPV6
        initial = _pseudo_sum(source, dest, ICMPV6, 8 + len(payload))
    message = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + payload
    checksum = internet_checksum(message, initial)
    message = message[:2] + struct.pack("!H", checksum) + message[4:]
    return _wrap(source, dest, protocol, message, 64)


def _wrap(src: AnyAddress, dst: AnyAddress, protocol: int, payload: bytes, ttl: int) -> bytes:
    if isinstance(src, IPv4Address) and isinstance(dst, IPv4Address):
        return _ipv4(src, dst, protocol, payload, ttl)
    if isinstance(src, IPv6Address) and isinstance(dst, IPv6Address):
        return _ipv6(src, dst, protocol, payload, ttl)
    raise ValueError("source and destination must be of one IP version")


@dataclass(frozen=True, slots=True)
class Parsed:
    """The fields of a packet built here that tests look at."""

    version: int
    src: str
    dst: str
    protocol: int
    payload: bytes

    def echo_reply(self) -> bytes:
        """The ICMP echo reply a host would send to this echo request."""
        kind, _code, _sum, ident, seq = struct.unpack_from("!BBHHH", self.payload)
        if kind not in (8, 128):
            raise ValueError("not an echo request")
        return icmp_echo(self.dst, self.src, ident, seq, self.payload[8:], reply=True)


def parse(packet: bytes | bytearray | memoryview) -> Parsed:
    """Read the IP header of ``packet``. :raises ValueError: not an IPv4/IPv6 packet."""
    data = bytes(packet)
    if not data:
        raise ValueError("empty packet")
    version = data[0] >> 4
    if version == 4 and len(data) >= 20:
        ihl = (data[0] & 0x0F) * 4
        return Parsed(
            4, str(IPv4Address(data[12:16])), str(IPv4Address(data[16:20])), data[9], data[ihl:]
        )
    if version == 6 and len(data) >= 40:
        return Parsed(
            6, str(IPv6Address(data[8:24])), str(IPv6Address(data[24:40])), data[6], data[40:]
        )
    raise ValueError(f"not an IP packet (version {version}, {len(data)} bytes)")
