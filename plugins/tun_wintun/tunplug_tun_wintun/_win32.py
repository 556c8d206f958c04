"""ctypes plumbing shared by the WinTun binding: C types, prototype tables and Windows errors.

Who calls it: :mod:`._wintun` (the wintun.dll binding), :mod:`._api`, :mod:`.device` and the
fake Windows of :mod:`tunplug_tun_wintun.testing`; it imports none of them. It also binds the
few kernel32 and iphlpapi functions the backend needs besides wintun.dll: events to wake the
receive thread, and the interface index that ``netsh`` takes.

Everything here imports on every OS: it only uses portable :mod:`ctypes` types. A table of
prototypes is applied to a *library object* (``ctypes.WinDLL`` on Windows, the fake in tests)
with :func:`bind`, which sets ``restype`` and ``argtypes`` on each function, so the binding
code is the same in both cases. Loading real DLLs (``ctypes.WinDLL``, Windows only) happens in
:func:`tunplug_tun_wintun._api.load_windows_api`, called only on Windows.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from tunplug.exceptions import (
    BackendUnavailable,
    BusyResource,
    ClosedResource,
    PermissionDenied,
    TunError,
)

# -- C types, as the Windows headers define them (sizes as on Windows, also on Linux) ------
HANDLE = ctypes.c_void_p
DWORD = ctypes.c_uint32
DWORD64 = ctypes.c_uint64
BOOL = ctypes.c_int32
LPCWSTR = ctypes.c_wchar_p
#: ``BYTE *`` results and arguments are kept as plain addresses (``int``), read with
#: :func:`ctypes.string_at` and written with :func:`ctypes.memmove`.
BYTE_P = ctypes.c_void_p


class GUID(ctypes.Structure):
    """``GUID`` (guiddef.h): the layout of :attr:`uuid.UUID.bytes_le`."""

    _fields_ = (
        ("Data1", ctypes.c_uint32),
        ("Data2", ctypes.c_uint16),
        ("Data3", ctypes.c_uint16),
        ("Data4", ctypes.c_ubyte * 8),
    )


class NET_LUID(ctypes.Structure):
    """``NET_LUID`` (ifdef.h): a union of ``ULONG64 Value`` and bit fields; we use ``Value``."""

    _fields_ = (("Value", ctypes.c_uint64),)


# -- Windows error codes (winerror.h) the backend tells apart -------------------------------
ERROR_SUCCESS = 0
ERROR_FILE_NOT_FOUND = 2
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_DATA = 13
ERROR_HANDLE_EOF = 38
ERROR_INVALID_PARAMETER = 87
ERROR_BUFFER_OVERFLOW = 111
ERROR_ALREADY_EXISTS = 183
ERROR_NO_MORE_ITEMS = 259
ERROR_OBJECT_ALREADY_EXISTS = 5010

_ERROR_NAMES = {
    ERROR_FILE_NOT_FOUND: "the system cannot find the file specified",
    ERROR_ACCESS_DENIED: "access is denied (run as Administrator)",
    ERROR_INVALID_DATA: "the data is invalid (corrupt ring)",
    ERROR_HANDLE_EOF: "the adapter is terminating",
    ERROR_INVALID_PARAMETER: "the parameter is incorrect",
    ERROR_BUFFER_OVERFLOW: "the ring is full",
    ERROR_ALREADY_EXISTS: "the adapter already exists",
    ERROR_NO_MORE_ITEMS: "no more packets",
    ERROR_OBJECT_ALREADY_EXISTS: "the adapter already exists",
}

_ERROR_CLASSES: dict[int, type[TunError]] = {
    ERROR_ACCESS_DENIED: PermissionDenied,
    ERROR_ALREADY_EXISTS: BusyResource,
    ERROR_OBJECT_ALREADY_EXISTS: BusyResource,
    ERROR_HANDLE_EOF: ClosedResource,
}

# -- kernel32 wait results (winbase.h) ------------------------------------------------------
INFINITE = 0xFFFFFFFF
WAIT_OBJECT_0 = 0
WAIT_TIMEOUT = 0x102
WAIT_FAILED = 0xFFFFFFFF


def windows_error(code: int, action: str) -> TunError:
    """A :class:`TunError` for Windows error ``code`` (kept in ``errno``) while doing ``action``.

    ``action`` completes "failed to ...". Access denied becomes :class:`PermissionDenied`, an
    existing adapter :class:`BusyResource`, a terminating adapter :class:`ClosedResource`.
    """
    cls = _ERROR_CLASSES.get(code, TunError)
    return cls(f"failed to {action}: {_error_text(code)} (Windows error {code})", code)


def _error_text(code: int) -> str:
    if code in _ERROR_NAMES:
        return _ERROR_NAMES[code]
    if sys.platform == "win32":
        format_error: Callable[[int], str] = ctypes.FormatError  # type: ignore[attr-defined,unused-ignore]
        return format_error(code).strip()
    return "unknown error"


# -- prototypes and binding ------------------------------------------------------------------


class Prototype(NamedTuple):
    """A C function's result type and argument types, as ctypes wants them."""

    restype: Any
    argtypes: tuple[Any, ...]


