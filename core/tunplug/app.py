"""The application object: settings plus a freshly loaded plugin host.

Who calls it: every CLI and embedding program. Each :class:`App` has its own pluggy manager;
nothing is loaded at import time, so two apps (or two tests) never share plugin state.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from tunplug.config import TunplugSettings, env_name
from tunplug.crypto import CryptoBackend
from tunplug.datapath import DataPath
from tunplug.dns import DnsManager
from tunplug.events import TunnelInfo
from tunplug.exceptions import BackendUnavailable, ConfigError
from tunplug.pipeline import Pipeline
from tunplug.plugins import PluginHost
from tunplug.tun import Tun, TunOptions

#: The data paths ``data_path = "auto"`` chooses between, best first.
NATIVE_DATA_PATH = "native"
PYTHON_DATA_PATH = "python"


class App:
    """Settings and plugins for one run of a tunplug command."""

    def __init__(self, settings: TunplugSettings, plugins: PluginHost | None = None) -> None:
        self.settings = settings
        self.plugins = plugins or PluginHost.from_settings(settings)
        #: Why ``data_path = "auto"`` fell back to Python (empty when it did not).
        self.data_path_note = ""

    def configure(self) -> None:
        """Tell plugins the settings are final (they may refuse with ConfigError)."""
        self.plugins.notify_configured(self.settings)

    def tun_backend(self, name: str | None = None) -> type[Tun]:
        """The TUN backend class for ``name`` (default: the setting; ``auto``: this platform).

        :raises ConfigError: no such backend is installed.
        :raises BackendUnavailable: it is installed but cannot run here.
        """
        name = name or self.settings.tun_backend
        backends = self.plugins.tun_backends()
        if name == "auto":
            name = _for_platform(backends, sys.platform)
        return _choose("TUN backend", backends, name, "tun_backend")

    async def open_tun(self, options: TunOptions, backend: str | None = None) -> Tun:
        """Create a device with the chosen backend (which sees these settings in
        ``options.settings`` unless ``options`` brings its own)."""
        if options.settings is None:
            options = replace(options, settings=self.settings)
        return await self.tun_backend(backend).create(options)

    def crypto(self, name: str | None = None) -> CryptoBackend:
        """An instance of the crypto backend ``name`` (default: the setting)."""
        name = name or self.settings.crypto_backend
        return _choose("crypto backend", self.plugins.crypto_backends(), name, "crypto_backend")()

    def data_path(self, name: str | None = None) -> DataPath:
        """The data path ``name`` (default: the setting). ``auto`` is ``native`` when that is
        installed and can run here, else ``python`` (and :attr:`data_path_note` says why).

        :raises ConfigError: no such data path is installed.
        :raises BackendUnavailable: it is installed but cannot run here.
        """
        name = name or self.settings.data_path
        registry = self.plugins.data_paths()
        if name == "auto":
            native = registry.get(NATIVE_DATA_PATH)
            reason = (
                "the native core (tunplug-fastpath) is not installed"
                if native is None
                else native.unavailable_reason()
            )
            self.data_path_note = f"{reason}: pure-Python data path" if reason else ""
            name = PYTHON_DATA_PATH if reason else NATIVE_DATA_PATH
        return _choose("data path", registry, name, "data_path")()

    def dns_manager(self, name: str, state_dir: Path) -> DnsManager:
        """An instance of the DNS manager ``name`` (``--dns-control``), state in ``state_dir``."""
        return _choose("DNS manager", self.plugins.dns_managers(), name, "dns_control")(state_dir)

    def pipeline(self, tunnel: TunnelInfo) -> Pipeline:
        return self.plugins.pipeline(self.settings, tunnel)


def _for_platform(backends: Mapping[str, type[Tun]], platform: str) -> str:
    """The one backend that declares ``platform`` (:attr:`Tun.platforms`).

    :raises ConfigError: none does, or several do (the user must pick one by name).
    """
    serving = sorted(name for name, cls in backends.items() if platform in cls.platforms)
    if len(serving) == 1:
        return serving[0]
    installed = ", ".join(sorted(backends)) or "none"
    problem = (
        f"several TUN backends serve {platform}: {', '.join(serving)}; choose one"
        if serving
        else f"no installed TUN backend serves {platform} (installed: {installed})"
    )
    raise ConfigError(env_name("tun_backend"), problem)


B = TypeVar("B", type[Tun], type[CryptoBackend], type[DnsManager], type[DataPath])


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
