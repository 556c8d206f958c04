"""WinTun TUN backend (``wintun``) for tunplug on Windows: ctypes over wintun.dll.

One receive thread per adapter drains WinTun's receive ring; sends go straight into the send
ring, with backpressure when it is full. See :mod:`tunplug_tun_wintun.device`; the binding is
:mod:`tunplug_tun_wintun._wintun`, a fake wintun.dll for tests :mod:`tunplug_tun_wintun.testing`.

Windows-only things (``ctypes.WinDLL``, ``ctypes.WINFUNCTYPE``, ``ctypes.get_last_error``) are
touched only when an adapter is opened on Windows, so this package imports on every OS. It has
not been run on real Windows by this project's CI; ``docs/platforms.md`` says what was tested.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunplug_tun_wintun.device import WintunTun

__all__ = ["WintunTun"]


def __getattr__(name: str) -> Any:
    # Imported on first use: plugin discovery imports only tunplug_tun_wintun.plugin.
    if name == "WintunTun":
        from tunplug_tun_wintun.device import WintunTun

        return WintunTun
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
