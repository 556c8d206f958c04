"""Opening the queues of a linux-mq device, and negotiating its offloads with the kernel.

Who calls it: :func:`tunplug_tun_linux_mq.device._open_and_configure`, in a worker thread.
``fcntl`` is imported inside the functions, so this module imports on every OS.
"""

from __future__ import annotations

import errno
import logging
import os
import sys

from tunplug.exceptions import BusyResource, PermissionDenied, TunError, map_os_errors
from tunplug_tun_linux_mq import _ioctl
from tunplug_tun_linux_mq.offload import VNET_HDR_LEN

log = logging.getLogger(__name__)

TUN_PATH = "/dev/net/tun"
#: Name template when the caller gives none: the kernel picks the first free number.
DEFAULT_NAME = "tunplug%d"

BASE_FLAGS = _ioctl.IFF_TUN | _ioctl.IFF_NO_PI | _ioctl.IFF_MULTI_QUEUE
#: Whether the kernel may hand over TSO/USO super-packets (and partial checksums) to split.
#: Off by default, measured: splitting costs one full checksum per segment in Python (about
#: 2.6 us per 1400 bytes in CPython 3.11, under the GIL), more than the ``read()`` it saves,
#: where the kernel segments and checksums in C outside the GIL; iperf3 through a tunnel lost
#: about 18 %. Write-side coalescing (no checksum work) stays on with ``offloads``.
RX_OFFLOADS = False
#: What TUNSETOFFLOAD asks for with :data:`RX_OFFLOADS`, best first: USO (Linux >= 6.2) is
#: dropped if refused. Without it the request is 0 (writes may still carry GSO).
OFFLOAD_CHOICES = (
    _ioctl.TUN_F_CSUM
    | _ioctl.TUN_F_TSO4
    | _ioctl.TUN_F_TSO6
    | _ioctl.TUN_F_USO4
    | _ioctl.TUN_F_USO6,
    _ioctl.TUN_F_CSUM | _ioctl.TUN_F_TSO4 | _ioctl.TUN_F_TSO6,
)


def open_queues(
    requested: str | None, queues: int, offloads: bool = False, *, rx_offloads: bool | None = None
) -> tuple[str, list[int], bool]:
    """Create the device exclusively and attach ``queues`` descriptors to it.

    With ``offloads``, the first queue is opened with ``IFF_VNET_HDR`` and the offloads are
    set on it (they are the device's); if the kernel refuses them, that queue is closed (the
    device vanishes) and the device is created again without. The third value says whether
    the descriptors carry vnet headers. ``rx_offloads`` (default :data:`RX_OFFLOADS`) also asks
    for TSO/USO super-packets on reads: for a data path that splits them cheaply (native).
    """
    if rx_offloads is None:
        rx_offloads = RX_OFFLOADS
    template = requested if requested is not None else DEFAULT_NAME
    flags = BASE_FLAGS | (_ioctl.IFF_VNET_HDR if offloads else 0)
    fds: list[int] = []
    try:
        name = _create_queue(fds, template, flags)
        if offloads and not _enable_offloads(fds[0], name, rx_offloads):
            os.close(fds.pop())
            flags = BASE_FLAGS
            name = _create_queue(fds, template, flags)
        for index in range(1, queues):
            _attach_queue(fds, name, flags, index)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return name, fds, bool(flags & _ioctl.IFF_VNET_HDR)


def _create_queue(fds: list[int], template: str, flags: int) -> str:
    """Open the first queue, creating the device (``IFF_TUN_EXCL``); return its name."""
    import fcntl

    request = _ioctl.pack_ifreq(template, flags | _ioctl.IFF_TUN_EXCL)
    with map_os_errors(f"open {TUN_PATH}"):
        fds.append(os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC))
    try:
        answer = fcntl.ioctl(fds[-1], _ioctl.TUNSETIFF, request)
    except OSError as exc:
        raise _create_error(exc, template) from exc
    return _ioctl.unpack_ifreq(answer)[0]


def _attach_queue(fds: list[int], name: str, flags: int, index: int) -> None:
    import fcntl

    with map_os_errors(f"open {TUN_PATH}"):
        fds.append(os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC))
    with map_os_errors(f"attach queue {index} to {name!r}"):
        fcntl.ioctl(fds[-1], _ioctl.TUNSETIFF, _ioctl.pack_ifreq(name, flags))


def _enable_offloads(fd: int, name: str, rx_offloads: bool) -> bool:
    """Set the vnet header size and the best offloads the kernel takes; ``False`` if none."""
    import fcntl

    with map_os_errors(f"set the vnet header size of {name!r}"):
        fcntl.ioctl(fd, _ioctl.TUNSETVNETHDRSZ, VNET_HDR_LEN.to_bytes(4, sys.byteorder))
    for bits in OFFLOAD_CHOICES if rx_offloads else (0,):
        try:
            _set_offload(fd, bits)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                with map_os_errors(f"set offloads on {name!r}"):
                    raise
            continue
        log.debug("%s: offloads %#x on", name, bits)
        return True
    log.info("%s: the kernel refused TUNSETOFFLOAD (EINVAL); using plain reads and writes", name)
    return False


def _set_offload(fd: int, bits: int) -> None:
    """``TUNSETOFFLOAD`` (its argument is the value itself, not a pointer)."""
    import fcntl

    fcntl.ioctl(fd, _ioctl.TUNSETOFFLOAD, bits)


def _create_error(exc: OSError, name: str) -> TunError:
    if exc.errno == errno.EBUSY:
        return BusyResource(
            f"interface {name!r} already exists (another process or a persistent device); "
            "choose another name",
            exc.errno,
        )
    if exc.errno in (errno.EPERM, errno.EACCES):
        return PermissionDenied(
            f"failed to create interface {name!r}: {exc.strerror} (needs CAP_NET_ADMIN)",
            exc.errno,
        )
    return TunError(f"failed to create interface {name!r}: {exc.strerror}", exc.errno)
