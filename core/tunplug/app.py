"""The application object: settings plus a freshly loaded plugin host.

Who calls it: every CLI and embedding program. Each :class:`App` has its own pluggy manager;
nothing is loaded at import time, so two apps (or two tests) never share plugin state.
"""

from __future__ import annotations

import sys

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
        backends = self.plugins.tun_backends()
        backend = backends.get(name)
        if backend is None:
            known = ", ".join(sorted(backends)) or "none"
            raise ConfigError(
                env_name("tun_backend"), f"unknown TUN backend {name!r} (installed: {known})"
            )
        reason = backend.unavailable_reason()
        if reason:
            raise BackendUnavailable(f"TUN backend {name!r} cannot run here: {reason}")
        return backend

    async def open_tun(self, options: TunOptions, backend: str | None = None) -> Tun:
        """Create a device with the chosen backend."""
        return await self.tun_backend(backend).create(options)

    def crypto(self, name: str | None = None) -> CryptoBackend:
        """An instance of the crypto backend ``name`` (default: the setting)."""
        name = name or self.settings.crypto_backend
        backends = self.plugins.crypto_backends()
        backend = backends.get(name)
        if backend is None:
            known = ", ".join(sorted(backends)) or "none"
            raise ConfigError(
                env_name("crypto_backend"), f"unknown crypto backend {name!r} (installed: {known})"
            )
        reason = backend.unavailable_reason()
        if reason:
            raise BackendUnavailable(f"crypto backend {name!r} cannot run here: {reason}")
        return backend()

    def dns_manager(self, name: str) -> DnsManager:
        managers = self.plugins.dns_managers()
        manager = managers.get(name)
        if manager is None:
            known = ", ".join(sorted(managers)) or "none"
            raise ConfigError("TUNPLUG_DNS_CONTROL", f"unknown DNS manager {name!r} ({known})")
        return manager()

    def pipeline(self, tunnel: TunnelInfo) -> Pipeline:
        return self.plugins.pipeline(self.settings, tunnel)
