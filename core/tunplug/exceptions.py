"""Exceptions raised by tunplug and its backends.

Backends translate the operating system's errors at their boundary (see
:func:`tunplug.exceptions.map_os_errors`), so that callers only ever catch these classes. The
original ``errno`` is kept on :class:`TunError` and its subclasses.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Iterator
from contextlib import contextmanager


class TunplugError(Exception):
    """Base class of every error tunplug raises on purpose."""


class ConfigError(TunplugError):
    """A setting or configuration file has a bad value.

    ``setting`` names what the user has to change. Command-line tools print ``str(error)`` as
    one line and exit with status 2.
    """

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


class PluginError(TunplugError):
    """A plugin is broken: it failed to import, or two plugins claim one backend name."""


class BackendUnavailable(TunplugError):
    """The chosen backend cannot run here (wrong platform, missing driver or library)."""


class TunError(TunplugError):
    """A TUN device operation failed. ``errno`` is the operating system's code, if any."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class BusyResource(TunError):
    """The device name is taken by another process (tunplug never joins a foreign device)."""


class ClosedResource(TunError):
    """The device was closed, by this process or from outside, while in use."""


class PermissionDenied(TunError):
    """The process lacks a privilege it needs (usually ``CAP_NET_ADMIN``)."""


_ERRNO_CLASSES: dict[int, type[TunError]] = {
    _errno.EBUSY: BusyResource,
    _errno.EEXIST: BusyResource,
    _errno.EPERM: PermissionDenied,
    _errno.EACCES: PermissionDenied,
    _errno.EBADF: ClosedResource,
    _errno.EBADFD: ClosedResource,
    _errno.EIO: ClosedResource,
}


@contextmanager
def map_os_errors(action: str) -> Iterator[None]:
    """Translate an :class:`OSError` raised inside the block into a :class:`TunError`.

    ``action`` completes the sentence "failed to ...", e.g. ``"open /dev/net/tun"``. The errno is
    kept, and the subclass follows it (EBUSY -> :class:`BusyResource`, EPERM ->
    :class:`PermissionDenied`, EBADF/EIO -> :class:`ClosedResource`).
    """
    try:
        yield
    except OSError as exc:
        cls = _ERRNO_CLASSES.get(exc.errno or 0, TunError)
        reason = exc.strerror or str(exc)
        raise cls(f"failed to {action}: {reason}", exc.errno) from exc


def single_leaf(exc: BaseException) -> BaseException:
    """The one error inside nested single-member exception groups, else ``exc`` itself.

    A task group wraps even a lone error in an exception group; where one error is reported
    (a command's one line on stderr, the tunnel service's ``Disconnected``), this unwraps it.
    A group of several errors is returned as it is.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
