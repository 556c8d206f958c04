"""Registers the builtin DNS managers; ``disabled`` lives here, the others in their modules.

Who calls it: the plugin host, through ``tunplug_register_dns_managers`` (builtin plugin
``dns``). Importing it imports no platform module, so every manager is listed on every OS.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tunplug import hookimpl
from tunplug.dns import DnsManager, DnsSettings
from tunplug_dns.nrpt import WindowsNrpt
from tunplug_dns.resolv_conf import EtcResolvConf
from tunplug_dns.resolved import SystemdResolved

log = logging.getLogger(__name__)


class DisabledDns(DnsManager):
    """Leaves the system resolver alone (``--dns-control disabled``)."""

    name = "disabled"
    description = "leave the system resolver untouched"

    async def activate(self, settings: DnsSettings) -> None:
        servers = (*settings.servers, *settings.routing_servers)
        if servers:
            log.info(
                "DNS control is disabled: not configuring %s for %s%s",
                ", ".join(map(str, servers)),
                settings.interface,
                f" (routing domains {' '.join(settings.routing_domains)})"
                if settings.routing_domains
                else "",
            )

    async def deactivate(self) -> None:
        return None


@hookimpl
def tunplug_register_dns_managers() -> Sequence[type[DnsManager]]:
    return [DisabledDns, EtcResolvConf, SystemdResolved, WindowsNrpt]