#: Builds a function-pointer type: ``ctypes.WINFUNCTYPE`` on Windows (``CALLBACK`` is
#: ``__stdcall``), ``ctypes.CFUNCTYPE`` in tests on other systems.
FuncTypeFactory = Callable[..., Any]

KERNEL32_PROTOTYPES: Mapping[str, Prototype] = {
    # HANDLE CreateEventW(LPSECURITY_ATTRIBUTES, BOOL bManualReset, BOOL bInitialState, LPCWSTR)
    "CreateEventW": Prototype(HANDLE, (ctypes.c_void_p, BOOL, BOOL, LPCWSTR)),
    # BOOL SetEvent(HANDLE)
    "SetEvent": Prototype(BOOL, (HANDLE,)),
    # DWORD WaitForMultipleObjects(DWORD nCount, const HANDLE *, BOOL bWaitAll, DWORD ms)
    "WaitForMultipleObjects": Prototype(DWORD, (DWORD, ctypes.POINTER(HANDLE), BOOL, DWORD)),
    # BOOL CloseHandle(HANDLE)
    "CloseHandle": Prototype(BOOL, (HANDLE,)),
}

IPHLPAPI_PROTOTYPES: Mapping[str, Prototype] = {
    # NETIO_STATUS ConvertInterfaceLuidToIndex(const NET_LUID *, PNET_IFINDEX)
    "ConvertInterfaceLuidToIndex": Prototype(
        DWORD, (ctypes.POINTER(NET_LUID), ctypes.POINTER(DWORD))
    ),
}


def bind(library: Any, prototypes: Mapping[str, Prototype], library_name: str) -> dict[str, Any]:
    """Set ``restype``/``argtypes`` of each function of ``library`` and return them by name.

    :raises BackendUnavailable: the library lacks a function (e.g. a too old wintun.dll).
    """
    functions: dict[str, Any] = {}
    for name, prototype in prototypes.items():
        try:
            function = getattr(library, name)
        except AttributeError:
            raise BackendUnavailable(f"{library_name} has no function {name}") from None
        function.restype = prototype.restype
        function.argtypes = prototype.argtypes
        functions[name] = function
    return functions


class Kernel32:
    """The kernel32 event functions the receive thread waits with."""

    def __init__(self, library: Any, last_error: Callable[[], int]) -> None:
        functions = bind(library, KERNEL32_PROTOTYPES, "kernel32.dll")
        self._create_event = functions["CreateEventW"]
        self._set_event = functions["SetEvent"]
        self._wait = functions["WaitForMultipleObjects"]
        self._close_handle = functions["CloseHandle"]
        self._last_error = last_error

    def create_event(self, *, manual_reset: bool) -> int:
        """A new unnamed, unsignalled event; close it with :meth:`close_handle`."""
        handle: int | None = self._create_event(None, manual_reset, False, None)
        if not handle:
            raise windows_error(self._last_error(), "create an event")
        return handle

    def set_event(self, handle: int) -> None:
        if not self._set_event(handle):
            raise windows_error(self._last_error(), "signal an event")

    def wait_any(self, handles: Sequence[int], timeout_ms: int = INFINITE) -> int | None:
        """Wait until one of ``handles`` is signalled; return its index, ``None`` on timeout."""
        array = (HANDLE * len(handles))(*handles)
        result: int = self._wait(len(handles), array, False, timeout_ms)
        if result == WAIT_TIMEOUT:
            return None
        if result == WAIT_FAILED or not WAIT_OBJECT_0 <= result < WAIT_OBJECT_0 + len(handles):
            raise windows_error(self._last_error(), "wait for the adapter's events")
        return result - WAIT_OBJECT_0

    def close_handle(self, handle: int) -> None:
        self._close_handle(handle)


class Iphlpapi:
    """The IP helper function that turns an adapter's LUID into the index ``netsh`` takes."""

    def __init__(self, library: Any) -> None:
        functions = bind(library, IPHLPAPI_PROTOTYPES, "iphlpapi.dll")
        self._luid_to_index = functions["ConvertInterfaceLuidToIndex"]

    def luid_to_index(self, luid: int) -> int:
        index = DWORD()
        status: int = self._luid_to_index(NET_LUID(luid), index)
        if status != ERROR_SUCCESS:
            raise windows_error(status, "find the adapter's interface index")
        return index.value
