"""The fields of an inner IPv4 or IPv6 header that WireGuard reads: addresses and length.

Who calls it: cryptokey routing (:mod:`.routing`: the destination picks the peer to encrypt
for, the source must map back to the peer that decrypted the packet) and the device
(:mod:`.device`: an outbound batch is grouped by destination; a decrypted packet must be as long
as its header says, and loses its padding). The header layouts (RFC 791, RFC 8200) are known
here and nowhere else in the package.

Addresses come back packed, 4 bytes for IPv4 and 16 for IPv6, so that addresses of the two
families never compare equal. ``None`` means the packet is not IPv4 or IPv6, or is shorter than
its fixed header.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only a type here: tunplug.tun imports this package (for DEFAULT_MTU).
    from tunplug.tun import Packet

IPV4_HEADER_SIZE = 20
IPV6_HEADER_SIZE = 40


def source_address(packet: Packet) -> bytes | None:
    """The packet's source address, packed."""
    version = packet[0] >> 4 if packet else 0
    if version == 4 and len(packet) >= IPV4_HEADER_SIZE:
        return bytes(packet[12:16])
    if version == 6 and len(packet) >= IPV6_HEADER_SIZE:
        return bytes(packet[8:24])
    return None


def destination_address(packet: Packet) -> bytes | None:
    """The packet's destination address, packed."""
    version = packet[0] >> 4 if packet else 0
    if version == 4 and len(packet) >= IPV4_HEADER_SIZE:
        return bytes(packet[16:20])
    if version == 6 and len(packet) >= IPV6_HEADER_SIZE:
        return bytes(packet[24:40])
    return None


def declared_length(packet: Packet) -> int | None:
    """The packet's length as its header gives it: the IPv4 total length, or the IPv6 fixed
    header plus the payload length. ``None`` also for an IPv4 total length shorter than the
    header. The packet itself may be longer (padding) or shorter (truncated)."""
    version = packet[0] >> 4 if packet else 0
    if version == 4 and len(packet) >= IPV4_HEADER_SIZE:
        length = int.from_bytes(packet[2:4], "big")
        return length if length >= IPV4_HEADER_SIZE else None
    if version == 6 and len(packet) >= IPV6_HEADER_SIZE:
        return IPV6_HEADER_SIZE + int.from_bytes(packet[4:6], "big")
    return None
