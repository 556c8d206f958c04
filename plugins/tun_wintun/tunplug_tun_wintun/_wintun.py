"""A ctypes binding of wintun.dll (https://www.wintun.net), checked against ``api/wintun.h``.

Who calls it: :mod:`tunplug_tun_wintun.device` (through the :class:`WintunLibrary` that
:mod:`._api` builds; :func:`find_dll` when it opens a device), :mod:`.settings` (the ring
capacity's rule), and the tests, which compare :func:`wintun_prototypes` with the header and
run the binding over the fake DLL of :mod:`tunplug_tun_wintun.testing`.

:class:`WintunLibrary` wraps any object with the 14 exported functions: ``ctypes.WinDLL``
loaded with ``use_last_error=True`` on Windows (errors are read with
``ctypes.get_last_error``), or the fake. Its methods return Python values and raise
:class:`~tunplug.exceptions.TunError` subclasses carrying the Windows error code; the two
"errors" that are normal flow come back as ``None``: an empty receive ring
(``ERROR_NO_MORE_ITEMS``) and a full send ring (``ERROR_BUFFER_OVERFLOW``).

This module imports on every OS; nothing here loads a DLL.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunplug.exceptions import BackendUnavailable, ConfigError
from tunplug_tun_wintun._win32 import (
    BOOL,
    BYTE_P,
    DWORD,
    DWORD64,
    ERROR_BUFFER_OVERFLOW,
    ERROR_NO_MORE_ITEMS,
    GUID,
    HANDLE,
    LPCWSTR,
    NET_LUID,
    FuncTypeFactory,
    Prototype,
    bind,
    windows_error,
)

log = logging.getLogger(__name__)

#: Ring capacity bounds (bytes, each a power of two), from wintun.h.
WINTUN_MIN_RING_CAPACITY = 0x20000  # 128 KiB
WINTUN_MAX_RING_CAPACITY = 0x4000000  # 64 MiB
#: The largest packet a ring carries, from wintun.h.
WINTUN_MAX_IP_PACKET_SIZE = 0xFFFF
#: ``WINTUN_LOGGER_LEVEL``: INFO, WARN, ERR.
WINTUN_LOG_INFO, WINTUN_LOG_WARN, WINTUN_LOG_ERR = 0, 1, 2
#: Adapter names hold up to ``MAX_ADAPTER_NAME - 1`` characters (MAX_ADAPTER_NAME is 128).
MAX_ADAPTER_NAME_LENGTH = 127

#: The variables of the settings that set the ring capacity and name wintun.dll, as messages
#: name them (:class:`tunplug_tun_wintun.settings.WintunSettings` declares both).
RING_CAPACITY_ENV = "TUNPLUG_WINTUN_RING_CAPACITY"
DLL_ENV = "TUNPLUG_WINTUN_DLL"
DLL_NAME = "wintun.dll"
DLL_SOURCE = "https://www.wintun.net"

#: Logger callbacks handed to a wintun.dll, kept alive for good (see WintunLibrary.set_logger).
_INSTALLED_LOGGERS: list[Any] = []


def wintun_prototypes(functype: FuncTypeFactory) -> dict[str, Prototype]:
    """Every wintun.dll export with its result and argument types, as in wintun.h.

    ``functype`` makes the logger callback's type (``ctypes.WINFUNCTYPE`` on Windows). The
    callback type is the single argument type of ``WintunSetLogger``.
    """
    # VOID (CALLBACK *)(WINTUN_LOGGER_LEVEL Level, DWORD64 Timestamp, LPCWSTR Message)
    logger_callback = functype(None, ctypes.c_int, DWORD64, LPCWSTR)
    adapter = session = HANDLE  # WINTUN_ADAPTER_HANDLE, WINTUN_SESSION_HANDLE: opaque pointers
    return {
        "WintunCreateAdapter": Prototype(adapter, (LPCWSTR, LPCWSTR, ctypes.POINTER(GUID))),
        "WintunOpenAdapter": Prototype(adapter, (LPCWSTR,)),
        "WintunCloseAdapter": Prototype(None, (adapter,)),
        "WintunDeleteDriver": Prototype(BOOL, ()),
        "WintunGetAdapterLUID": Prototype(None, (adapter, ctypes.POINTER(NET_LUID))),
        "WintunGetRunningDriverVersion": Prototype(DWORD, ()),
        "WintunSetLogger": Prototype(None, (logger_callback,)),
        "WintunStartSession": Prototype(session, (adapter, DWORD)),
        "WintunEndSession": Prototype(None, (session,)),
        "WintunGetReadWaitEvent": Prototype(HANDLE, (session,)),
        "WintunReceivePacket": Prototype(BYTE_P, (session, ctypes.POINTER(DWORD))),
        "WintunReleaseReceivePacket": Prototype(None, (session, BYTE_P)),
        "WintunAllocateSendPacket": Prototype(BYTE_P, (session, DWORD)),
        "WintunSendPacket": Prototype(None, (session, BYTE_P)),
    }


class WintunLibrary:
    """Typed calls into wintun.dll (or a stand-in with the same functions).

    ``functype`` builds the logger callback type; ``last_error`` returns the calling thread's
    last Windows error (``ctypes.get_last_error`` for a ``WinDLL`` loaded with
    ``use_last_error=True``).
    """

    def __init__(
        self, library: Any, *, functype: FuncTypeFactory, last_error: Callable[[], int]
    ) -> None:
        self.prototypes = wintun_prototypes(functype)
        functions = bind(library, self.prototypes, DLL_NAME)
        self._create_adapter = functions["WintunCreateAdapter"]
        self._open_adapter = functions["WintunOpenAdapter"]
        self._close_adapter = functions["WintunCloseAdapter"]
        self._delete_driver = functions["WintunDeleteDriver"]
        self._get_adapter_luid = functions["WintunGetAdapterLUID"]
        self._get_running_driver_version = functions["WintunGetRunningDriverVersion"]
        self._set_logger = functions["WintunSetLogger"]
        self._start_session = functions["WintunStartSession"]
        self._end_session = functions["WintunEndSession"]
        self._get_read_wait_event = functions["WintunGetReadWaitEvent"]
        self._receive_packet = functions["WintunReceivePacket"]
        self._release_receive_packet = functions["WintunReleaseReceivePacket"]
        self._allocate_send_packet = functions["WintunAllocateSendPacket"]
        self._send_packet = functions["WintunSendPacket"]
        self._last_error = last_error
        self._logger: Any = None

    # -- adapters ----------------------------------------------------------------------
    def create_adapter(self, name: str, tunnel_type: str, guid: uuid.UUID | None) -> int:
        """Create an adapter (needs Administrator); ``guid`` fixes the network profile."""
        requested = GUID.from_buffer_copy(guid.bytes_le) if guid is not None else None
        handle: int | None = self._create_adapter(name, tunnel_type, requested)
        if not handle:
            raise windows_error(self._last_error(), f"create WinTun adapter {name!r}")
        return handle

    def open_adapter(self, name: str) -> int | None:
        """The handle of an existing adapter named ``name``, or ``None`` if there is none."""
        handle: int | None = self._open_adapter(name)
        return handle or None

    def close_adapter(self, adapter: int) -> None:
        """Release the handle; an adapter this process created is removed."""
        self._close_adapter(adapter)

    def delete_driver(self) -> None:
        """Remove the driver once no adapter uses it (not used by the backend)."""
        if not self._delete_driver():
            raise windows_error(self._last_error(), "delete the WinTun driver")

    def adapter_luid(self, adapter: int) -> int:
        luid = NET_LUID()
        self._get_adapter_luid(adapter, luid)
        return int(luid.Value)

    def running_driver_version(self) -> int | None:
        """The loaded driver's version (major << 16 | minor), or ``None`` if none is loaded."""
        version: int = self._get_running_driver_version()
        return version or None

    @property
    def has_logger(self) -> bool:
        """Whether :meth:`set_logger` installed a sink (the logger is global to the DLL)."""
        return self._logger is not None and bool(self._logger)

    def set_logger(self, sink: Callable[[int, int, str], None] | None) -> None:
        """Route the DLL's log lines to ``sink(level, timestamp, message)``; ``None`` stops."""
        callback_type = self.prototypes["WintunSetLogger"].argtypes[0]
        callback = callback_type(sink) if sink is not None else callback_type()
        # The DLL keeps calling the callback after this object is gone (the logger is global
        # to the DLL), so every callback handed over is kept for the life of the process.
        _INSTALLED_LOGGERS.append(callback)
        self._set_logger(callback)
        self._logger = callback

    # -- sessions ----------------------------------------------------------------------
    def start_session(self, adapter: int, capacity: int) -> int:
        check_ring_capacity(capacity)
        session: int | None = self._start_session(adapter, capacity)
        if not session:
            raise windows_error(self._last_error(), "start a WinTun session")
        return session

    def end_session(self, session: int) -> None:
        self._end_session(session)

    def read_wait_event(self, session: int) -> int:
        """The event signalled when packets arrive (owned by the session: never close it)."""
        handle: int | None = self._get_read_wait_event(session)
        if not handle:
            raise windows_error(self._last_error(), "get the session's read-wait event")
        return handle

    def receive_packet(self, session: int) -> bytes | None:
        """Copy out and release the next packet, or return ``None`` if the ring is empty.

        :raises ~tunplug.exceptions.ClosedResource: the adapter is terminating.
        :raises ~tunplug.exceptions.TunError: the ring is corrupt.
        """
        size = DWORD()
        address: int | None = self._receive_packet(session, size)
        if not address:
            code = self._last_error()
            if code == ERROR_NO_MORE_ITEMS:
                return None
            raise windows_error(code, "receive from the WinTun ring")
        packet = ctypes.string_at(address, size.value)
        self._release_receive_packet(session, address)
        return packet

    def send(self, session: int, packet: bytes) -> bool:
        """Copy ``packet`` into the send ring and send it; ``False`` if the ring is full.

        :raises ~tunplug.exceptions.ClosedResource: the adapter is terminating.
        """
        address: int | None = self._allocate_send_packet(session, len(packet))
        if not address:
            code = self._last_error()
            if code == ERROR_BUFFER_OVERFLOW:
                return False
            raise windows_error(code, "allocate in the WinTun send ring")
        ctypes.memmove(address, packet, len(packet))
        self._send_packet(session, address)
        return True


