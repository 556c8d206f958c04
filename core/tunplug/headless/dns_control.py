"""Which DNS manager a client tunnel uses (``--dns-control``), and opening it.

Who calls it: the headless client (:mod:`tunplug.cli.headless`) and the tunnel service's
session (:mod:`tunplug.service.session`), once per tunnel start.
"""

from __future__ import annotations

from pathlib import Path

from tunplug.app import App
from tunplug.dns import DnsManager
from tunplug.exceptions import ConfigError
from tunplug.headless.sources import Source


def choose_dns_manager(app: App, name: str, loaded: Source) -> str:
    """The DNS manager to use: ``auto`` resolved, the name checked (:raises ConfigError:)."""
    managers = app.plugins.dns_managers()
    if name == "auto":
        name = next(
            (
                candidate
                for candidate in ("systemd-resolved", "etc-resolv-conf")
                if candidate in managers and managers[candidate].unavailable_reason() is None
            ),
            "disabled",
        )
    if name not in managers:
        known = ", ".join(sorted(managers))
        raise ConfigError("--dns-control", f"unknown DNS manager {name!r} (installed: {known})")
    reason = managers[name].unavailable_reason()
    if reason and loaded.config.dns_servers:
        raise ConfigError("--dns-control", f"DNS manager {name!r} cannot run here: {reason}")
    return name


def dns_manager(app: App, name: str, state_dir: Path) -> DnsManager:
    """The manager, with its private state directory (mode 0700) created."""
    directory = state_dir / "dns"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("--state-dir", f"cannot create {directory}: {exc.strerror}") from None
    return app.dns_manager(name, directory)
