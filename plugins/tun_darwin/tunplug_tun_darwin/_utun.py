"""How a macOS utun device is opened and framed: constants, the 4-byte header, the name.

Who calls it: :mod:`tunplug_tun_darwin.device`, and the tests (header encoding, name parsing,
the ``ctl_info`` request) on any OS. Only :func:`open_utun` touches macOS: it needs a
``PF_SYSTEM`` socket and ``fcntl``, which it imports when called.

Facts from XNU (``bsd/sys/kern_control.h``, ``bsd/net/if_utun.h``, ``bsd/sys/socket.h``) and
wireguard-go's ``tun/tun_darwin.go``:

- a utun device is a ``PF_SYSTEM`` (32) ``SOCK_DGRAM`` socket of protocol ``SYSPROTO_CONTROL``
  (2) connected to the kernel control ``com.apple.net.utun_control``, whose id the
  ``CTLIOCGINFO`` ioctl (``_IOWR('N', 3, struct ctl_info)``) looks up; ``struct ctl_info`` is
  a ``u_int32_t ctl_id`` and a 96-byte name;
- the address is ``(ctl_id, unit)``: unit ``N + 1`` gives ``utunN``, 0 lets the kernel choose;
- ``getsockopt(SYSPROTO_CONTROL, UTUN_OPT_IFNAME (2))`` returns the interface name;
- every packet read or written starts with the address family as a 32-bit big-endian number:
  ``AF_INET`` (2) or ``AF_INET6`` (30 on macOS, not Linux's 10).
"""

from __future__ import annotations

import re
import socket
import struct

PF_SYSTEM = 32
SYSPROTO_CONTROL = 2
UTUN_CONTROL_NAME = b"com.apple.net.utun_control"
UTUN_OPT_IFNAME = 2
#: ``IFNAMSIZ``: the interface name buffer, NUL included.
IFNAMSIZ = 16
MAX_KCTL_NAME = 96
#: ``struct ctl_info``: ``u_int32_t ctl_id; char ctl_name[MAX_KCTL_NAME]`` (100 bytes).
CTL_INFO = struct.Struct(f"=I{MAX_KCTL_NAME}s")
#: ``_IOWR('N', 3, struct ctl_info)``: in/out, size 100, group 'N', number 3.
CTLIOCGINFO = 0xC0000000 | (CTL_INFO.size << 16) | (ord("N") << 8) | 3

#: Address families in the packet header, as macOS numbers them.
DARWIN_AF_INET = 2
DARWIN_AF_INET6 = 30
HEADER_SIZE = 4
HEADER_V4 = DARWIN_AF_INET.to_bytes(HEADER_SIZE, "big")
HEADER_V6 = DARWIN_AF_INET6.to_bytes(HEADER_SIZE, "big")

_NAME = re.compile(r"utun(0|[1-9][0-9]{0,5})")


def header_for(packet: bytes | bytearray | memoryview) -> bytes | None:
    """The 4-byte header for an IP packet (from its version nibble), ``None`` if not IP."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        return HEADER_V4
    if version == 6:
        return HEADER_V6
    return None


def encode(packet: bytes | bytearray | memoryview) -> bytes:
    """``packet`` with its header, as written to a utun socket.

    :raises ValueError: ``packet`` is not an IPv4 or IPv6 packet.
    """
    header = header_for(packet)
    if header is None:
        raise ValueError("not an IPv4 or IPv6 packet")
    return header + bytes(packet)


def decode(frame: bytes | bytearray | memoryview) -> memoryview | None:
    """The IP packet inside a frame read from a utun socket, ``None`` if its header is bad.

    A frame is bad when it is shorter than the header, its family is neither ``AF_INET`` nor
    ``AF_INET6``, or the family does not match the packet's version nibble.
    """
    if len(frame) <= HEADER_SIZE:
        return None
    view = memoryview(frame)
    family = int.from_bytes(view[:HEADER_SIZE], "big")
    version = view[HEADER_SIZE] >> 4
    if (family, version) not in ((DARWIN_AF_INET, 4), (DARWIN_AF_INET6, 6)):
        return None
    return view[HEADER_SIZE:]


def unit_for_name(name: str | None) -> int:
    """The control unit to connect to for interface ``name`` (``utunN`` -> N + 1, any -> 0).

    :raises ValueError: ``name`` is not of the form ``utunN``.
    """
    if name is None:
        return 0
    match = _NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"macOS utun devices are named utunN (e.g. utun7), not {name!r}")
    return int(match.group(1)) + 1


def parse_ifname(raw: bytes) -> str:
    """The interface name in a ``UTUN_OPT_IFNAME`` answer (NUL-terminated, up to 16 bytes).

    :raises ValueError: the answer is not a utun name.
    """
    name = raw.split(b"\0", 1)[0].decode("ascii", "replace")
    if _NAME.fullmatch(name) is None:
        raise ValueError(f"unexpected utun interface name {raw!r}")
    return name


def ctl_info_request(control_name: bytes = UTUN_CONTROL_NAME) -> bytes:
    """The ``struct ctl_info`` buffer ``CTLIOCGINFO`` fills in (id 0, the control's name)."""
    if len(control_name) >= MAX_KCTL_NAME:
        raise ValueError("kernel control names have fewer than 96 bytes")
    return CTL_INFO.pack(0, control_name)


def ctl_id_from_reply(reply: bytes) -> int:
    """The ``ctl_id`` in the ``struct ctl_info`` that ``CTLIOCGINFO`` returned."""
    ctl_id: int = CTL_INFO.unpack(reply)[0]
    return ctl_id


def open_utun(unit: int) -> tuple[socket.socket, str]:
    """Open a utun device (macOS, root): a connected, non-blocking socket and its name.

    :raises OSError: the kernel refused (EPERM without root, EBUSY if the unit is taken).
    """
    import fcntl

    sock = socket.socket(PF_SYSTEM, socket.SOCK_DGRAM, SYSPROTO_CONTROL)
    try:
        reply = fcntl.ioctl(sock.fileno(), CTLIOCGINFO, ctl_info_request())
        sock.connect((ctl_id_from_reply(reply), unit))
        name = parse_ifname(sock.getsockopt(SYSPROTO_CONTROL, UTUN_OPT_IFNAME, IFNAMSIZ))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, name
