"""The ``nrpt`` DNS manager: Windows Name Resolution Policy Table rules (untested on Windows).

Who calls it: the headless client on Windows through :meth:`tunplug.app.App.dns_manager`
(``--dns-control nrpt``). Tests run it on any OS against :class:`MemoryRegistry`.

An NRPT rule is a registry key under ``HKLM\\`` :data:`LOCAL_POLICY_PATH`; the DNS Client
service sends queries for the rule's namespaces to the rule's servers, ahead of the adapters'
own DNS settings. Each rule here holds (names and values as Firezone and Tailscale write them;
see ``docs/dns.md``):

- ``Version`` (REG_DWORD): 2;
- ``Name`` (REG_MULTI_SZ): the namespaces, ``.corp.example`` (leading dot: that domain and
  every name under it), or ``.`` for every name;
- ``GenericDNSServers`` (REG_SZ): the servers, ``;``-separated;
- ``ConfigOptions`` (REG_DWORD): 8, meaning "use the generic DNS servers";
- ``Comment``, ``DisplayName`` (REG_SZ): what wrote the rule and where its state is;
- ``IPSECCARestriction`` (REG_SZ): empty.

When Group Policy supplies NRPT rules (the key ``HKLM\\`` :data:`GROUP_POLICY_PATH` exists),
Windows ignores the local ones, so the rules are also written there and the machine policy is
refreshed. That key itself is never created or deleted here.

Key names are ``tunplug:<interface>:<n>`` (:func:`rule_key_name`). Removal looks for exactly
those names -- never a key without the prefix, nor one of another interface -- so rules of
other software, of the domain's Group Policy and of a second tunplug tunnel stay untouched.
The interface is recorded in ``state_dir`` before the first key is written: ``activate`` first
removes what a crashed run left, ``deactivate`` removes this run's rules and is idempotent.
One rule holds at most 50 namespaces (a limit Tailscale found); more domains make more rules.

After each change the resolver cache is flushed with ``ipconfig /flushdns`` (documented and
what Firezone runs) rather than ``DnsFlushResolverCache`` from ``dnsapi.dll``, which is not a
documented API. ``winreg`` and ``ctypes.windll`` are imported inside methods only.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from types import ModuleType
from typing import ParamSpec, Protocol, TypeVar

import anyio.to_thread

from tunplug.dns import DnsManager, DnsSettings
from tunplug.exceptions import BackendUnavailable
from tunplug_dns._common import DnsError, StateFile, check_settings

log = logging.getLogger(__name__)
_P = ParamSpec("_P")
_R = TypeVar("_R")

LOCAL_POLICY_PATH = r"SYSTEM\CurrentControlSet\Services\Dnscache\Parameters\DnsPolicyConfig"
GROUP_POLICY_PATH = r"SOFTWARE\Policies\Microsoft\Windows NT\DNSClient\DnsPolicyConfig"
RULE_PREFIX = "tunplug:"
NRPT_RULE_VERSION = 2
#: ``ConfigOptions`` bit: the rule names its own DNS servers (``GenericDNSServers``).
CONFIG_OPTIONS_GENERIC_DNS = 0x8
MAX_NAMESPACES_PER_RULE = 50
STATE_FILE = "nrpt.json"
FLUSH_TIMEOUT_SECONDS = 15.0


class RegType(IntEnum):
    """Registry value types, numbered as ``winreg.REG_*``."""

    SZ = 1
    DWORD = 4
    MULTI_SZ = 7


@dataclass(frozen=True, slots=True)
class RegValue:
    kind: RegType
    data: str | int | tuple[str, ...]


class NrptRegistry(Protocol):
    """The little of the Windows registry and DNS client that :class:`WindowsNrpt` needs.

    Paths are below ``HKEY_LOCAL_MACHINE`` with backslashes; names compare case-insensitively.
    Methods raise :class:`OSError` as ``winreg`` does.
    """

    def key_exists(self, path: str) -> bool:
        """Whether the key exists."""

    def subkey_names(self, path: str) -> list[str]:
        """The names of the key's direct subkeys; empty when the key does not exist."""

    def write_key(self, path: str, values: Mapping[str, RegValue]) -> None:
        """Create the key (and its parents) if needed and set ``values`` on it."""

    def delete_key(self, path: str) -> bool:
        """Delete a key without subkeys; ``False`` when it did not exist."""

    def flush_resolver_cache(self) -> None:
        """Forget cached DNS answers, so that new rules apply to names looked up before."""

    def refresh_group_policy(self) -> None:
        """Make the DNS client re-read the Group Policy NRPT rules."""


