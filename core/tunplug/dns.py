"""The DNS manager contract: point the system resolver at the tunnel and put it back.

Who calls it: the headless client, after the device is up and before it goes down. Who
implements it: :mod:`tunplug_dns` (``systemd-resolved``, ``etc-resolv-conf``, ``nrpt``,
``disabled``) and
third-party plugins, registered through ``tunplug_register_dns_managers``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """What the tunnel wants the resolver to use.

    ``full_tunnel`` asks that every query go to ``servers`` (``~.`` with systemd-resolved),
    not only those for ``domains``.

    ``routing_domains`` are routing-only domains (a gateway's DNS resources): queries for
    names under them, and only those, go to ``routing_servers`` (through the tunnel); every
    other name resolves as it did before (with ``servers`` when there are any, else with the
    system's own servers). They are never search domains.
    """

    interface: str
    servers: tuple[IPv4Address | IPv6Address, ...] = ()
    domains: tuple[str, ...] = ()
    full_tunnel: bool = False
    routing_servers: tuple[IPv4Address | IPv6Address, ...] = ()
    routing_domains: tuple[str, ...] = ()

    @property
    def routes_names(self) -> bool:
        """Whether some names (the routing domains) have servers of their own."""
        return bool(self.routing_servers and self.routing_domains)


class DnsManager(ABC):
    """Applies :class:`DnsSettings` to the system and restores what was there before.

    Errors: :class:`~tunplug.exceptions.TunplugError` subclasses with a message that says what
    to fix; a manager never leaves the resolver half-configured when ``activate`` fails.
    """

    #: The registered name, used by ``--dns-control``.
    name: ClassVar[str]
    #: One line for ``tunplug plugins``.
    description: ClassVar[str] = ""
    #: How far the manager was tested, when users must know (shown by ``tunplug plugins``).
    caveat: ClassVar[str | None] = None

    def __init__(self, state_dir: Path) -> None:
        #: A private directory (created by the caller, mode 0700) that survives restarts: where a
        #: manager keeps what it must restore, also after a crash of the previous run.
        self.state_dir = state_dir

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Say why this manager cannot work here, or return ``None``."""
        return None

    @abstractmethod
    async def activate(self, settings: DnsSettings) -> None:
        """Point the resolver at the tunnel's servers."""

    @abstractmethod
    async def deactivate(self) -> None:
        """Restore the resolver as it was. Idempotent; also recovers after a crash."""


def resolv_conf_nameservers(text: str) -> list[str]:
    """The addresses of a resolv.conf text's ``nameserver`` lines, in order, without an IPv6
    scope (``%eth0``); lines that are not an address are skipped, as glibc skips them."""
    servers = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                servers.append(str(ip_address(words[1].split("%", 1)[0])))
            except ValueError:
                continue
    return servers
