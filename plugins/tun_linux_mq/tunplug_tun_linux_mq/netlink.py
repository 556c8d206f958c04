"""Interface settings, addresses and routes of a TUN device, through rtnetlink.

Who calls it: :meth:`LinuxMultiQueueTun.create` (:func:`configure_interface`), and the engine
at start-up and shutdown (:func:`add_routes` for the peers' AllowedIPs, :func:`remove_routes`
with what :func:`add_routes` returned). The functions are synchronous and block; async callers
run them with ``anyio.to_thread.run_sync``.

The work is done with pyroute2 in a short-lived child process, one per call
(:mod:`.netlink_child`): importing pyroute2 would cost this long-running process about 24 MB
for good, for a few netlink round trips at start-up and shutdown. A call takes about 0.2 s,
mostly the child's imports. The child inherits the network namespace of the calling thread and
the privileges of the process, and finds the same packages (this ``sys.path``). This module
imports neither pyroute2 nor the child, so it imports on every OS. Failures raise
:class:`TunError` (the class the child raised) with one line and the errno.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network, ip_network
from typing import Any

from tunplug import exceptions
from tunplug.exceptions import TunError, map_os_errors

#: The kernel's main routing table (``RT_TABLE_MAIN``).
MAIN_TABLE = 254
#: Firezone's figure: a long transmit queue so that bursts from the tunnel are not dropped.
DEFAULT_TXQUEUELEN = 10000
#: How long a child may take; a few netlink round trips normally take milliseconds.
CHILD_TIMEOUT_SECONDS = 30.0
#: What runs the child (``python -m``).
CHILD_MODULE = "tunplug_tun_linux_mq.netlink_child"

Network = IPv4Network | IPv6Network
Interface = IPv4Interface | IPv6Interface


@dataclass(frozen=True, slots=True)
class Route:
    """A route this module added: ``network`` through interface ``ifname`` in ``table``."""

    network: Network
    ifname: str
    table: int = MAIN_TABLE
    metric: int | None = None

    def __str__(self) -> str:
        table = "" if self.table == MAIN_TABLE else f" table {self.table}"
        metric = "" if self.metric is None else f" metric {self.metric}"
        return f"{self.network} dev {self.ifname}{table}{metric}"

    def as_json(self) -> dict[str, Any]:
        """The route as the netlink child sends and receives it."""
        return {
            "network": str(self.network),
            "ifname": self.ifname,
            "table": self.table,
            "metric": self.metric,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Route:
        """The inverse of :meth:`as_json`."""
        return cls(ip_network(data["network"]), data["ifname"], data["table"], data["metric"])


#: ``FIB_RULE_INVERT``: the rule matches packets that do *not* match its selectors.
FIB_RULE_INVERT = 0x2


@dataclass(frozen=True, slots=True)
class Rule:
    """A policy routing rule (``ip rule``) this module added.

    ``fwmark`` with ``invert`` is ``not fwmark X``; ``suppress_prefixlength`` 0 makes a lookup
    ignore default routes (so the main table decides everything but the default route).
    """

    family: int  # 4 or 6
    priority: int
    table: int
    fwmark: int | None = None
    invert: bool = False
    suppress_prefixlength: int | None = None

    def __str__(self) -> str:
        selector = "from all"
        if self.fwmark is not None:
            selector = f"{'not ' if self.invert else ''}fwmark {self.fwmark:#x}"
        suppress = (
            ""
            if self.suppress_prefixlength is None
            else f" suppress_prefixlength {self.suppress_prefixlength}"
        )
        return f"-{self.family} {self.priority}: {selector} lookup {self.table}{suppress}"

    def as_json(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "priority": self.priority,
            "table": self.table,
            "fwmark": self.fwmark,
            "invert": self.invert,
            "suppress_prefixlength": self.suppress_prefixlength,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rule:
        return cls(**data)


def configure_interface(
    name: str,
    addresses: Iterable[Interface] = (),
    mtu: int | None = None,
    *,
    txqueuelen: int = DEFAULT_TXQUEUELEN,
) -> None:
    """Set the MTU and ``txqueuelen`` of ``name``, add ``addresses`` and bring it up.

    An address already present is left as is. The addresses (and the routes the kernel adds
    for their prefixes) go away with the device, so nothing needs undoing.

    :raises TunError: the interface does not exist, or the kernel refused a setting.
    """
    _call_child(
        "configure_interface",
        name=name,
        addresses=[str(address) for address in addresses],
        mtu=mtu,
        txqueuelen=txqueuelen,
    )


def add_routes(
    name: str,
    networks: Iterable[Network | str],
    *,
    table: int = MAIN_TABLE,
    metric: int | None = None,
) -> list[Route]:
    """Route ``networks`` (the peers' AllowedIPs) into interface ``name``; IPv4 and IPv6.

    Returns the routes it added, for :func:`remove_routes`. Not added, and not returned:
    networks inside a prefix the kernel already routes to this interface (the connected
    prefix of one of its addresses, in the main table), and routes identical to one already
    present. Duplicates in ``networks`` are added once. No networks: nothing is done.

    :raises TunError: a route could not be added, e.g. the same prefix already goes through
        another interface; the routes added before the failure are removed again.
    :raises ValueError: a string in ``networks`` is not a network.
    """
    wanted = [str(ip_network(network, strict=False)) for network in networks]
    if not wanted:
        return []
    added = _call_child("add_routes", name=name, networks=wanted, table=table, metric=metric)
    return [Route.from_json(route) for route in added]


def remove_routes(routes: Sequence[Route]) -> None:
    """Remove routes returned by :func:`add_routes`. Routes already gone are fine.

    When the interface itself is gone, so are its routes, and nothing is done.

    :raises TunError: a route exists but could not be removed (the others are still tried).
    """
    if not routes:
        return
    _call_child("remove_routes", routes=[route.as_json() for route in routes])


def add_rules(rules: Sequence[Rule]) -> list[Rule]:
    """Add policy routing rules; returns them for :func:`remove_rules`.

    :raises TunError: a rule could not be added (e.g. the same rule exists: another tunnel
        uses the table); the rules added before the failure are removed again.
    """
    if not rules:
        return []
    added = _call_child("add_rules", rules=[rule.as_json() for rule in rules])
    return [Rule.from_json(rule) for rule in added]


def remove_rules(rules: Sequence[Rule]) -> None:
    """Remove rules returned by :func:`add_rules`; rules already gone are fine.

    :raises TunError: a rule exists but could not be removed (the others are still tried).
    """
    if rules:
        _call_child("remove_rules", rules=[rule.as_json() for rule in rules])


def table_in_use(table: int) -> bool:
    """Whether any route or rule (IPv4 or IPv6) already uses routing table ``table``."""
    return bool(_call_child("table_in_use", table=table))


def _call_child(op: str, **arguments: Any) -> Any:
    """Run :mod:`.netlink_child` on one request; return its result or raise its error."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    request = json.dumps({"op": op, **arguments})
    try:
        with map_os_errors(f"start the netlink child for {op}"):
            done = subprocess.run(
                # -P: the child runs as root; a module in the working directory must not
                # shadow ours.
                [sys.executable, "-P", "-m", CHILD_MODULE],
                input=request,
                capture_output=True,
                text=True,
                encoding="utf-8",
                env=env,
                timeout=CHILD_TIMEOUT_SECONDS,
                check=False,
                # Its own process group: a Ctrl-C meant for us must not kill it half-way.
                process_group=0,
            )
    except subprocess.TimeoutExpired:
        raise TunError(
            f"failed to {op}: the netlink child did not answer in {CHILD_TIMEOUT_SECONDS:g} s",
            errno.ETIMEDOUT,
        ) from None
    try:
        answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        lines = done.stderr.strip().splitlines()
        detail = lines[-1] if lines else "no output"
        raise TunError(
            f"failed to {op}: the netlink child exited with status {done.returncode}: {detail}"
        ) from None
    if "error" in answer:
        error = answer["error"]
        cls = getattr(exceptions, error["type"], TunError)
        if not (isinstance(cls, type) and issubclass(cls, TunError)):
            cls = TunError
        raise cls(error["message"], error["errno"])
    return answer["result"]
