"""utun TUN backend (``darwin``) for tunplug on macOS: a PF_SYSTEM control socket per device.

No threads: the non-blocking utun socket is read and written from the event loop, every packet
behind a 4-byte address family header. See :mod:`tunplug_tun_darwin.device`; the macOS facts
are in :mod:`tunplug_tun_darwin._utun`, the ``ifconfig``/``route`` commands in
:mod:`tunplug_tun_darwin.ifconfig`.

``fcntl`` and the ``PF_SYSTEM`` socket are touched only when a device is opened on macOS, so
this package imports on every OS. It has not been run on real macOS by this project's CI;
``docs/platforms.md`` says what was tested.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunplug_tun_darwin.device import DarwinUtunTun

__all__ = ["DarwinUtunTun"]


def __getattr__(name: str) -> Any:
    # Imported on first use: plugin discovery imports only tunplug_tun_darwin.plugin.
    if name == "DarwinUtunTun":
        from tunplug_tun_darwin.device import DarwinUtunTun

        return DarwinUtunTun
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
