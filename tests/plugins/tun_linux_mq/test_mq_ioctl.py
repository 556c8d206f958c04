"""``struct ifreq`` packing and the TUN ioctl numbers (no root)."""

from __future__ import annotations

import struct

import pytest

from tunplug_tun_linux_mq import _ioctl


def test_ioctl_numbers_match_linux_if_tun_h():
    assert _ioctl.TUNSETIFF == 0x400454CA
    assert _ioctl.TUNSETPERSIST == 0x400454CB
    assert _ioctl.TUNSETOFFLOAD == 0x400454D0
    assert _ioctl.TUNGETIFF == 0x800454D2
    assert _ioctl.TUNSETVNETHDRSZ == 0x400454D8
    assert _ioctl.TUNSETQUEUE == 0x400454D9


def test_flags_match_linux_if_tun_h():
    assert (_ioctl.IFF_TUN, _ioctl.IFF_NO_PI, _ioctl.IFF_MULTI_QUEUE) == (0x1, 0x1000, 0x100)
    assert (_ioctl.IFF_VNET_HDR, _ioctl.IFF_TUN_EXCL) == (0x4000, 0x8000)
    assert (_ioctl.IFF_ATTACH_QUEUE, _ioctl.IFF_DETACH_QUEUE) == (0x200, 0x400)


def test_ifreq_holds_name_then_native_short_flags():
    flags = _ioctl.IFF_TUN | _ioctl.IFF_NO_PI | _ioctl.IFF_MULTI_QUEUE | _ioctl.IFF_TUN_EXCL
    data = _ioctl.pack_ifreq("tp0", flags)
    assert len(data) == (40 if struct.calcsize("P") == 8 else 32)
    assert data[:16] == b"tp0" + bytes(13)
    assert struct.unpack_from("=H", data, 16)[0] == flags
    assert data[18:] == bytes(len(data) - 18)
    assert _ioctl.unpack_ifreq(data) == ("tp0", flags)


def test_unpack_reads_the_name_the_kernel_chose():
    answer = b"tunplug3\0%d\0\0\0\0\0" + struct.pack("=H", 0x1101) + bytes(_ioctl.IFREQ_SIZE - 18)
    assert _ioctl.unpack_ifreq(answer) == ("tunplug3", 0x1101)


def test_template_name_is_accepted():
    assert _ioctl.pack_ifreq("tunplug%d", 1)[:9] == b"tunplug%d"


@pytest.mark.parametrize("name", ["", "a" * 16, "bad name", "a/b", "a:b", "..", "tab\t"])
def test_invalid_names_are_refused_before_the_kernel_sees_them(name):
    with pytest.raises(ValueError, match="interface name"):
        _ioctl.pack_ifreq(name, 1)


def test_longest_valid_name_fits():
    assert _ioctl.unpack_ifreq(_ioctl.pack_ifreq("a" * 15, 1))[0] == "a" * 15
