"""The routes, policy rules and sysctl a linux-mq device sets up, and takes down when it closes.

Who calls it: :class:`tunplug_tun_linux_mq.device.LinuxMultiQueueTun`, whose ``add_routes``,
``remove_routes`` and ``route_all_traffic`` are :class:`DeviceRoutes`' methods, and whose
``aclose`` calls :meth:`DeviceRoutes.release` from a worker thread. The changes go through
:mod:`.netlink` (a short-lived child process), imported on first use.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING

import anyio

from tunplug.exceptions import TunError
from tunplug.sysctl_record import SysctlRecord, netns_record

if TYPE_CHECKING:
    from tunplug_tun_linux_mq.netlink import Route, Rule

log = logging.getLogger(__name__)

#: Priority of the full-tunnel rules (``suppress_prefixlength`` rule, then the fwmark rule):
#: before the main table's 32766, like ``wg-quick``'s.
RULE_PRIORITY = 32764
#: The kernel's main routing table.
MAIN_TABLE_ID = 254
#: Lets reverse-path filtering accept replies to marked packets (``wg-quick`` sets it too).
SRC_VALID_MARK = "/proc/sys/net/ipv4/conf/all/src_valid_mark"


class DeviceRoutes:
    """What one device added to the routing setup, the only owner of that record.

    The async methods run in the event loop (the work itself in a worker thread, shielded from
    cancellation so that what was added is always recorded); :meth:`release` runs once, in a
    worker thread, while the device still exists.
    """

    def __init__(self, device_name: str) -> None:
        self._device_name = device_name
        self._routes: list[Route] = []
        self._rules: list[Rule] = []
        self._sysctl_restore: dict[str, str] = {}
        self._sysctl_record: SysctlRecord | None = None

    @property
    def routes(self) -> list[Route]:
        """The routes :meth:`add` and :meth:`route_all_traffic` added (not those already there)."""
        return list(self._routes)

    async def add(self, networks: Sequence[IPv4Network | IPv6Network]) -> None:
        """Route ``networks`` into the device (see :func:`.netlink.add_routes`)."""
        from tunplug_tun_linux_mq import netlink

        with anyio.CancelScope(shield=True):
            added = await anyio.to_thread.run_sync(netlink.add_routes, self._device_name, networks)
        self._routes.extend(added)

    async def remove(self, networks: Sequence[IPv4Network | IPv6Network]) -> None:
        """Remove the routes :meth:`add` added for ``networks``."""
        from tunplug_tun_linux_mq import netlink

        wanted = set(networks)
        going = [route for route in self._routes if route.network in wanted]
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(netlink.remove_routes, going)
        self._routes = [route for route in self._routes if route not in going]

    async def route_all_traffic(
        self, networks: Sequence[IPv4Network | IPv6Network], mark: int
    ) -> None:
        """Full tunnel with policy routing (see :meth:`tunplug.tun.Tun.route_all_traffic`).

        Like ``wg-quick``: the default route of each family goes into table ``mark``; rule
        ``not fwmark mark lookup mark`` sends unmarked packets there, and a rule before it,
        ``lookup main suppress_prefixlength 0``, keeps every main-table route except the
        default one. Rules left by a run that was killed are replaced.
        """
        from tunplug_tun_linux_mq import netlink

        defaults = [network for network in networks if network.prefixlen == 0]
        families = sorted({network.version for network in defaults})
        rules = [
            rule
            for family in families
            for rule in (
                netlink.Rule(family, RULE_PRIORITY, MAIN_TABLE_ID, suppress_prefixlength=0),
                netlink.Rule(family, RULE_PRIORITY + 1, mark, fwmark=mark, invert=True),
            )
        ]

        def apply() -> None:
            routes = netlink.add_routes(self._device_name, defaults, table=mark)
            self._routes.extend(routes)
            netlink.remove_rules(rules)  # leftovers of a killed run: same rules, same table
            self._rules.extend(netlink.add_rules(rules))
            if 4 in families:
                self._set_src_valid_mark()

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(apply)
        log.info("full tunnel through %s: %s", self._device_name, "; ".join(map(str, rules)))

    def _set_src_valid_mark(self) -> None:
        """src_valid_mark on for the full tunnel, the value from before kept in a record
        (:mod:`tunplug.sysctl_record`), so that the run after a SIGKILL puts back the value
        from before the killed run, not the ``1`` it left."""
        record = SysctlRecord(netns_record("tun-linux-mq-src-valid-mark"), "src_valid_mark left on")
        restore = record.adopt()
        try:
            with open(SRC_VALID_MARK, encoding="ascii") as file:
                current = file.read().strip()
        except OSError as exc:
            log.warning("cannot read %s: %s", SRC_VALID_MARK, exc.strerror)
            return
        if current != "1":
            restore.setdefault(SRC_VALID_MARK, current)
        if restore:
            try:
                record.write(restore)
            except OSError as exc:
                log.warning("cannot keep %s: %s (a killed run leaves src_valid_mark on)",
                            record.path, exc.strerror)  # fmt: skip
        self._sysctl_record = record
        self._sysctl_restore.update(restore)
        _set_sysctl(SRC_VALID_MARK, "1")

    def release(self) -> None:
        """Worker thread: remove the rules, restore the sysctl, remove the routes. Logs
        failures; never raises (the kernel drops a device's routes with the device anyway)."""
        if self._rules:
            from tunplug_tun_linux_mq import netlink

            try:
                netlink.remove_rules(self._rules)
            except TunError as exc:
                log.error("%s: remove it with 'ip rule del'", exc)
            self._rules.clear()
        for path, value in self._sysctl_restore.items():
            _set_sysctl(path, value)
        self._sysctl_restore.clear()
        if self._sysctl_record is not None:
            self._sysctl_record.remove()
            self._sysctl_record = None
        if self._routes:
            from tunplug_tun_linux_mq import netlink

            try:
                netlink.remove_routes(self._routes)
            except TunError as exc:
                log.warning("%s (the kernel removes them with the device)", exc)
            self._routes.clear()


def _set_sysctl(path: str, value: str) -> dict[str, str]:
    """Write ``value`` to ``path``; returns ``{path: old value}`` when it changed anything."""
    try:
        with open(path, encoding="ascii") as file:
            old = file.read().strip()
        if old == value:
            return {}
        with open(path, "w", encoding="ascii") as file:
            file.write(value)
    except OSError as exc:
        log.warning("cannot set %s to %s: %s", path, value, exc.strerror)
        return {}
    return {path: old}
