"""Registers the ``wintun`` TUN backend (a placeholder until the Windows backend is built)."""

from __future__ import annotations

from collections.abc import Sequence

from tunplug import hookimpl
from tunplug._placeholder import PlaceholderTun
from tunplug.tun import Tun


class WintunTun(PlaceholderTun):
    """Windows WinTun adapter (planned: ctypes over wintun.dll with its own receive thread)."""

    backend_name = "wintun"
    description = "Windows WinTun adapter via ctypes (not implemented yet)"
    platform = "win32"
    platform_name = "Windows"


@hookimpl
def tunplug_register_tun_backends() -> Sequence[type[Tun]]:
    return [WintunTun]
