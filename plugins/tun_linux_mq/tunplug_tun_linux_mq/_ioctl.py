"""Constants of the Linux TUN driver (``linux/if_tun.h``) and ``struct ifreq`` packing.

Who calls it: :mod:`tunplug_tun_linux_mq.device` when it opens queues. Pure data and
:mod:`struct`, no platform modules, so it imports (and its tests run) on every OS.
"""

from __future__ import annotations

import struct

#: Longest interface name including the terminating NUL (``IFNAMSIZ``).
IFNAMSIZ = 16

_IOC_WRITE = 1
_IOC_READ = 2
_INT_SIZE = 4


def _ioc(direction: int, kind: str, number: int, size: int) -> int:
    """The ``_IOC()`` macro of ``asm-generic/ioctl.h`` (x86, arm, arm64, riscv layout)."""
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | number


# ioctl requests on a /dev/net/tun file descriptor.
TUNSETIFF = _ioc(_IOC_WRITE, "T", 202, _INT_SIZE)  # 0x400454ca
TUNSETPERSIST = _ioc(_IOC_WRITE, "T", 203, _INT_SIZE)  # 0x400454cb
TUNSETOFFLOAD = _ioc(_IOC_WRITE, "T", 208, _INT_SIZE)  # 0x400454d0
TUNGETIFF = _ioc(_IOC_READ, "T", 210, _INT_SIZE)  # 0x800454d2
TUNSETVNETHDRSZ = _ioc(_IOC_WRITE, "T", 216, _INT_SIZE)  # 0x400454d8
TUNSETQUEUE = _ioc(_IOC_WRITE, "T", 217, _INT_SIZE)  # 0x400454d9

# ifr_flags for TUNSETIFF.
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_ATTACH_QUEUE = 0x0200
IFF_DETACH_QUEUE = 0x0400
IFF_PERSIST = 0x0800
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
#: Refuse (EBUSY) when a device of that name exists, instead of attaching to it.
IFF_TUN_EXCL = 0x8000

# TUNSETOFFLOAD bits.
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

#: ``struct ifreq``: the name, then a union whose first member we use is ``short ifr_flags``.
#: The union's size is that of ``struct ifmap`` (two longs and five small fields, padded).
IFREQ_SIZE = IFNAMSIZ + (24 if struct.calcsize("P") == 8 else 16)
_IFREQ_FLAGS = struct.Struct(f"={IFNAMSIZ}sH{IFREQ_SIZE - IFNAMSIZ - 2}x")

#: Bytes the kernel's ``dev_valid_name()`` refuses in an interface name.
_INVALID_NAME_BYTES = frozenset(b"/: \t\n\v\f\r\0")


def validate_name(name: str) -> bytes:
    """Return ``name`` encoded for the kernel, or raise :class:`ValueError` saying why not.

    A ``%d`` in the name lets the kernel pick the lowest free number (``tunplug%d``).
    """
    raw = name.encode("utf-8", "surrogateescape")
    if not raw or len(raw) >= IFNAMSIZ:
        raise ValueError(f"interface name {name!r} must have 1 to {IFNAMSIZ - 1} bytes")
    if raw in (b".", b"..") or _INVALID_NAME_BYTES.intersection(raw):
        raise ValueError(f"interface name {name!r} may not contain '/', ':' or whitespace")
    return raw


def pack_ifreq(name: str, flags: int) -> bytes:
    """A ``struct ifreq`` carrying an interface name and ``ifr_flags``, for TUNSETIFF."""
    return _IFREQ_FLAGS.pack(validate_name(name), flags)


def unpack_ifreq(data: bytes) -> tuple[str, int]:
    """The name and ``ifr_flags`` of a ``struct ifreq`` the kernel filled in."""
    raw_name, flags = _IFREQ_FLAGS.unpack(data)
    return raw_name.split(b"\0", 1)[0].decode("utf-8", "surrogateescape"), flags
