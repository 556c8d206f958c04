"""The child process that does :mod:`.netlink`'s work with pyroute2, one request per process.

Who runs it: :mod:`tunplug_tun_linux_mq.netlink`, as ``python -m
tunplug_tun_linux_mq.netlink_child``, at a tunnel's start-up and shutdown. Importing pyroute2
costs a process about 24 MB that it keeps for good; here it is paid by a process that lives for
a fraction of a second. The child inherits the network namespace of the thread that started it
and the privileges of its process.

The protocol: one JSON object on stdin, ``{"op": "configure_interface" | "add_routes" |
"remove_routes", ...}`` with the arguments of the function of that name (addresses, networks
and routes as strings and :meth:`Route.as_json` objects), and one JSON line on stdout:
``{"result": ...}``, or ``{"error": {"type": ..., "message": ..., "errno": ...}}`` naming the
:class:`TunError` class to raise again in the parent. The exit status is 0 either way; anything
else means the child itself broke (its traceback is on stderr).

The functions below are the real implementations, synchronous, acting on the calling process's
namespace; they raise :class:`TunError` with one line and the errno.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import traceback
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from ipaddress import ip_interface, ip_network
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tunplug.exceptions import TunError
from tunplug_tun_linux_mq.netlink import (
    DEFAULT_TXQUEUELEN,
    FIB_RULE_INVERT,
    MAIN_TABLE,
    Interface,
    Network,
    Route,
    Rule,
)

_RTPROT_KERNEL = 2  # routes the kernel adds itself, e.g. the prefix of an address
_IFA_F_NODAD = 0x02  # the device is point-to-point: no duplicate address detection


def main() -> int:
    """Answer the one request on stdin, on stdout."""
    answer: dict[str, Any]
    try:
        answer = {"result": handle(json.loads(sys.stdin.read()))}
    except TunError as exc:
        answer = {"error": {"type": type(exc).__name__, "message": str(exc), "errno": exc.errno}}
    except Exception as exc:  # a bug or a broken install: one line to the parent, all to stderr
        traceback.print_exc()
        message = f"netlink child failed: {type(exc).__name__}: {exc}"
        answer = {"error": {"type": "TunError", "message": message, "errno": None}}
    print(json.dumps(answer), flush=True)
    return 0


def handle(request: dict[str, Any]) -> Any:
    """Carry out one decoded request; return the JSON-ready result."""
    op = request["op"]
    if op == "configure_interface":
        configure_interface(
            request["name"],
            [ip_interface(a) for a in request["addresses"]],
            request["mtu"],
            txqueuelen=request["txqueuelen"],
        )
        return None
    if op == "add_routes":
        added = add_routes(
            request["name"], request["networks"], table=request["table"], metric=request["metric"]
        )
        return [route.as_json() for route in added]
    if op == "remove_routes":
        remove_routes([Route.from_json(r) for r in request["routes"]])
        return None
    if op == "add_rules":
        return [rule.as_json() for rule in add_rules([Rule.from_json(r) for r in request["rules"]])]
    if op == "remove_rules":
        remove_rules([Rule.from_json(r) for r in request["rules"]])
        return None
    if op == "table_in_use":
        return table_in_use(request["table"])
    raise ValueError(f"unknown op {op!r}")


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
    with _iproute() as ipr:
        index = _index(ipr, name)
        settings: dict[str, Any] = {"txqlen": txqueuelen}
        if mtu is not None:
            settings["mtu"] = mtu
        with _netlink_errors(f"set mtu {mtu} and txqueuelen {txqueuelen} on {name}"):
            ipr.link("set", index=index, **settings)
        for address in addresses:
            flags = _IFA_F_NODAD if address.version == 6 else 0
            try:
                with _netlink_errors(f"add address {address} to {name}"):
                    ipr.addr(
                        "add",
                        index=index,
                        address=str(address.ip),
                        prefixlen=address.network.prefixlen,
                        flags=flags,
                    )
            except TunError as exc:
                if exc.errno != errno.EEXIST:
                    raise
        with _netlink_errors(f"bring {name} up"):
            ipr.link("set", index=index, state="up")


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
    present. Duplicates in ``networks`` are added once.

    :raises TunError: a route could not be added, e.g. the same prefix already goes through
        another interface; the routes added before the failure are removed again.
    """
    wanted = list(dict.fromkeys(ip_network(n, strict=False) for n in networks))
    added: list[Route] = []
    with _iproute() as ipr:
        index = _index(ipr, name)
        connected = _connected_prefixes(ipr, index) if table == MAIN_TABLE else []
        try:
            for network in wanted:
                if any(_covers(prefix, network) for prefix in connected):
                    continue
                route = Route(network, name, table, metric)
                if _add_route(ipr, index, route):
                    added.append(route)
        except BaseException:
            _remove_routes(ipr, added)
            raise
    return added


def remove_routes(routes: Sequence[Route]) -> None:
    """Remove routes returned by :func:`add_routes`. Routes already gone are fine.

    When the interface itself is gone, so are its routes, and nothing is done.

    :raises TunError: a route exists but could not be removed (the others are still tried).
    """
    if not routes:
        return
    with _iproute() as ipr:
        _remove_routes(ipr, routes)


def add_rules(rules: Sequence[Rule]) -> list[Rule]:
    """Add ``rules`` in order; on failure remove those added and raise."""
    added: list[Rule] = []
    with _iproute() as ipr:
        try:
            for rule in rules:
                with _netlink_errors(f"add rule {rule}"):
                    ipr.rule("add", **_rule_spec(rule))
                added.append(rule)
        except BaseException:
            _remove_rules(ipr, added)
            raise
    return added