def rule_key_name(interface: str, index: int) -> str:
    return f"{RULE_PREFIX}{interface}:{index}"


def rule_interface(key_name: str) -> str | None:
    """The interface of a key named by :func:`rule_key_name`, or ``None`` if not ours."""
    if not key_name.startswith(RULE_PREFIX):
        return None
    interface, sep, index = key_name[len(RULE_PREFIX) :].rpartition(":")
    return interface if sep and index.isdigit() and interface else None


def rule_values(
    interface: str, namespaces: Sequence[str], servers: str, state_dir: Path
) -> dict[str, RegValue]:
    return {
        "Version": RegValue(RegType.DWORD, NRPT_RULE_VERSION),
        "Name": RegValue(RegType.MULTI_SZ, tuple(namespaces)),
        "GenericDNSServers": RegValue(RegType.SZ, servers),
        "ConfigOptions": RegValue(RegType.DWORD, CONFIG_OPTIONS_GENERIC_DNS),
        "Comment": RegValue(
            RegType.SZ, f"tunplug {interface}: removed on exit (state in {state_dir})"
        ),
        "DisplayName": RegValue(RegType.SZ, f"tunplug {interface}"),
        "IPSECCARestriction": RegValue(RegType.SZ, ""),
    }


class WindowsNrpt(DnsManager):
    """Adds NRPT rules for the tunnel's DNS servers and removes them again."""

    name = "nrpt"
    description = "Windows NRPT rules for split or full-tunnel DNS"
    caveat = "never run on real Windows: CI runs it against an in-memory registry"

    def __init__(self, state_dir: Path, *, registry: NrptRegistry | None = None) -> None:
        super().__init__(state_dir)
        self.registry: NrptRegistry = registry if registry is not None else WinRegistry()
        self._state = StateFile(state_dir, STATE_FILE)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None if sys.platform == "win32" else "runs on Windows only"

    async def activate(self, settings: DnsSettings) -> None:
        await anyio.to_thread.run_sync(self._activate, settings)

    async def deactivate(self) -> None:
        await anyio.to_thread.run_sync(self._deactivate)

    # -- the work, in a worker thread -----------------------------------------------------
    def _activate(self, settings: DnsSettings) -> None:
        check_settings(settings)
        iface = settings.interface
        self._remove_leftovers(iface)
        # (namespaces, servers) per rule: the routing domains to their own servers, then the
        # tunnel's servers for their domains (or everything).
        groups: list[tuple[list[str], str]] = []
        if settings.routes_names:
            namespaces = ["." + domain.rstrip(".") for domain in settings.routing_domains]
            groups.append((namespaces, ";".join(map(str, settings.routing_servers))))
        if settings.servers:
            if settings.full_tunnel or not settings.domains:
                namespaces = ["."]
            else:
                namespaces = ["." + domain.rstrip(".") for domain in settings.domains]
            groups.append((namespaces, ";".join(map(str, settings.servers))))
        if not groups:
            log.info("no DNS servers for %s: adding no NRPT rule", iface)
            return
        chunks = [
            (namespaces[i : i + MAX_NAMESPACES_PER_RULE], servers)
            for namespaces, servers in groups
            for i in range(0, len(namespaces), MAX_NAMESPACES_PER_RULE)
        ]
        bases = [LOCAL_POLICY_PATH]
        uses_group_policy = self._registry_call(
            "look for Group Policy NRPT rules", self.registry.key_exists, GROUP_POLICY_PATH
        )
        if uses_group_policy:
            bases.append(GROUP_POLICY_PATH)

        self._state.write({"format": 1, "interfaces": [iface]})
        try:
            for base in bases:
                for index, (chunk, servers) in enumerate(chunks):
                    values = rule_values(iface, chunk, servers, self.state_dir)
                    path = f"{base}\\{rule_key_name(iface, index)}"
                    self._registry_call(f"write {path}", self.registry.write_key, path, values)
        except BaseException:
            try:
                self._remove_rules([iface])
            except DnsError as exc:
                log.warning("could not remove the partial NRPT rules of %s: %s", iface, exc)
            else:
                self._state.remove()
            raise
        self._refresh(group_policy=GROUP_POLICY_PATH in bases)
        for namespaces, servers in groups:
            log.info(
                "NRPT sends %s to %s for %s%s",
                "all DNS queries" if namespaces == ["."] else " ".join(namespaces),
                servers.replace(";", ", "),
                iface,
                " (also as Group Policy rules)" if GROUP_POLICY_PATH in bases else "",
            )

    def _deactivate(self) -> None:
        state = self._state.read()
        if state is None:
            return
        self._remove_rules(_recorded_interfaces(state, self._state.path))
        self._state.remove()

    def _remove_leftovers(self, iface: str) -> None:
        state = self._state.read()
        recorded = _recorded_interfaces(state, self._state.path) if state is not None else []
        # The current interface too: the state file may be gone while its rules are not.
        removed = self._remove_rules([*recorded, iface])
        if removed:
            log.warning(
                "removed NRPT rules of %s left by a previous run that did not exit cleanly",
                ", ".join(sorted(removed)),
            )
        if state is not None:
            self._state.remove()

    def _remove_rules(self, interfaces: Iterable[str]) -> set[str]:
        """Delete our rule keys of ``interfaces`` in both places; the interfaces that had some."""
        wanted = set(interfaces)
        removed: set[str] = set()
        removed_group = False
        for base in (LOCAL_POLICY_PATH, GROUP_POLICY_PATH):
            names = self._registry_call(f"list {base}", self.registry.subkey_names, base)
            for name in names:
                owner = rule_interface(name)
                if owner is not None and owner in wanted:
                    path = f"{base}\\{name}"
                    if self._registry_call(f"delete {path}", self.registry.delete_key, path):
                        removed.add(owner)
                        removed_group |= base == GROUP_POLICY_PATH
        if removed:
            self._refresh(group_policy=removed_group)
        return removed

    def _refresh(self, *, group_policy: bool) -> None:
        # Rules are in place either way; a stale cache or policy only delays them.
        if group_policy:
            try:
                self.registry.refresh_group_policy()
            except OSError as exc:
                log.warning("could not refresh the Group Policy NRPT rules: %s", exc)
        try:
            self.registry.flush_resolver_cache()
        except OSError as exc:
            log.warning("could not flush the DNS resolver cache: %s", exc)

    @staticmethod
    def _registry_call(
        action: str, call: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs
    ) -> _R:
        try:
            return call(*args, **kwargs)
        except OSError as exc:
            raise DnsError(f"NRPT: cannot {action}: {exc.strerror or exc}") from exc


