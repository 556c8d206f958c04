"""Flow keys and flow-to-queue mapping for the write path (no root)."""

from __future__ import annotations

import struct
from ipaddress import ip_address

import pytest

from tunplug.testing import packets as P
from tunplug_tun_linux_mq.flow import flow_key, flow_queue

TCP, UDP, ICMP, ESP = 6, 17, 1, 50


def ipv4(protocol: int, payload: bytes, src="10.0.0.1", dst="10.0.0.2", frag: int = 0x4000):
    """An IPv4 packet; ``frag`` is the flags + fragment offset field (DF by default)."""
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, frag, 64, protocol, 0,
        ip_address(src).packed, ip_address(dst).packed,
    )  # fmt: skip
    return header + payload


def ipv6(next_header: int, payload: bytes, src="fd00::1", dst="fd00::2"):
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), next_header, 64)
        + ip_address(src).packed
        + ip_address(dst).packed
        + payload
    )


def ports(sport: int, dport: int, rest: bytes = bytes(16)) -> bytes:
    return struct.pack("!HH", sport, dport) + rest


def hop_by_hop(next_header: int) -> bytes:
    return bytes([next_header, 0]) + bytes(6)  # 8 bytes: PadN options


def fragment_header(next_header: int, offset: int, more: bool) -> bytes:
    return struct.pack("!BBHI", next_header, 0, (offset << 3) | more, 0x1234)


def test_ipv4_tcp_and_udp_keys_include_both_ports():
    for protocol in (TCP, UDP):
        a = flow_key(ipv4(protocol, ports(1000, 80)))
        assert a == flow_key(ipv4(protocol, ports(1000, 80, b"other payload" * 3)))
        assert a != flow_key(ipv4(protocol, ports(1001, 80)))
        assert a != flow_key(ipv4(protocol, ports(1000, 81)))
        assert a != flow_key(ipv4(protocol, ports(1000, 80), dst="10.0.0.3"))
    assert flow_key(ipv4(TCP, ports(1, 2))) != flow_key(ipv4(UDP, ports(1, 2)))


def test_ipv4_options_move_the_ports():
    options = bytes([1, 1, 1, 0])  # NOP NOP NOP EOL: 4 bytes of options, IHL 6
    plain = ipv4(UDP, ports(5, 6))
    with_options = bytes([0x46]) + plain[1:20] + options + plain[20:]
    assert flow_key(with_options)[-4:] == ports(5, 6)[:4]


def test_ipv4_icmp_and_other_protocols_key_on_addresses_and_protocol():
    echo = P.icmp_echo("10.0.0.1", "10.0.0.2", 1, 1)
    assert flow_key(echo) == flow_key(P.icmp_echo("10.0.0.1", "10.0.0.2", 9, 9, b"other"))
    assert flow_key(ipv4(ESP, bytes(40))) == bytes([ESP]) + flow_key(echo)[1:]


@pytest.mark.parametrize(
    "frag",
    [0x2000, 0x0010, 0x2010],  # first fragment (MF), last fragment, middle fragment
)
def test_every_ipv4_fragment_of_a_datagram_has_the_same_key(frag):
    unfragmented_key = flow_key(ipv4(UDP, ports(1, 2), frag=0))
    key = flow_key(ipv4(UDP, ports(1, 2), frag=frag))
    assert key == bytes([UDP]) + unfragmented_key[1:9]  # addresses + protocol, no ports
    assert key == flow_key(ipv4(UDP, b"middle of the datagram data", frag=frag))


def test_ipv6_tcp_and_udp_keys_include_both_ports():
    for protocol in (TCP, UDP):
        a = flow_key(ipv6(protocol, ports(1000, 443)))
        assert a == flow_key(ipv6(protocol, ports(1000, 443, bytes(100))))
        assert a != flow_key(ipv6(protocol, ports(1000, 444)))
        assert a != flow_key(ipv6(protocol, ports(1000, 443), src="fd00::9"))
    udp = P.udp("fd00::1", "fd00::2", 1000, 443, b"x")
    assert flow_key(udp) == flow_key(ipv6(UDP, ports(1000, 443)))


def test_ipv6_extension_headers_are_skipped_to_find_the_ports():
    direct = flow_key(ipv6(UDP, ports(7, 8)))
    assert flow_key(ipv6(0, hop_by_hop(UDP) + ports(7, 8))) == direct
    assert flow_key(ipv6(60, hop_by_hop(43) + hop_by_hop(UDP) + ports(7, 8))) == direct


def test_ipv6_fragments_key_on_addresses_and_inner_protocol():
    first = ipv6(44, fragment_header(UDP, 0, more=True) + ports(7, 8))
    later = ipv6(44, fragment_header(UDP, 100, more=False) + b"rest of the data")
    assert flow_key(first) == flow_key(later)
    assert flow_key(first) == bytes([UDP]) + first[8:40]


def test_icmpv6_keys_on_addresses():
    a = P.icmp_echo("fd00::1", "fd00::2", 1, 1)
    assert flow_key(a) == flow_key(P.icmp_echo("fd00::1", "fd00::2", 2, 5, b"zz"))
    assert flow_key(a) != flow_key(P.icmp_echo("fd00::1", "fd00::3", 1, 1))


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x45",
        bytes([0x45]) + bytes(10),
        bytes([0x4F]) + bytes(19) + b"\x00\x11",  # IHL beyond the packet
        bytes([0x60]) + bytes(20),
        ipv6(0, b"\x11"),  # extension header cut short
        ipv6(44, b"\x11\x00"),  # fragment header cut short
        bytes(40),  # version 0
        b"\xff" * 60,
    ],
)
def test_malformed_packets_never_raise(packet):
    assert isinstance(flow_key(packet), bytes)
    assert 0 <= flow_queue(packet, 4) < 4


def test_one_flow_always_maps_to_one_queue_and_flows_spread():
    def flow(sport: int, size: int) -> bytes:
        return P.udp("10.0.0.1", "10.0.0.2", sport, 53, bytes(size))

    for sport in range(2000, 2050):
        assert len({flow_queue(flow(sport, size), 4) for size in range(0, 300, 7)}) == 1
    used = {flow_queue(flow(sport, 10), 4) for sport in range(2000, 2200)}
    assert used == {0, 1, 2, 3}
    assert flow_queue(flow(1, 1), 1) == 0
