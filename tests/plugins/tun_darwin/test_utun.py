"""utun framing and naming: the 4-byte family header, unit numbers, names, CTLIOCGINFO.

Constants checked against XNU (sys/kern_control.h, net/if_utun.h) and wireguard-go's
tun_darwin.go; nothing here needs macOS.
"""

from __future__ import annotations

import struct

import pytest

from tunplug.testing import packets
from tunplug_tun_darwin import _utun

V4 = packets.udp("10.0.0.1", "10.0.0.2", 1000, 2000, b"four")
V6 = packets.udp("fd00::1", "fd00::2", 1000, 2000, b"six")


def test_macos_constants():
    assert _utun.PF_SYSTEM == 32
    assert _utun.SYSPROTO_CONTROL == 2
    assert _utun.UTUN_OPT_IFNAME == 2
    assert _utun.CTL_INFO.size == 100  # u_int32_t ctl_id + char ctl_name[96]
    assert _utun.CTLIOCGINFO == 0xC0644E03  # _IOWR('N', 3, struct ctl_info)
    assert (_utun.DARWIN_AF_INET, _utun.DARWIN_AF_INET6) == (2, 30)


def test_headers_are_the_family_in_network_byte_order():
    assert _utun.encode(V4) == b"\x00\x00\x00\x02" + V4
    assert _utun.encode(bytearray(V6)) == b"\x00\x00\x00\x1e" + V6
    assert bytes(_utun.decode(b"\x00\x00\x00\x02" + V4)) == V4
    assert bytes(_utun.decode(memoryview(b"\x00\x00\x00\x1e" + V6))) == V6


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x00\x00\x00\x02",  # a header and no packet
        b"\x02\x00\x00\x00" + V4,  # little-endian family
        b"\x00\x00\x00\x0a" + V6,  # Linux's AF_INET6 (10)
        b"\x00\x00\x00\x02" + V6,  # family and version disagree
        b"\x00\x00\x00\x1e" + V4,
    ],
)
def test_frames_with_bad_headers_are_refused(frame):
    assert _utun.decode(frame) is None


def test_only_ip_packets_get_a_header():
    assert _utun.header_for(b"") is None
    assert _utun.header_for(b"\x10" + bytes(30)) is None
    with pytest.raises(ValueError, match="not an IPv4 or IPv6 packet"):
        _utun.encode(b"\x00\x01")


@pytest.mark.parametrize(
    ("name", "unit"), [(None, 0), ("utun0", 1), ("utun7", 8), ("utun123", 124)]
)
def test_unit_numbers_are_one_more_than_the_name_says(name, unit):
    assert _utun.unit_for_name(name) == unit


@pytest.mark.parametrize("name", ["tun0", "utun", "utun01", "utun-1", "UTUN3", "utun3 "])
def test_other_names_are_refused(name):
    with pytest.raises(ValueError, match="named utunN"):
        _utun.unit_for_name(name)


def test_interface_names_are_read_up_to_the_nul():
    assert _utun.parse_ifname(b"utun5\x00" + bytes(10)) == "utun5"
    assert _utun.parse_ifname(b"utun12") == "utun12"
    with pytest.raises(ValueError, match="unexpected utun interface name"):
        _utun.parse_ifname(b"en0\x00")


def test_ctl_info_request_and_reply():
    request = _utun.ctl_info_request()
    assert len(request) == 100
    assert request[:4] == bytes(4)
    assert request[4:].rstrip(b"\0") == b"com.apple.net.utun_control"
    reply = struct.pack("=I", 0x1234) + request[4:]
    assert _utun.ctl_id_from_reply(reply) == 0x1234
    with pytest.raises(ValueError):
        _utun.ctl_info_request(b"x" * 96)