def _recorded_interfaces(state: Mapping[str, object], path: Path) -> list[str]:
    interfaces = state.get("interfaces")
    if not isinstance(interfaces, list) or not all(isinstance(i, str) for i in interfaces):
        raise DnsError(f"DNS state file {path} is damaged; remove our NRPT rules by hand")
    return [str(i) for i in interfaces]


class WinRegistry:
    """:class:`NrptRegistry` on the real Windows registry (``winreg``), 64-bit view."""

    def key_exists(self, path: str) -> bool:
        winreg = _winreg()
        try:
            winreg.OpenKeyEx(winreg.HKEY_LOCAL_MACHINE, path, 0, _access(winreg.KEY_READ)).Close()
        except FileNotFoundError:
            return False
        return True

    def subkey_names(self, path: str) -> list[str]:
        winreg = _winreg()
        try:
            key = winreg.OpenKeyEx(winreg.HKEY_LOCAL_MACHINE, path, 0, _access(winreg.KEY_READ))
        except FileNotFoundError:
            return []
        names: list[str] = []
        with key:
            count = winreg.QueryInfoKey(key)[0]
            for index in range(count):
                names.append(winreg.EnumKey(key, index))
        return names

    def write_key(self, path: str, values: Mapping[str, RegValue]) -> None:
        winreg = _winreg()
        with winreg.CreateKeyEx(
            winreg.HKEY_LOCAL_MACHINE, path, 0, _access(winreg.KEY_WRITE)
        ) as key:
            for name, value in values.items():
                data = list(value.data) if isinstance(value.data, tuple) else value.data
                winreg.SetValueEx(key, name, 0, int(value.kind), data)

    def delete_key(self, path: str) -> bool:
        winreg = _winreg()
        try:
            winreg.DeleteKeyEx(winreg.HKEY_LOCAL_MACHINE, path, _access(0), 0)
        except FileNotFoundError:
            return False
        return True

    def flush_resolver_cache(self) -> None:
        if sys.platform != "win32":
            raise BackendUnavailable("flushing the DNS cache needs Windows")
        try:
            result = subprocess.run(
                ["ipconfig", "/flushdns"],
                capture_output=True,
                text=True,
                timeout=FLUSH_TIMEOUT_SECONDS,
                check=False,
                creationflags=subprocess.CREATE_NO_WINDOW,
            )
        except subprocess.TimeoutExpired as exc:
            raise OSError(f"ipconfig /flushdns took over {FLUSH_TIMEOUT_SECONDS:g}s") from exc
        if result.returncode != 0:
            raise OSError(f"ipconfig /flushdns failed: {result.stdout.strip()}")

    def refresh_group_policy(self) -> None:
        if sys.platform != "win32":
            raise BackendUnavailable("refreshing Group Policy needs Windows")
        import ctypes

        rp_force = 1  # RefreshPolicyEx's only flag: re-apply even unchanged policies
        if not ctypes.windll.userenv.RefreshPolicyEx(True, rp_force):  # machine policy
            raise ctypes.WinError()


