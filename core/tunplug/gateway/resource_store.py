"""Resources, groups and who is in them, in the gateway's registry (schema version 3).

Who calls it: :class:`tunplug.gateway.registry.Registry` (which mixes :class:`ResourceStore`
in), so ``tunplug-gateway resource ...`` / ``group ...`` and the running gateway read and
write the same SQLite database. Every change bumps the registry's ``version`` in the same
transaction: the running gateway picks it up within a second (nftables, DNS, control channel).

Access: a resource without groups may be reached by every client; a resource with groups
only by the clients in at least one of them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING

from tunplug.exceptions import ConfigError
from tunplug.gateway.validation import validate_client_name
from tunplug.resources import (
    INTERNET,
    PROXY_V4,
    PROXY_V6,
    PortRule,
    Resource,
    Target,
    parse_port_rules,
    parse_target,
    validate_group_name,
    validate_resource_name,
)

if TYPE_CHECKING:
    from tunplug.gateway.registry_records import GatewayConfig

Network = IPv4Network | IPv6Network

#: Schema version 3 (appended to the registry's MIGRATIONS): resources, groups, memberships;
#: the networks ``init --resource`` stored in ``gateway.resources`` become resources for
#: every client (``0.0.0.0/0`` and ``::/0`` become the Internet resource).
MIGRATION_3 = (
    """CREATE TABLE resources (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        target TEXT NOT NULL,
        ports TEXT NOT NULL DEFAULT '[]',
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE groups (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE resource_groups (
        resource_id INTEGER NOT NULL,
        group_id INTEGER NOT NULL,
        PRIMARY KEY (resource_id, group_id)
    )""",
    """CREATE TABLE memberships (
        group_id INTEGER NOT NULL,
        client_id INTEGER NOT NULL,
        PRIMARY KEY (group_id, client_id)
    )""",
    """INSERT INTO resources (name, target, created_at)
        SELECT DISTINCT
            CASE WHEN value IN ('0.0.0.0/0', '::/0') THEN 'internet' ELSE value END,
            CASE WHEN value IN ('0.0.0.0/0', '::/0') THEN 'internet' ELSE value END,
            gateway.created_at
        FROM gateway, json_each(gateway.resources)""",
    "UPDATE gateway SET resources = '[]'",
)


class ResourceStore:
    """The resource and group half of the registry (a mixin: needs ``_write``, ``_lock``,
    ``_connection`` and ``_gateway`` from :class:`~tunplug.gateway.registry.Registry`)."""

    _lock: threading.Lock
    _connection: sqlite3.Connection
    _gateway: GatewayConfig

    def _write(self, action: str) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _read(self, query: str, args: Sequence[object] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return list(self._connection.execute(query, args).fetchall())

    # -- reading ----------------------------------------------------------------------------
    def resources(self) -> list[Resource]:
        """Every resource, oldest first, with its groups."""
        rows = self._read(
            "SELECT r.name, r.target, r.ports, "
            "(SELECT json_group_array(g.name) FROM resource_groups rg "
            " JOIN groups g ON g.id = rg.group_id WHERE rg.resource_id = r.id) "
            "FROM resources r ORDER BY r.id"
        )
        return [_resource(row) for row in rows]

    def groups(self) -> dict[str, tuple[str, ...]]:
        """Every group and its active members (client names), in order of creation."""
        rows = self._read(
            "SELECT g.name, (SELECT json_group_array(c.name) FROM memberships m "
            " JOIN clients c ON c.id = m.client_id "
            " WHERE m.group_id = g.id AND c.revoked_at IS NULL) "
            "FROM groups g ORDER BY g.id"
        )
        return {str(name): tuple(sorted(json.loads(str(members)))) for name, members in rows}

    def client_groups(self) -> dict[str, tuple[str, ...]]:
        """Active client name -> the groups it is in (clients in no group are left out)."""
        rows = self._read(
            "SELECT c.name, g.name FROM memberships m JOIN clients c ON c.id = m.client_id "
            "JOIN groups g ON g.id = m.group_id WHERE c.revoked_at IS NULL ORDER BY g.id"
        )
        result: dict[str, list[str]] = {}
        for client, group in rows:
            result.setdefault(str(client), []).append(str(group))
        return {client: tuple(groups) for client, groups in result.items()}

    # -- resources --------------------------------------------------------------------------
    def add_resource(
        self,
        target: str,
        *,
        name: str | None = None,
        ports: Sequence[str] = (),
        groups: Sequence[str] = (),
    ) -> Resource:
        """Add a resource (``name`` defaults to the target as typed, normalised).

        :raises ConfigError: a bad target, port rule, name or group name, an unknown group, a
            name already taken, a network inside the clients' subnets or the proxy ranges, or
            port rules on the Internet resource.
        """
        parsed = parse_target(target)
        rules = parse_port_rules(ports)
        name = validate_resource_name(name if name is not None else str(parsed))
        wanted = [validate_group_name(group, "--group") for group in dict.fromkeys(groups)]
        self._check_network(parsed)
        if parsed.kind == "internet" and rules:
            raise ConfigError("--port", "the Internet resource cannot be limited to ports")
        with self._write("adding a resource") as connection:
            if connection.execute("SELECT 1 FROM resources WHERE name = ?", (name,)).fetchone():
                raise ConfigError("--name", f"a resource named {name!r} already exists")
            if (
                parsed.kind == "internet"
                and connection.execute(
                    "SELECT 1 FROM resources WHERE target = ?", (INTERNET,)
                ).fetchone()
            ):
                raise ConfigError("TARGET", "the Internet resource already exists")
            group_ids = [_group_id(connection, group, "--group") for group in wanted]
            cursor = connection.execute(
                "INSERT INTO resources (name, target, ports, created_at) VALUES (?, ?, ?, ?)",
                (name, str(parsed), json.dumps([str(rule) for rule in rules]), time.time()),
            )
            connection.executemany(
                "INSERT INTO resource_groups (resource_id, group_id) VALUES (?, ?)",
                [(cursor.lastrowid, group_id) for group_id in group_ids],
            )
            _bump(connection)
        return Resource(name, parsed, rules, tuple(wanted))

    def remove_resource(self, name: str) -> None:
        """:raises ConfigError: no resource has that name."""
        with self._write("removing a resource") as connection:
            row = connection.execute("SELECT id FROM resources WHERE name = ?", (name,)).fetchone()
            if row is None:  # the target as typed: 10.10.0.7 is the resource 10.10.0.7/32
                row = connection.execute(
                    "SELECT id FROM resources WHERE name = ?", (_normalized(name),)
                ).fetchone()
            if row is None:
                raise ConfigError("NAME", f"no resource named {name!r} (see: resource list)")
            connection.execute("DELETE FROM resource_groups WHERE resource_id = ?", (row[0],))
            connection.execute("DELETE FROM resources WHERE id = ?", (row[0],))
            _bump(connection)

    def _check_network(self, target: Target) -> None:
        check_network(target, self._gateway.subnet_v4, self._gateway.subnet_v6)

    # -- groups -----------------------------------------------------------------------------
    def add_group(self, name: str) -> None:
        """:raises ConfigError: a bad or taken name."""
        validate_group_name(name)
        with self._write("adding a group") as connection:
            if connection.execute("SELECT 1 FROM groups WHERE name = ?", (name,)).fetchone():
                raise ConfigError("GROUP", f"a group named {name!r} already exists")
            connection.execute(
                "INSERT INTO groups (name, created_at) VALUES (?, ?)", (name, time.time())
            )
            _bump(connection)

    def remove_group(self, name: str) -> None:
        """:raises ConfigError: unknown group, or a resource is limited to it."""
        with self._write("removing a group") as connection:
            group_id = _group_id(connection, name, "GROUP")
            users = [
                str(row[0])
                for row in connection.execute(
                    "SELECT r.name FROM resource_groups rg JOIN resources r "
                    "ON r.id = rg.resource_id WHERE rg.group_id = ?",
                    (group_id,),
                )
            ]
            if users:
                raise ConfigError(
                    "GROUP",
                    f"group {name!r} limits resource(s) {', '.join(users)}: remove them first",
                )
            connection.execute("DELETE FROM memberships WHERE group_id = ?", (group_id,))
            connection.execute("DELETE FROM groups WHERE id = ?", (group_id,))
            _bump(connection)

    def join_group(self, group: str, clients: Sequence[str], *, join: bool = True) -> None:
        """Put active ``clients`` into ``group`` (``join=False``: take them out).

        :raises ConfigError: unknown group or client.
        """
        with self._write("changing a group") as connection:
            group_id = _group_id(connection, group, "GROUP")
            client_ids = [_client_id(connection, client) for client in clients]
            if join:
                connection.executemany(
                    "INSERT OR IGNORE INTO memberships (group_id, client_id) VALUES (?, ?)",
                    [(group_id, client_id) for client_id in client_ids],
                )
            else:
                connection.executemany(
                    "DELETE FROM memberships WHERE group_id = ? AND client_id = ?",
                    [(group_id, client_id) for client_id in client_ids],
                )
            _bump(connection)

    def _join_new_clients(
        self, connection: sqlite3.Connection, names: Sequence[str], groups: Sequence[str]
    ) -> None:
        """Within ``add_clients``' transaction: the new clients into ``groups``."""
        group_ids = [_group_id(connection, group, "--group") for group in dict.fromkeys(groups)]
        for name in names:
            client_id = _client_id(connection, name)
            connection.executemany(
                "INSERT OR IGNORE INTO memberships (group_id, client_id) VALUES (?, ?)",
                [(group_id, client_id) for group_id in group_ids],
            )


def check_network(target: Target, subnet_v4: IPv4Network, subnet_v6: IPv6Network) -> None:
    """:raises ConfigError: ``target``'s network overlaps the clients' subnets or the proxy
    ranges (the gateway could not tell a resource from a client or a proxy address)."""
    network = target.network
    if network is None:
        return
    others: tuple[tuple[Network, str], ...] = (
        (subnet_v4, "the clients' subnet"),
        (subnet_v6, "the clients' subnet"),
        (PROXY_V4, "the proxy range for DNS resources"),
        (PROXY_V6, "the proxy range for DNS resources"),
    )
    for other, what in others:
        if other.version == network.version and network.overlaps(other):
            raise ConfigError("TARGET", f"{network} overlaps {what} {other}")


def _normalized(text: str) -> str | None:
    """``text`` as :func:`parse_target` writes it (the default name), or None."""
    try:
        return str(parse_target(text))
    except ConfigError:
        return None


def _bump(connection: sqlite3.Connection) -> None:
    connection.execute("UPDATE gateway SET version = version + 1 WHERE id = 1")


def _group_id(connection: sqlite3.Connection, name: str, flag: str) -> int:
    row = connection.execute("SELECT id FROM groups WHERE name = ?", (name,)).fetchone()
    if row is None:
        known = [str(r[0]) for r in connection.execute("SELECT name FROM groups ORDER BY id")]
        raise ConfigError(
            flag,
            f"no group named {name!r} (known: {', '.join(known) or 'none'}; "
            "add it with: tunplug-gateway group add NAME)",
        )
    return int(row[0])


def _client_id(connection: sqlite3.Connection, name: str) -> int:
    validate_client_name(name)
    row = connection.execute(
        "SELECT id FROM clients WHERE name = ? AND revoked_at IS NULL", (name,)
    ).fetchone()
    if row is None:
        raise ConfigError("CLIENT", f"no active client named {name!r}")
    return int(row[0])


def _resource(row: Sequence[object]) -> Resource:
    name, target, ports, groups = row
    return Resource(
        name=str(name),
        target=parse_target(str(target)),
        ports=tuple(parse_port_rules(json.loads(str(ports)))),
        groups=tuple(json.loads(str(groups)) if groups else ()),
    )


def port_rules_text(rules: Sequence[PortRule]) -> str:
    """``tcp/443, udp/53`` or ``all`` (for listings)."""
    return ", ".join(map(str, rules)) or "all"
