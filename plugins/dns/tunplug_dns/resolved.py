"""The ``systemd-resolved`` DNS manager: per-link DNS through ``resolvectl``.

Who calls it: the headless client through :meth:`tunplug.app.App.dns_manager` (``--dns-control
systemd-resolved``), on Linux systems where systemd-resolved owns the resolver (Ubuntu, Fedora,
Debian with the ``systemd-resolved`` package).

systemd-resolved keeps DNS settings per network link, so nothing system-wide is rewritten:

- ``resolvectl dns IFACE S1 S2 ...`` -- the tunnel's servers, on the tunnel's link only;
- ``resolvectl domain IFACE D1 D2 ...`` -- its search domains, which resolved also uses as
  routing domains (queries under them go to this link); with ``full_tunnel`` the routing
  domain ``~.`` is added, which sends *every* query to the link;
- ``resolvectl default-route IFACE yes|no`` -- ``yes`` with ``full_tunnel`` (or when no
  domains are given, since servers without domains only make sense as the default), ``no``
  for split DNS, so that other names keep using the other links' servers.

Routing-only domains (``routing_domains``, a gateway's DNS resources) become ``~corp.example``
on the link, with ``routing_servers`` among the link's servers: resolved sends the names under
them to the link and uses them for nothing else (not a search domain, not the default route
unless ``servers`` ask for it).

``deactivate`` runs ``resolvectl revert IFACE``; when the device is already gone resolved has
dropped its settings with it, and the "no such device" answer counts as done. The interface
is recorded in ``state_dir`` before the first command, so a run that crashed is reverted by
the next ``activate``. A failing command is reported as :class:`ResolvectlError` with its
stderr, after reverting whatever part was applied.

Commands are argument lists (never a shell). The ``resolvectl`` executable is a class
attribute and a constructor keyword, so tests substitute a script.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import anyio.to_thread

from tunplug.dns import DnsManager, DnsSettings
from tunplug_dns._common import DnsError, StateFile, check_settings, join_servers

log = logging.getLogger(__name__)

STATE_FILE = "systemd-resolved.json"
#: How long one ``resolvectl`` call may take (it talks to resolved over D-Bus).
COMMAND_TIMEOUT_SECONDS = 15.0

# resolvectl's words for a link that no longer exists (ENODEV, ENXIO, ENOENT; or resolved's
# D-Bus error for an unknown link index).
_LINK_GONE = ("No such device", "No such file or directory", "not known")


class ResolvectlError(DnsError):
    """A ``resolvectl`` command failed; the message ends with its stderr (also ``stderr``)."""

    def __init__(self, message: str, stderr: str = "", *, executed: bool = True) -> None:
        super().__init__(message)
        self.stderr = stderr
        #: False when the command could not even be started (so it changed nothing).
        self.executed = executed


class SystemdResolved(DnsManager):
    """Sets the tunnel link's DNS servers and domains in systemd-resolved."""

    name = "systemd-resolved"
    description = "per-link DNS through resolvectl (split DNS; '~.' for a full tunnel)"
    caveat = "never run against a real systemd-resolved: CI runs a stand-in resolvectl"
    #: The command to run; an absolute path or a name looked up on ``PATH``.
    resolvectl: ClassVar[str] = "resolvectl"
    #: Exists while systemd-resolved runs (it holds the stub resolver's files).
    runtime_dir: ClassVar[Path] = Path("/run/systemd/resolve")

    def __init__(self, state_dir: Path, *, resolvectl: str | None = None) -> None:
        super().__init__(state_dir)
        self.command = resolvectl or self.resolvectl
        self._state = StateFile(state_dir, STATE_FILE)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if shutil.which(cls.resolvectl) is None:
            return f"{cls.resolvectl} not found on PATH"
        if not cls.runtime_dir.is_dir():
            return f"systemd-resolved is not running ({cls.runtime_dir} does not exist)"
        return None

    async def activate(self, settings: DnsSettings) -> None:
        await anyio.to_thread.run_sync(self._activate, settings)

    async def deactivate(self) -> None:
        await anyio.to_thread.run_sync(self._revert_recorded, False)

    # -- the work, in a worker thread -----------------------------------------------------
    def _activate(self, settings: DnsSettings) -> None:
        check_settings(settings)
        self._revert_recorded(True)
        routing = settings.routes_names
        if not settings.servers and not routing:
            log.info("no DNS servers for %s: not configuring systemd-resolved", settings.interface)
            return
        iface = settings.interface
        default_route = bool(settings.servers) and (settings.full_tunnel or not settings.domains)
        domains = [
            *settings.domains,
            *(f"~{domain}" for domain in settings.routing_domains if routing),
            *(["~."] if settings.full_tunnel and settings.servers else []),
        ]
        servers = list(dict.fromkeys([*settings.servers, *settings.routing_servers]))
        commands: list[Sequence[str]] = [["dns", iface, *map(str, servers)]]
        if domains:
            commands.append(["domain", iface, *domains])
        commands.append(["default-route", iface, "yes" if default_route else "no"])

        self._state.write({"format": 1, "interface": iface})
        try:
            for args in commands:
                self._run(args)
        except ResolvectlError as exc:
            if args is commands[0] and not exc.executed:
                self._state.remove()  # nothing ran, so nothing changed
                raise
            self._undo_partial(iface)
            raise
        except BaseException:
            self._undo_partial(iface)
            raise
        log.info(
            "systemd-resolved sends %s to %s on %s",
            "all DNS queries" if default_route else " ".join(domains) or "DNS queries",
            join_servers(servers),
            iface,
        )

    def _undo_partial(self, iface: str) -> None:
        try:
            self._revert(iface)
        except DnsError as exc:
            log.warning("could not undo the partial DNS settings of %s: %s", iface, exc)
        else:
            self._state.remove()

    def _revert_recorded(self, leftover: bool) -> None:
        state = self._state.read()
        if state is None:
            return
        iface = state.get("interface")
        if not isinstance(iface, str) or not iface:
            raise DnsError(f"DNS state file {self._state.path} names no interface; delete it")
        if leftover:
            log.warning(
                "reverting DNS settings of %s left by a previous run that did not exit cleanly",
                iface,
            )
        self._revert(iface)
        self._state.remove()

    def _revert(self, iface: str) -> None:
        try:
            self._run(["revert", iface])
        except ResolvectlError as exc:
            if not any(words in exc.stderr for words in _LINK_GONE):
                raise
            log.debug("%s is gone, and its DNS settings with it", iface)
        else:
            log.info("reverted the DNS settings of %s", iface)

    def _run(self, args: Sequence[str]) -> None:
        argv = [self.command, *args]
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_SECONDS,
                check=False,
            )
        except FileNotFoundError as exc:
            raise ResolvectlError(
                f"cannot run {self.command}: command not found", executed=False
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise ResolvectlError(
                f"{' '.join(argv)} did not finish within {COMMAND_TIMEOUT_SECONDS:g} seconds"
            ) from exc
        except OSError as exc:
            raise ResolvectlError(
                f"cannot run {self.command}: {exc.strerror}", executed=False
            ) from exc
        if result.returncode != 0:
            stderr = "; ".join(line for line in result.stderr.strip().splitlines() if line)
            raise ResolvectlError(
                f"{' '.join(argv)} failed (exit status {result.returncode}): "
                f"{stderr or 'no error message'}",
                stderr,
            )
