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

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only a type here: tunplug.tun imports this package (for DEFAULT_MTU).
    from tunplug.tun import Packet

IPV4_HEADER_SIZE = 20
IPV6_HEADER_SIZE = 40


def destinations(packets: Sequence[Packet]) -> list[bytes | None]:
    """Each packet's destination address, packed (``None``: not IPv4/IPv6, or too short).

    One call per batch: the device reads every packet's header, and calls per packet (one
    outbound, two inbound) cost 7% of the pure-Python device's time per packet (measured, see
    docs/performance.md).
    """
    found: list[bytes | None] = []
    append = found.append
    for packet in packets:
        version = packet[0] >> 4 if packet else 0
        if version == 4 and len(packet) >= IPV4_HEADER_SIZE:
            append(bytes(packet[16:20]))
        elif version == 6 and len(packet) >= IPV6_HEADER_SIZE:
            append(bytes(packet[24:40]))
        else:
            append(None)
    return found


def inner_headers(packets: Sequence[Packet | None]) -> list[tuple[int, Packet] | None]:
    """Per decrypted packet: the length its header declares (the IPv4 total length, or the IPv6
    fixed header plus the payload length) and its source address, packed (a slice of the
    packet). ``None``: no packet, not IPv4/IPv6, shorter than its fixed header, or an IPv4
    total length below the header. The packet itself may be longer (padding) or shorter
    (truncated) than the declared length. One call per batch, as :func:`destinations`.
    """
    found: list[tuple[int, Packet] | None] = []
    append = found.append
    for packet in packets:
        version = packet[0] >> 4 if packet else 0
        if version == 4 and packet is not None and len(packet) >= IPV4_HEADER_SIZE:
            length = int.from_bytes(packet[2:4], "big")
            append((length, packet[12:16]) if length >= IPV4_HEADER_SIZE else None)
        elif version == 6 and packet is not None and len(packet) >= IPV6_HEADER_SIZE:
            append((IPV6_HEADER_SIZE + int.from_bytes(packet[4:6], "big"), packet[8:24]))
        else:
            append(None)
    return found


def destination_address(packet: Packet) -> bytes | None:
    """One packet's destination address, packed (:func:`destinations`)."""
    return destinations([packet])[0]


def source_address(packet: Packet) -> bytes | None:
    """One packet's source address, packed (from :func:`inner_headers`: ``None`` also when the
    declared length is unusable)."""
    header = inner_headers([packet])[0]
    return None if header is None else bytes(header[1])


def declared_length(packet: Packet) -> int | None:
    """One packet's declared length (from :func:`inner_headers`)."""
    header = inner_headers([packet])[0]
    return None if header is None else header[0]