def _winreg() -> ModuleType:
    if sys.platform != "win32":
        raise BackendUnavailable("the Windows registry exists on Windows only")
    import winreg

    return winreg


def _access(mask: int) -> int:
    winreg = _winreg()
    # The 64-bit view, also from a 32-bit Python: the DNS client reads that one.
    return mask | int(winreg.KEY_WOW64_64KEY)


class MemoryRegistry:
    """:class:`NrptRegistry` in memory, for tests on any OS (public, like httpcore's mocks).

    ``fail_after_writes`` makes every :meth:`write_key` after that many fail with "Access is
    denied". ``flushes`` and ``policy_refreshes`` count the calls.
    """

    def __init__(self, *, fail_after_writes: int | None = None) -> None:
        self._keys: dict[str, tuple[str, dict[str, RegValue]]] = {}
        self.fail_after_writes = fail_after_writes
        self.writes = 0
        self.flushes = 0
        self.policy_refreshes = 0

    def key_exists(self, path: str) -> bool:
        return path.lower() in self._keys

    def subkey_names(self, path: str) -> list[str]:
        prefix = path.lower() + "\\"
        return [
            name[len(prefix) :]
            for lowered, (name, _) in self._keys.items()
            if lowered.startswith(prefix) and "\\" not in lowered[len(prefix) :]
        ]

    def write_key(self, path: str, values: Mapping[str, RegValue]) -> None:
        if self.fail_after_writes is not None and self.writes >= self.fail_after_writes:
            raise PermissionError(5, "Access is denied")
        self.writes += 1
        parts = path.split("\\")
        for depth in range(1, len(parts) + 1):
            sub = "\\".join(parts[:depth])
            self._keys.setdefault(sub.lower(), (sub, {}))
        self._keys[path.lower()][1].update(values)

    def delete_key(self, path: str) -> bool:
        if path.lower() not in self._keys:
            return False
        if self.subkey_names(path):
            raise PermissionError(5, f"Access is denied (the key {path} has subkeys)")
        del self._keys[path.lower()]
        return True

    def flush_resolver_cache(self) -> None:
        self.flushes += 1

    def refresh_group_policy(self) -> None:
        self.policy_refreshes += 1

    def values(self, path: str) -> dict[str, RegValue]:
        """The values of a key (a copy). :raises KeyError: no such key."""
        return dict(self._keys[path.lower()][1])

    def key_paths(self) -> list[str]:
        """Every key's path, as first written, in creation order."""
        return [name for name, _ in self._keys.values()]
