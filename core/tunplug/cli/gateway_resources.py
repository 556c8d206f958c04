"""``tunplug-gateway resource ...`` and ``group ...``: what clients may reach, managed live.

Who calls it: :mod:`tunplug.cli.gateway`, which adds these subcommands to its parser. Every
change is one registry transaction; a running gateway applies it within a second (nftables,
its DNS server, and each client's routes and DNS through the control channel), so neither a
restart nor new tokens are needed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from tunplug.cli._common import EXIT_OK
from tunplug.formatting import format_table
from tunplug.gateway.registry import Registry
from tunplug.gateway.resource_store import port_rules_text
from tunplug.gateway.settings import GatewaySettings
from tunplug.resources import Resource

Command = Callable[..., argparse.ArgumentParser]
Settings = Callable[[argparse.Namespace], GatewaySettings]

PROG = "tunplug-gateway"


def add_parsers(commands: Any, command: Command, settings: Settings) -> None:
    """Add ``resource`` and ``group`` with their actions to ``commands``."""
    resource = commands.add_parser(
        "resource",
        help="add, list and remove what clients may reach (live)",
        description="Manage resources: networks, addresses, DNS names and the Internet. "
        "Changes reach a running gateway and its clients within a second.",
    )
    actions = resource.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = command(
        actions,
        "add",
        _handler(_resource_add, settings),
        help="add a resource",
        description="Add a resource clients may reach. TARGET is one of:\n"
        "  a network or address     10.10.0.0/16, 10.10.0.7, fd10::/64\n"
        "  a DNS name or wildcard   db.internal, '*.corp.example' (also corp.example)\n"
        "  internet                 everything, for clients that opt in "
        "(--activate-internet-resource)\n"
        "Without --group every client may reach it; without --port every protocol and port.",
    )
    add.add_argument("target", metavar="TARGET", help="CIDR, address, DNS name or wildcard")
    add.add_argument(
        "--name",
        help="the resource's name (default: TARGET, normalised: 10.10.0.7 is named "
        "10.10.0.7/32, DB.Internal db.internal; 'resource remove' takes either form)",
    )
    add.add_argument(
        "--port",
        action="append",
        default=[],
        metavar="RULE",
        help="limit to tcp/443, udp/53, tcp/8000-8100, tcp, udp or icmp (repeatable, or "
        "comma-separated)",
    )
    add.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="GROUP",
        help="only clients in this group may reach it (repeatable: any of them)",
    )
    listing = command(
        actions,
        "list",
        _handler(_resource_list, settings),
        help="show the resources, their limits and groups",
        description="Show every resource: name, kind, target, port rules and groups.",
    )
    listing.add_argument("--json", action="store_true", help="print JSON for scripts")
    remove = command(
        actions,
        "remove",
        _handler(_resource_remove, settings),
        help="remove a resource (open connections to it are cut)",
        description="Remove a resource. A running gateway stops forwarding to it within a "
        "second, also for\nconnections already open, and clients drop its routes and DNS.",
    )
    remove.add_argument("name", metavar="NAME")

    group = commands.add_parser(
        "group",
        help="groups of clients, for resources limited with --group",
        description="Manage groups of clients.",
    )
    verbs = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, handler, text in (
        ("add", _group_add, "create a group"),
        ("remove", _group_remove, "delete a group (refused while a resource is limited to it)"),
    ):
        sub = command(verbs, name, _handler(handler, settings), help=text, description=text)
        sub.add_argument("group", metavar="GROUP")
    listed = command(
        verbs,
        "list",
        _handler(_group_list, settings),
        help="show groups and their members",
        description="Show every group and its active clients.",
    )
    listed.add_argument("--json", action="store_true", help="print JSON for scripts")
    for name, join, text in (
        ("join", True, "put clients into a group"),
        ("leave", False, "take clients out of a group"),
    ):
        sub = command(
            verbs, name, _handler(_membership(join), settings), help=text, description=text
        )
        sub.add_argument("group", metavar="GROUP")
        sub.add_argument("clients", metavar="CLIENT", nargs="+")


def _handler(
    function: Callable[[Registry, argparse.Namespace], int], settings: Settings
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with Registry.open(settings(args).state_dir) as registry:
            return function(registry, args)

    return run


def resource_json(resource: Resource) -> dict[str, object]:
    return {
        **resource.view().model_dump(),
        "groups": list(resource.groups),
    }


def _resource_add(registry: Registry, args: argparse.Namespace) -> int:
    resource = registry.add_resource(
        args.target, name=args.name, ports=args.port, groups=args.group
    )
    who = f"clients in {', '.join(resource.groups)}" if resource.groups else "every client"
    print(
        f"added resource {resource.name!r} ({resource.kind} {resource.target}, ports "
        f"{port_rules_text(resource.ports)}) for {who}; a running gateway applies it within "
        "a second"
    )
    return EXIT_OK


def _resource_list(registry: Registry, args: argparse.Namespace) -> int:
    resources = registry.resources()
    if args.json:
        print(json.dumps([resource_json(resource) for resource in resources], indent=2))
        return EXIT_OK
    if not resources:
        print(
            f"{PROG}: no resources yet; add one with: {PROG} resource add TARGET", file=sys.stderr
        )
        return EXIT_OK
    rows = [
        [
            resource.name,
            resource.kind,
            str(resource.target),
            port_rules_text(resource.ports),
            ", ".join(resource.groups) or "everyone",
        ]
        for resource in resources
    ]
    print(format_table(["NAME", "KIND", "TARGET", "PORTS", "GROUPS"], rows))
    return EXIT_OK


def _resource_remove(registry: Registry, args: argparse.Namespace) -> int:
    registry.remove_resource(args.name)
    print(f"removed resource {args.name!r}; a running gateway cuts it within a second")
    return EXIT_OK


def _group_add(registry: Registry, args: argparse.Namespace) -> int:
    registry.add_group(args.group)
    print(f"added group {args.group!r}; put clients in with: {PROG} group join {args.group} NAME")
    return EXIT_OK


def _group_remove(registry: Registry, args: argparse.Namespace) -> int:
    registry.remove_group(args.group)
    print(f"removed group {args.group!r}")
    return EXIT_OK


def _group_list(registry: Registry, args: argparse.Namespace) -> int:
    groups = registry.groups()
    if args.json:
        print(json.dumps({name: list(members) for name, members in groups.items()}, indent=2))
        return EXIT_OK
    if not groups:
        print(f"{PROG}: no groups yet; add one with: {PROG} group add NAME", file=sys.stderr)
        return EXIT_OK
    rows = [[name, ", ".join(members) or "(none)"] for name, members in groups.items()]
    print(format_table(["GROUP", "CLIENTS"], rows))
    return EXIT_OK


def _membership(join: bool) -> Callable[[Registry, argparse.Namespace], int]:
    def change(registry: Registry, args: argparse.Namespace) -> int:
        registry.join_group(args.group, args.clients, join=join)
        verb = "joined" if join else "left"
        print(f"{', '.join(args.clients)} {verb} group {args.group!r}")
        return EXIT_OK

    return change
