"""Flow keys for the write path: which queue's writer thread writes a packet.

Who calls it: :meth:`tunplug_tun_linux_mq.device.LinuxMultiQueueTun.send`. Every packet goes
to the writer of queue ``flow_queue(packet, queues)``, so all packets of one flow are written
by one thread, in the order the engine gave them. Spreading one flow over several writers is
what reordered TCP segments in Firezone's multi-queue client (it then went back to a single
writer); hashing by flow keeps several writers without that.

The key is the 5-tuple: addresses, protocol and, for TCP/UDP/UDP-Lite/SCTP/DCCP, the two ports.
Fragments (any IPv4 fragment, any IPv6 packet with a Fragment header) and other protocols
(ICMP, ESP, ...) are keyed on addresses and protocol only. That includes first fragments,
which still carry ports: keying every fragment the same way keeps the pieces of one datagram
on one writer, in order. Pure functions; no platform modules.
"""

from __future__ import annotations

#: IP protocol numbers whose header starts with 16-bit source and destination ports.
PORT_PROTOCOLS = frozenset({6, 17, 33, 132, 136})  # TCP, UDP, DCCP, SCTP, UDP-Lite

_IPV6_HEADER = 40
_IPV6_FRAGMENT = 44
_IPV6_AH = 51
#: Hop-by-hop, routing and destination options: length in 8-octet units, not counting the first.
_IPV6_OPTION_HEADERS = frozenset({0, 43, 60})
#: Stop walking IPv6 extension headers after this many (a malformed or hostile chain).
_MAX_EXTENSION_HEADERS = 8


def flow_key(packet: bytes) -> bytes:
    """The bytes that identify ``packet``'s flow (empty for anything that is not IPv4/IPv6).

    Never raises: a truncated or malformed packet gets a key built from what is there (the
    kernel rejects it at write time anyway, and the writer counts the drop).
    """
    length = len(packet)
    if length == 0:
        return b""
    version = packet[0] >> 4
    if version == 4:
        if length < 20:
            return packet
        header_length = (packet[0] & 0x0F) * 4
        # Byte 6 holds the flags (MF is 0x20) and the top of the fragment offset.
        fragment = (packet[6] & 0x3F) or packet[7]
        if packet[9] in PORT_PROTOCOLS and not fragment and length >= header_length + 4:
            return packet[9:10] + packet[12:20] + packet[header_length : header_length + 4]
        return packet[9:10] + packet[12:20]
    if version == 6:
        if length < _IPV6_HEADER:
            return packet
        next_header = packet[6]
        offset = _IPV6_HEADER
        fragment = False
        for _ in range(_MAX_EXTENSION_HEADERS):
            if next_header in _IPV6_OPTION_HEADERS:
                if length < offset + 2:
                    break
                next_header, offset = packet[offset], offset + (packet[offset + 1] + 1) * 8
            elif next_header == _IPV6_AH:
                if length < offset + 2:
                    break
                next_header, offset = packet[offset], offset + (packet[offset + 1] + 2) * 4
            elif next_header == _IPV6_FRAGMENT:
                if length >= offset + 8:
                    next_header = packet[offset]
                fragment = True
                break
            else:
                break
        protocol = bytes((next_header,))
        if next_header in PORT_PROTOCOLS and not fragment and length >= offset + 4:
            return protocol + packet[8:40] + packet[offset : offset + 4]
        return protocol + packet[8:40]
    return b""


def flow_queue(packet: bytes, queues: int) -> int:
    """The queue (0 to ``queues - 1``) whose writer writes ``packet``.

    Uses Python's ``hash()`` of the key: fast (SipHash in C) and stable within one process,
    which is all that ordering needs; it differs between processes (``PYTHONHASHSEED``).
    """
    if queues == 1:
        return 0
    return hash(flow_key(packet)) % queues
