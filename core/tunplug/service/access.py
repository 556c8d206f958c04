"""Who may talk to the tunnel service: the socket's file permissions and the peer's credentials.

Who calls it: :mod:`tunplug.service.server` (when it binds the socket and on every accepted
connection, whose credentials :mod:`tunplug.service.connection` reads) and
:mod:`tunplug.cli.tunnel_service` (resolving ``--group`` at start-up).

Two layers: the socket file is mode 0660 and belongs to the service's group, so the kernel
refuses ``connect()`` to anyone else; and every accepted connection's credentials, as the
kernel recorded them at ``connect()`` (``SO_PEERCRED`` and ``SO_PEERGROUPS``), must be root's or
include the group, or the connection gets an Error and is closed. The second layer still holds
when the file's mode or owner was changed by hand. Linux only.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from tunplug.exceptions import ConfigError

log = logging.getLogger(__name__)

#: ``SO_PEERGROUPS`` (Linux >= 4.13, asm-generic/socket.h); Python 3.11 does not name it.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
#: Supplementary groups read with ``SO_PEERGROUPS``: Python's getsockopt takes at most 1024
#: bytes. A process with more groups (ERANGE) is looked up in the user database instead.
_MAX_PEER_GROUPS = 256
SOCKET_MODE = 0o660
DIRECTORY_MODE = 0o755


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The connecting process as the kernel saw it at ``connect()``."""

    pid: int
    uid: int
    gid: int
    #: Supplementary groups (of the process, not of the user database), when known.
    groups: tuple[int, ...] = ()

    def describe(self) -> str:
        try:
            user = pwd.getpwuid(self.uid).pw_name
        except KeyError:
            user = str(self.uid)
        return f"uid {self.uid} ({user}), pid {self.pid}"


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """The credentials of the process at the other end of a connected Unix socket.

    Groups come from ``SO_PEERGROUPS``; where the kernel lacks it, from the user database
    (``os.getgrouplist``). :raises OSError: the socket is not a connected Unix socket.
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * _MAX_PEER_GROUPS)
        groups = struct.unpack(f"{len(data) // 4}I", data[: len(data) // 4 * 4])
    except OSError as exc:
        if exc.errno not in (errno.ENOPROTOOPT, errno.ERANGE):
            raise
        try:
            groups = tuple(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
        except KeyError:
            groups = ()
    return PeerCredentials(pid=pid, uid=uid, gid=gid, groups=tuple(groups))


def is_authorized(credentials: PeerCredentials, group_gid: int) -> bool:
    """Root, or a process whose group or supplementary groups include ``group_gid``."""
    return credentials.uid == 0 or credentials.gid == group_gid or group_gid in credentials.groups


def resolve_group(name: str) -> int:
    """The gid of ``--group`` (a name, or a number).

    :raises ConfigError: no such group, with the command that creates it.
    """
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(
            "--group",
            f"group {name!r} does not exist: create it with 'groupadd --system {name}' and add "
            f"the users of the GUI to it ('usermod -aG {name} USER'), or use --group root so "
            "that only root may connect",
        ) from None


def bind_socket(path: Path, group_gid: int) -> socket.socket:
    """A listening Unix socket at ``path``: mode 0660, group ``group_gid``, non-blocking.

    The directory is created with mode 0755 if needed. A stale socket left by a killed service
    is replaced; a live one is not. :raises ConfigError: another service listens there, the
    path is not a socket, or it cannot be created.
    """
    try:
        path.parent.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("--socket", f"cannot create {path.parent}: {exc.strerror}") from None
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        # Created 0600 (no moment when others could connect), then opened to the group.
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chown(path, -1, group_gid)
        os.chmod(path, SOCKET_MODE)
        sock.listen(64)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError("--socket", f"cannot listen on {path}: {exc.strerror or exc}") from None
    return sock


def _remove_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError("--socket", f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        log.info("removing the stale socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    finally:
        probe.close()
    raise ConfigError("--socket", f"another tunnel service is listening on {path}")
