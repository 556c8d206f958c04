"""tunplug: a WireGuard-compatible VPN framework with pluggable TUN backends.

The public surface is small: the :class:`~tunplug.tun.Tun` contract that backends implement,
the ``hookimpl`` marker plugins decorate their hooks with, and the exceptions in
:mod:`tunplug.exceptions`. Everything else is reached through :class:`tunplug.app.App`.
"""

from tunplug._marker import hookimpl, hookspec
from tunplug.exceptions import (
    BackendUnavailable,
    BusyResource,
    ClosedResource,
    ConfigError,
    PluginError,
    TunError,
    TunplugError,
)
from tunplug.tun import Tun, TunOptions

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "BusyResource",
    "ClosedResource",
    "ConfigError",
    "PluginError",
    "Tun",
    "TunError",
    "TunOptions",
    "TunplugError",
    "__version__",
    "hookimpl",
    "hookspec",
]