def ring_capacity_problem(capacity: int) -> str | None:
    """What is wrong with ``capacity`` as a WinTun ring size, or ``None`` if WinTun takes it."""
    if WINTUN_MIN_RING_CAPACITY <= capacity <= WINTUN_MAX_RING_CAPACITY and not capacity & (
        capacity - 1
    ):
        return None
    return (
        f"must be a power of two between {WINTUN_MIN_RING_CAPACITY:#x} and "
        f"{WINTUN_MAX_RING_CAPACITY:#x} bytes, not {capacity:#x}"
    )


def check_ring_capacity(capacity: int, setting: str = RING_CAPACITY_ENV) -> int:
    """Return ``capacity`` if WinTun accepts it as a ring size, else raise :class:`ConfigError`."""
    problem = ring_capacity_problem(capacity)
    if problem is not None:
        raise ConfigError(setting, problem)
    return capacity


def find_dll(configured: Path | None) -> Path:
    """The absolute path of wintun.dll.

    ``configured`` (the ``wintun_dll`` setting) names the file when set; otherwise it is
    expected next to the Python executable (``python.exe``). Only absolute paths are used,
    never the DLL search path.

    :raises ~tunplug.exceptions.BackendUnavailable: there is no such file; the message says
        where it was looked for, and where to get the DLL.
    """
    candidate = configured if configured is not None else Path(sys.executable).parent / DLL_NAME
    if candidate.is_file():
        return candidate.absolute()
    if configured is not None:
        reason = f"{DLL_ENV} names {candidate}, which does not exist"
    else:
        reason = (
            f"{DLL_NAME} not found at {candidate}: download the signed DLL from {DLL_SOURCE} "
            f"(bin/<arch>/{DLL_NAME}) and put it there, or set {DLL_ENV}"
        )
    raise BackendUnavailable(f"wintun: {reason}")


def forward_log(level: int, timestamp: int, message: str) -> None:
    """A logger sink for :meth:`WintunLibrary.set_logger`: into Python logging."""
    del timestamp  # logging stamps records itself
    python_level = {WINTUN_LOG_WARN: logging.WARNING, WINTUN_LOG_ERR: logging.ERROR}.get(
        level, logging.INFO
    )
    log.log(python_level, "wintun: %s", message)
