"""The gateway's state: its key pair, its settings and its clients, in a SQLite database.

Who calls it: ``tunplug-gateway`` (:mod:`tunplug.cli.gateway`: ``init``, ``client add``,
``client list``, ``client revoke``) and the running gateway (:mod:`tunplug.gateway.server`),
often at the same time from two processes.

Layout of the state directory (default ``/var/lib/tunplug-gateway``, mode 0700):

- ``private.key`` — the gateway's WireGuard private key in base64 (as ``wg genkey`` prints
  it), mode 0600. It never enters the database, so a copy of the database for debugging does
  not carry it.
- ``registry.db`` (plus SQLite's ``-wal`` and ``-shm``), mode 0600 — the gateway's public
  settings and every client: name, public key, PresharedKey, addresses, times and traffic.
  A client's private key is never stored: it is in the token, shown once.

Every write is one short ``BEGIN IMMEDIATE`` transaction on a database in WAL mode, so the CLI
and the server can use it at once; the files, the schema's migrations and SQLite's settings
are in :mod:`tunplug.gateway.registry_storage`, the values handed out (:class:`GatewayConfig`,
:class:`ClientRecord`, :class:`IssuedClient`) in :mod:`tunplug.gateway.registry_records`, and
resources and groups in :mod:`tunplug.gateway.resource_store`.

Keys are made by the crypto backend the caller passes (``crypto``, from its
:class:`~tunplug.app.App`): the registry reads no settings of its own.

Addresses: the gateway holds the first host of each subnet; client ``n`` holds the ``n``-th
address of both subnets (the same index in IPv4 and IPv6). A new client gets the next address
that was never used; only when the IPv4 subnet is exhausted is the address of a revoked client
given out again (the longest-revoked first), so that logs and flow records rarely show one
address for two clients.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from tunplug import token as client_token
from tunplug.exceptions import ConfigError
from tunplug.gateway.registry_records import (
    CLIENT_COLUMNS,
    ClientRecord,
    GatewayConfig,
    IssuedClient,
    client_record,
)
from tunplug.gateway.registry_storage import (
    DB_NAME,
    KEY_NAME,
    MIGRATIONS,
    SCHEMA_VERSION,
    RegistryError,
    connect,
    create_state,
    migrate,
    path_exists,
    replace_key,
    sqlite_errors,
)
from tunplug.gateway.resource_store import ResourceStore, check_network
from tunplug.gateway.validation import (
    validate_client_name,
    validate_dns,
    validate_endpoint,
    validate_subnets,
)
from tunplug.resources import (
    CONTROL_PORT,
    INTERNET_NETWORKS,
    PROXY_V4,
    PROXY_V6,
    Resource,
    client_view,
    parse_target,
)
from tunplug.secure_files import check_private_file, read_private_file
from tunplug.wireguard.keys import format_key, parse_key

if TYPE_CHECKING:
    from tunplug.crypto import CryptoBackend

__all__ = [
    "DB_NAME",
    "DEFAULT_LISTEN_PORT",
    "DEFAULT_SUBNET_V4",
    "DEFAULT_SUBNET_V6",
    "KEY_NAME",
    "MIGRATIONS",
    "PERSISTENT_KEEPALIVE",
    "PROXY_NETWORKS",
    "SCHEMA_VERSION",
    "ClientRecord",
    "GatewayConfig",
    "IssuedClient",
    "Registry",
    "RegistryError",
]

PROXY_NETWORKS = (PROXY_V4, PROXY_V6)
DEFAULT_LISTEN_PORT = 51820
DEFAULT_SUBNET_V4 = "100.64.0.0/11"
#: A fixed unique-local /64 ("tplg" in its global ID).
DEFAULT_SUBNET_V6 = "fd7a:7470:6c67::/64"
#: Keepalive written into every token: clients are usually behind NAT.
PERSISTENT_KEEPALIVE = 25


class Registry(ResourceStore):
    """The gateway's SQLite database. Use :meth:`init` or :meth:`open`, then :meth:`close`
    (or ``with``). One object may be shared between threads: calls are serialised."""

    def __init__(
        self,
        state_dir: Path,
        connection: sqlite3.Connection,
        gateway: GatewayConfig,
        crypto: CryptoBackend | None,
    ) -> None:
        self.state_dir = state_dir
        self._connection = connection
        self._gateway = gateway
        self._crypto = crypto
        self._lock = threading.Lock()

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        state_dir: Path,
        *,
        endpoint: str,
        listen_port: int = DEFAULT_LISTEN_PORT,
        subnet_v4: str = DEFAULT_SUBNET_V4,
        subnet_v6: str = DEFAULT_SUBNET_V6,
        resources: Sequence[str] = (),
        dns: Sequence[str] = (),
        force: bool = False,
        crypto: CryptoBackend,
    ) -> Registry:
        """Create the state directory, the gateway's key pair and the database.

        ``crypto`` makes the gateway's keys, and the clients' keys of the registry returned
        (as :meth:`open` with it does). With ``force`` an existing registry is replaced: a new
        key pair, no clients (every token stops working).
        :raises ConfigError: an option is invalid (naming its flag), or the directory is
            already initialised and ``force`` is not given.
        """
        endpoint = validate_endpoint(endpoint)
        if not 1 <= listen_port <= 65535:
            raise ConfigError("--listen-port", f"must be 1-65535, got {listen_port}")
        network_v4, network_v6 = validate_subnets(subnet_v4, subnet_v6)
        # 0.0.0.0/0 and ::/0 (what init took before resources had kinds): the Internet resource.
        texts = ["internet" if t.strip() in ("0.0.0.0/0", "::/0") else t for t in resources]
        targets = list(dict.fromkeys(parse_target(text, "--resource") for text in texts))
        for target in targets:
            check_network(target, network_v4, network_v6)
        servers = validate_dns(dns)
        db_path = state_dir / DB_NAME
        if path_exists(db_path) and not force:
            raise ConfigError(
                "--state-dir",
                f"{state_dir} is already initialised; --force replaces the gateway key and "
                "removes every client (their tokens stop working)",
            )
        private_key = crypto.generate_private_key()
        public_key = crypto.public_key(private_key)
        create_state(state_dir, format_key(private_key) + "\n")
        connection = connect(db_path)
        try:
            migrate(connection, db_path)
            dns_texts = json.dumps([str(server) for server in servers])
            with sqlite_errors("storing the gateway"):
                connection.execute(
                    "INSERT INTO gateway (id, public_key, endpoint, listen_port, subnet_v4, "
                    "subnet_v6, resources, dns, created_at) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        public_key,
                        endpoint,
                        listen_port,
                        str(network_v4),
                        str(network_v6),
                        "[]",
                        dns_texts,
                        time.time(),
                    ),
                )
        finally:
            connection.close()
        registry = cls.open(state_dir, crypto=crypto)
        try:
            for target in targets:
                registry.add_resource(str(target))
        except BaseException:
            registry.close()
            raise
        return registry

    @classmethod
    def open(cls, state_dir: Path, *, crypto: CryptoBackend | None = None) -> Registry:
        """Open an initialised registry, migrating its schema to the current version.

        ``crypto`` makes client keys in :meth:`add_client`: without it, the registry reads,
        revokes and changes resources and groups, but adds no client.
        :raises ConfigError: not initialised, unreadable, open to others, or newer than this
            version of tunplug.
        """
        db_path = state_dir / DB_NAME
        if not path_exists(db_path):
            raise ConfigError(
                "--state-dir", f"{state_dir} is not initialised: run tunplug-gateway init"
            )
        check_private_file(db_path, "--state-dir")
        key_text = read_private_file(state_dir / KEY_NAME, "--state-dir")
        try:
            private_key = parse_key(key_text, str(state_dir / KEY_NAME))
        except ValueError as exc:
            raise ConfigError("--state-dir", str(exc)) from None
        connection = connect(db_path)
        try:
            migrate(connection, db_path)
            with sqlite_errors("reading the gateway"):
                row = connection.execute(
                    "SELECT public_key, endpoint, listen_port, subnet_v4, subnet_v6, dns "
                    "FROM gateway WHERE id = 1"
                ).fetchone()
            if row is None:
                raise ConfigError(
                    "--state-dir", f"{db_path} holds no gateway: run tunplug-gateway init --force"
                )
        except BaseException:
            connection.close()
            raise
        gateway = GatewayConfig(
            private_key=private_key,
            public_key=bytes(row[0]),
            endpoint=row[1],
            listen_port=row[2],
            subnet_v4=IPv4Network(row[3]),
            subnet_v6=IPv6Network(row[4]),
            dns=tuple(ip_address(text) for text in json.loads(row[5])),
        )
        return cls(state_dir, connection, gateway, crypto)

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading --------------------------------------------------------------------------
    @property
    def gateway(self) -> GatewayConfig:
        return self._gateway

    def version(self) -> int:
        """A number that changes whenever a client is added or revoked (by any process);
        cheap enough to poll several times a second. Traffic statistics do not change it."""
        with self._lock, sqlite_errors("reading the version"):
            row = self._connection.execute("SELECT version FROM gateway WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    def clients(self, *, include_revoked: bool = False) -> list[ClientRecord]:
        """Every active client (and with ``include_revoked`` the revoked ones), oldest first."""
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        with self._lock, sqlite_errors("listing clients"):
            rows = self._connection.execute(
                f"SELECT {CLIENT_COLUMNS} FROM clients{where} ORDER BY id"
            ).fetchall()
        return [client_record(row) for row in rows]

    # -- writing --------------------------------------------------------------------------
    def add_client(self, name: str, groups: Sequence[str] = ()) -> IssuedClient:
        """Register a client with new keys and the next free addresses.

        The client's private key is not stored: it is only in the returned token and wg-quick
        text. :raises ConfigError: the name is invalid or taken by an active client, or no
            address is free.
        """
        return self.add_clients([name], groups)[0]

    def add_clients(self, names: Sequence[str], groups: Sequence[str] = ()) -> list[IssuedClient]:
        """Register several clients in one transaction, as :meth:`add_client` does each:
        all of them or none, and :meth:`version` changes once, so a running gateway picks
        them up in one poll (10,000 clients: 3.4 s here, mostly making keys and tokens).

        :raises ConfigError: a name is invalid, repeated, or taken by an active client, or
            the addresses run out; nothing is added then.
        """
        seen: set[str] = set()
        for name in names:
            validate_client_name(name)
            if name in seen:
                raise ConfigError("NAME", f"client {name!r} is given twice")
            seen.add(name)
        crypto = self._crypto
        if crypto is None:
            raise RuntimeError("this registry was opened without crypto=: it cannot add clients")
        gateway = self._gateway
        keys = []
        for _ in names:
            private_key = crypto.generate_private_key()
            keys.append((private_key, crypto.public_key(private_key), secrets.token_bytes(32)))
        records: list[ClientRecord] = []
        last_index = gateway.subnet_v4.num_addresses - 2  # before the broadcast address
        with self._write("adding clients") as connection:
            # MAX(address_index) scans the table: read it once, not once per client.
            (highest,) = connection.execute("SELECT MAX(address_index) FROM clients").fetchone()
            highest = highest or 1
            for name, (_, public_key, preshared_key) in zip(names, keys, strict=True):
                if connection.execute(
                    "SELECT 1 FROM clients WHERE name = ? AND revoked_at IS NULL", (name,)
                ).fetchone():
                    raise ConfigError(
                        "NAME", f"a client named {name!r} already exists (revoke it first)"
                    )
                if highest < last_index:
                    highest = index = highest + 1
                else:
                    index = self._free_index(connection)
                address_v4, address_v6 = gateway.subnet_v4[index], gateway.subnet_v6[index]
                created_at = time.time()
                connection.execute(
                    "INSERT INTO clients (name, public_key, preshared_key, address_index, "
                    "address_v4, address_v6, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        public_key,
                        preshared_key,
                        index,
                        str(address_v4),
                        str(address_v6),
                        created_at,
                    ),
                )
                records.append(
                    ClientRecord(
                        name=name,
                        public_key=public_key,
                        preshared_key=preshared_key,
                        address_v4=address_v4,
                        address_v6=address_v6,
                        created_at=created_at,
                        revoked_at=None,
                        last_handshake=None,
                        rx_bytes=0,
                        tx_bytes=0,
                    )
                )
            if records:
                self._join_new_clients(connection, names, groups)
                connection.execute("UPDATE gateway SET version = version + 1 WHERE id = 1")
        resources = self.resources()
        return [
            self._issued(record, private_key, resources, groups)
            for record, (private_key, _, _) in zip(records, keys, strict=True)
        ]

    def _issued(
        self,
        record: ClientRecord,
        private_key: bytes,
        resources: Sequence[Resource],
        groups: Sequence[str],
    ) -> IssuedClient:
        """A new client's token and wg-quick text (the only place its private key goes).

        The token's routes are the gateway's tunnel addresses and the CIDR resources the
        client may reach now; a tunplug client then follows the control channel (``control``)
        for changes. The wg-quick text, for stock WireGuard clients that have no control
        channel, also routes everything when the client may use the Internet resource."""
        gateway = self._gateway
        view = client_view(
            0, resources, groups, (gateway.gateway_address_v4, gateway.gateway_address_v6)
        )
        routes = [route for route in view.routes if ip_network(route) not in PROXY_NETWORKS]
        issued = client_token.ClientToken(
            name=record.name,
            gateway_key=format_key(gateway.public_key),
            endpoints=[gateway.endpoint],
            private_key=format_key(private_key),
            preshared_key=format_key(record.preshared_key),
            addresses=[f"{record.address_v4}/32", f"{record.address_v6}/128"],
            routes=routes,
            dns_servers=list(gateway.dns),
            persistent_keepalive=PERSISTENT_KEEPALIVE,
            control=f"{gateway.gateway_address_v4}:{CONTROL_PORT}",
        )
        stock = issued
        if view.internet:
            stock = issued.model_copy(
                update={"routes": routes + [str(n) for n in INTERNET_NETWORKS]}
            )
        return IssuedClient(record, client_token.encode(issued), stock.to_wg_quick())

    def rotate_key(self) -> GatewayConfig:
        """A new gateway identity: a new private key in the state directory and its public key
        in the database, in one step (the key file is replaced inside the database's write
        transaction, which rolls back if the file cannot be written). A running gateway takes
        it on SIGHUP; every client needs a new token (``client add``), since their
        configurations name the old public key.
        """
        crypto = self._crypto
        if crypto is None:
            raise RuntimeError("this registry was opened without crypto=: it cannot make keys")
        private_key = crypto.generate_private_key()
        public_key = crypto.public_key(private_key)
        with self._write("storing the new gateway key") as connection:
            connection.execute("UPDATE gateway SET public_key = ? WHERE id = 1", (public_key,))
            replace_key(self.state_dir, format_key(private_key) + "\n")
        self._gateway = replace(self._gateway, private_key=private_key, public_key=public_key)
        return self._gateway

    def revoke(self, name: str) -> ClientRecord:
        """Revoke the active client ``name``; the running gateway drops it within a second.

        :raises ConfigError: no client has that name, or it is already revoked.
        """
        with self._write("revoking a client") as connection:
            row = connection.execute(
                f"SELECT id, {CLIENT_COLUMNS} FROM clients WHERE name = ? "
                "ORDER BY revoked_at IS NULL DESC, id DESC LIMIT 1",
                (name,),
            ).fetchone()
            if row is None:
                raise ConfigError("NAME", f"no client named {name!r}")
            if row[7] is not None:
                raise ConfigError("NAME", f"client {name!r} is already revoked")
            revoked_at = time.time()
            connection.execute(
                "UPDATE clients SET revoked_at = ? WHERE id = ?", (revoked_at, row[0])
            )
            connection.execute("UPDATE gateway SET version = version + 1 WHERE id = 1")
        return client_record((*row[1:7], revoked_at, *row[8:]))

    def record_stats(self, stats: Iterable[tuple[bytes, float | None, int, int]]) -> None:
        """Store ``(public_key, last_handshake, rx_bytes, tx_bytes)`` of active clients, as
        the running gateway reports them. A ``None`` handshake keeps the one stored before.
        Does not change :meth:`version`."""
        rows = [(handshake, rx, tx, bytes(key)) for key, handshake, rx, tx in stats]
        if not rows:
            return
        with self._write("recording statistics") as connection:
            connection.executemany(
                "UPDATE clients SET last_handshake = COALESCE(?, last_handshake), "
                "rx_bytes = ?, tx_bytes = ? WHERE public_key = ? AND revoked_at IS NULL",
                rows,
            )

    # -- internals ------------------------------------------------------------------------
    @contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """One short write transaction, taking the write lock at once (no upgrade deadlock)."""
        with self._lock, sqlite_errors(action):
            connection = self._connection
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _free_index(self, connection: sqlite3.Connection) -> int:
        """The address index for a new client: never used before, else the longest-revoked."""
        last_index = self._gateway.subnet_v4.num_addresses - 2  # before the broadcast address
        (highest,) = connection.execute("SELECT MAX(address_index) FROM clients").fetchone()
        candidate = (highest or 1) + 1
        if candidate <= last_index:
            return int(candidate)
        row = connection.execute(
            "SELECT address_index FROM clients GROUP BY address_index "
            "HAVING SUM(revoked_at IS NULL) = 0 ORDER BY MAX(revoked_at) LIMIT 1"
        ).fetchone()
        if row is None:
            raise ConfigError(
                "NAME",
                f"no free address left in {self._gateway.subnet_v4} (every one is held by an "
                "active client): revoke a client, or re-initialise with a larger --subnet-v4",
            )
        return int(row[0])
