"""The application object: settings plus a freshly loaded plugin host.

Who calls it: every CLI and embedding program. Each :class:`App` has its own pluggy manager;
nothing is loaded at import time, so two apps (or two tests) never share plugin state.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from tunplug.config import TunplugSettings, env_name
from tunplug.crypto import CryptoBackend
from tunplug.dns import DnsManager
from tunplug.events import TunnelInfo
from tunplug.exceptions import BackendUnavailable, ConfigError
from tunplug.pipeline import Pipeline
from tunplug.plugins import PluginHost
from tunplug.tun import Tun, TunOptions

#: The TUN backend ``tun_backend = "auto"`` picks on each operating system.
PLATFORM_TUN_BACKENDS = {"linux": "linux-mq", "win32": "wintun", "darwin": "darwin"}


class App:
    """Settings and plugins for one run of a tunplug command."""

    def __init__(self, settings: TunplugSettings, plugins: PluginHost | None = None) -> None:
        self.settings = settings
        self.plugins = plugins or PluginHost.from_settings(settings)

    def configure(self) -> None:
        """Tell plugins the settings are final (they may refuse with ConfigError)."""
        self.plugins.notify_configured(self.settings)

    def tun_backend(self, name: str | None = None) -> type[Tun]:
        """The TUN backend class for ``name`` (default: the setting; ``auto``: this platform).

        :raises ConfigError: no such backend is installed.
        :raises BackendUnavailable: it is installed but cannot run here.
        """
        name = name or self.settings.tun_backend
        if name == "auto":
            name = PLATFORM_TUN_BACKENDS.get(sys.platform, "")
        return _choose("TUN backend", self.plugins.tun_backends(), name, "tun_backend")

    async def open_tun(self, options: TunOptions, backend: str | None = None) -> Tun:
        """Create a device with the chosen backend."""
        return await self.tun_backend(backend).create(options)

    def crypto(self, name: str | None = None) -> CryptoBackend:
        """An instance of the crypto backend ``name`` (default: the setting)."""
        name = name or self.settings.crypto_backend
        return _choose("crypto backend", self.plugins.crypto_backends(), name, "crypto_backend")()

    def dns_manager(self, name: str, state_dir: Path) -> DnsManager:
        """An instance of the DNS manager ``name`` (``--dns-control``), state in ``state_dir``."""
        return _choose("DNS manager", self.plugins.dns_managers(), name, "dns_control")(state_dir)

    def pipeline(self, tunnel: TunnelInfo) -> Pipeline:
        return self.plugins.pipeline(self.settings, tunnel)


B = TypeVar("B", type[Tun], type[CryptoBackend], type[DnsManager])


def _choose(kind: str, registry: Mapping[str, B], name: str, setting: str) -> B:
    """The class registered as ``name``, or one line saying what is installed or wrong."""
    backend = registry.get(name)
    if backend is None:
        known = ", ".join(sorted(registry)) or "none"
        raise ConfigError(env_name(setting), f"unknown {kind} {name!r} (installed: {known})")
    reason = backend.unavailable_reason()
    if reason:
        raise BackendUnavailable(f"{kind} {name!r} cannot run here: {reason}")
    return backend
