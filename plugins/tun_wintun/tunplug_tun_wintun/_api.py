"""Everything the wintun backend calls on Windows, as one injectable object, and its loader.

Who calls it: :mod:`.device` (:func:`load_windows_api` in ``WintunTun.create``; a
:class:`WindowsApi` is what ``WintunTun.open`` takes) and the fake Windows of
:mod:`tunplug_tun_wintun.testing`, which builds a :class:`WindowsApi` over its stand-ins.

It sits above both halves of the binding, :mod:`._win32` (C types, errors, kernel32 and
iphlpapi) and :mod:`._wintun` (wintun.dll, built on :mod:`._win32`), so neither imports the
other's user. It imports on every OS; loading the real DLLs happens only in
:func:`load_windows_api`, on Windows.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tunplug.commands import run_command
from tunplug.exceptions import BackendUnavailable
from tunplug_tun_wintun._win32 import FuncTypeFactory, Iphlpapi, Kernel32
from tunplug_tun_wintun._wintun import WintunLibrary


@dataclass(frozen=True)
class WindowsApi:
    """Everything the backend calls on Windows, injectable as one object.

    ``run`` runs a command line (``netsh``) and returns its exit status and output.
    :func:`load_windows_api` builds the real one; tests build one over the fake of
    :mod:`tunplug_tun_wintun.testing`.
    """

    wintun: WintunLibrary
    kernel32: Kernel32
    iphlpapi: Iphlpapi
    run: Callable[[Sequence[str]], tuple[int, str]]


@functools.cache
def load_windows_api(dll_path: str) -> WindowsApi:
    """Load wintun.dll from ``dll_path`` (an absolute path), kernel32 and iphlpapi. Windows only.

    Loaded once per path and process: every device shares the binding and its logger. The
    DLL is loaded by full path, never through the DLL search path, so a wintun.dll planted in
    the current directory is not picked up.

    :raises BackendUnavailable: not Windows, or a DLL cannot be loaded.
    """
    if sys.platform != "win32":
        raise BackendUnavailable("wintun: runs on Windows only")
    win_dll: Callable[..., Any] = ctypes.WinDLL  # type: ignore[attr-defined,unused-ignore]
    functype: FuncTypeFactory = ctypes.WINFUNCTYPE  # type: ignore[attr-defined,unused-ignore]
    last_error: Callable[[], int] = ctypes.get_last_error  # type: ignore[attr-defined,unused-ignore]
    try:
        wintun = win_dll(dll_path, use_last_error=True)
        kernel32 = win_dll("kernel32", use_last_error=True)
        iphlpapi = win_dll("iphlpapi", use_last_error=True)
    except OSError as exc:
        raise BackendUnavailable(f"wintun: cannot load {dll_path}: {exc}") from exc
    return WindowsApi(
        wintun=WintunLibrary(wintun, functype=functype, last_error=last_error),
        kernel32=Kernel32(kernel32, last_error),
        iphlpapi=Iphlpapi(iphlpapi),
        run=run_command,
    )