def remove_rules(rules: Sequence[Rule]) -> None:
    """Remove ``rules``; rules already gone are fine."""
    with _iproute() as ipr:
        _remove_rules(ipr, rules)


def _remove_rules(ipr: Any, rules: Sequence[Rule]) -> None:
    first_error: TunError | None = None
    for rule in reversed(rules):
        try:
            with _netlink_errors(f"remove rule {rule}"):
                ipr.rule("del", **_rule_spec(rule))
        except TunError as exc:
            if exc.errno not in (errno.ENOENT, errno.ESRCH) and first_error is None:
                first_error = exc
    if first_error is not None:
        raise first_error


def _rule_spec(rule: Rule) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "family": 2 if rule.family == 4 else 10,
        "priority": rule.priority,
        "table": rule.table,
    }
    if rule.fwmark is not None:
        spec["fwmark"] = rule.fwmark
        spec["fwmask"] = 0xFFFFFFFF
    if rule.invert:
        spec["flags"] = FIB_RULE_INVERT
    if rule.suppress_prefixlength is not None:
        # pyroute2 0.9 has no keyword for it; the attribute name is passed through as is.
        spec["FRA_SUPPRESS_PREFIXLEN"] = rule.suppress_prefixlength
    return spec


def table_in_use(table: int) -> bool:
    """Whether a route or rule of either family refers to ``table``."""
    with _iproute() as ipr:
        for family in (2, 10):
            for message in ipr.route("dump", family=family):
                if _message_table(message) == table:
                    return True
            for message in ipr.get_rules(family=family):
                if (message.get_attr("FRA_TABLE") or message["table"]) == table:
                    return True
    return False


def _remove_routes(ipr: Any, routes: Sequence[Route]) -> None:
    first_error: TunError | None = None
    for route in routes:
        indexes = ipr.link_lookup(ifname=route.ifname)
        if not indexes:
            continue
        try:
            with _netlink_errors(f"remove route {route}"):
                ipr.route("del", **_route_spec(indexes[0], route))
        except TunError as exc:
            if exc.errno not in (errno.ESRCH, errno.ENODEV, errno.ENOENT) and first_error is None:
                first_error = exc
    if first_error is not None:
        raise first_error


def _add_route(ipr: Any, index: int, route: Route) -> bool:
    """Add one route; ``False`` when an identical one was already there."""
    try:
        with _netlink_errors(f"add route {route}"):
            ipr.route("add", **_route_spec(index, route))
    except TunError as exc:
        if exc.errno != errno.EEXIST:
            raise
        other = _existing_route_device(ipr, route)
        if other == index:
            return False
        where = f"interface index {other}" if other is not None else "another route"
        if other is not None:
            links = ipr.link("get", index=other)
            where = links[0].get_attr("IFLA_IFNAME") if links else where
        raise TunError(
            f"failed to add route {route}: {route.network} already goes through {where}",
            errno.EEXIST,
        ) from exc
    return True


def _route_spec(index: int, route: Route) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dst": str(route.network),
        "oif": index,
        "table": route.table,
    }
    if route.metric is not None:
        spec["priority"] = route.metric
    return spec


def _existing_route_device(ipr: Any, route: Route) -> int | None:
    """The output interface of the route that made adding ``route`` fail with EEXIST."""
    family = 2 if route.network.version == 4 else 10
    for message in ipr.route("dump", family=family):
        if _message_network(message) != route.network:
            continue
        if _message_table(message) != route.table:
            continue
        if route.metric is not None and message.get_attr("RTA_PRIORITY") not in (
            route.metric,
            None,
        ):
            continue
        oif = message.get_attr("RTA_OIF")
        return int(oif) if oif is not None else None
    return None


def _connected_prefixes(ipr: Any, index: int) -> list[Network]:
    """Prefixes the kernel itself routes to interface ``index`` in the main table."""
    prefixes: list[Network] = []
    for family in (2, 10):
        for message in ipr.route("dump", family=family):
            if message.get_attr("RTA_OIF") != index or _message_table(message) != MAIN_TABLE:
                continue
            if message["proto"] != _RTPROT_KERNEL:
                continue
            network = _message_network(message)
            if network is not None and not network.is_link_local:
                prefixes.append(network)
    return prefixes


def _covers(prefix: Network, network: Network) -> bool:
    if prefix.version != network.version:
        return False
    return network.subnet_of(prefix)  # type: ignore[arg-type]  # same version checked above


def _message_network(message: Any) -> Network | None:
    dst = message.get_attr("RTA_DST")
    if dst is None:
        dst = "0.0.0.0" if message["family"] == 2 else "::"
    try:
        return ip_network(f"{dst}/{message['dst_len']}", strict=False)
    except ValueError:
        return None


def _message_table(message: Any) -> int:
    table = message.get_attr("RTA_TABLE")
    return int(table) if table is not None else int(message["table"])


def _index(ipr: Any, name: str) -> int:
    indexes = ipr.link_lookup(ifname=name)
    if not indexes:
        raise TunError(f"interface {name!r} does not exist", errno.ENODEV)
    return int(indexes[0])


@contextmanager
def _iproute() -> Iterator[Any]:
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


@contextmanager
def _netlink_errors(action: str) -> Iterator[None]:
    """Like :func:`tunplug.exceptions.map_os_errors`, for pyroute2's ``NetlinkError``."""
    try:
        yield
    except NetlinkError as exc:
        code = int(exc.code) if exc.code else None
        reason = os.strerror(code) if code else str(exc)
        raise TunError(f"failed to {action}: {reason}", code) from exc
    except OSError as exc:
        raise TunError(f"failed to {action}: {exc.strerror or exc}", exc.errno) from exc


if __name__ == "__main__":
    sys.exit(main())
