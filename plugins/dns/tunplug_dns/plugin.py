"""Registers the builtin DNS managers."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tunplug import hookimpl
from tunplug.dns import DnsManager, DnsSettings

log = logging.getLogger(__name__)


class DisabledDns(DnsManager):
    """Leaves the system resolver alone (``--dns-control disabled``)."""

    name = "disabled"
    description = "leave the system resolver untouched"

    async def activate(self, settings: DnsSettings) -> None:
        if settings.servers:
            log.info(
                "DNS control is disabled: not configuring %s for %s",
                ", ".join(map(str, settings.servers)),
                settings.interface,
            )

    async def deactivate(self) -> None:
        return None


@hookimpl
def tunplug_register_dns_managers() -> Sequence[type[DnsManager]]:
    return [DisabledDns]
