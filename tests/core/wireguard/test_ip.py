"""Inner IP header fields: packed addresses and the length the header declares."""

from __future__ import annotations

import ipaddress

import pytest

from tunplug.wireguard.ip import (
    declared_length,
    destination_address,
    destinations,
    inner_headers,
    source_address,
)

from ._fakenet import ipv4_packet, ipv6_packet


def test_ipv4_fields() -> None:
    packet = ipv4_packet("10.0.0.1", "192.0.2.7", b"abc")
    assert source_address(packet) == ipaddress.IPv4Address("10.0.0.1").packed
    assert destination_address(memoryview(bytearray(packet))) == bytes([192, 0, 2, 7])
    assert declared_length(packet + bytes(13)) == 23  # padding is not counted


def test_ipv6_fields() -> None:
    packet = ipv6_packet("fd00::1", "2001:db8::2", b"abcd")
    assert source_address(packet) == ipaddress.IPv6Address("fd00::1").packed
    assert destination_address(packet) == ipaddress.IPv6Address("2001:db8::2").packed
    assert declared_length(packet[:41]) == 44  # truncated: the header still says 44


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x45" + bytes(18),  # IPv4, shorter than its header
        b"\x60" + bytes(38),  # IPv6, shorter than its header
        b"\x75" + bytes(40),  # neither
    ],
)
def test_not_an_ip_header(packet: bytes) -> None:
    assert source_address(packet) is None
    assert destination_address(packet) is None
    assert declared_length(packet) is None


def test_ipv4_total_length_below_the_header_is_no_length() -> None:
    packet = bytearray(ipv4_packet("10.0.0.1", "10.0.0.2"))
    packet[2:4] = (19).to_bytes(2, "big")
    assert declared_length(packet) is None


def test_a_batch_is_read_in_one_call_packet_by_packet() -> None:
    v4 = ipv4_packet("10.0.0.1", "192.0.2.7", b"abc")
    v6 = ipv6_packet("fd00::1", "2001:db8::2", b"abcd")
    batch = [v4, b"\x75" + bytes(40), v6, b""]
    assert destinations(batch) == [bytes([192, 0, 2, 7]), None, destination_address(v6), None]
    assert inner_headers([v4, None, v6 + bytes(3), b"\x45" + bytes(10)]) == [
        (23, v4[12:16]),
        None,
        (44, v6[8:24]),
        None,
    ]
