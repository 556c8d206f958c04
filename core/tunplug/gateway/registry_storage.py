"""Where the gateway registry keeps its state: the files, and the SQLite plumbing under it.

Who calls it: :mod:`tunplug.gateway.registry` (creating and opening the registry, and around
every statement it runs, through :func:`sqlite_errors`); :mod:`tunplug.cli.gateway` names the
files (:data:`DB_NAME`, :data:`KEY_NAME`) through the registry.

The schema version is ``PRAGMA user_version``; :data:`MIGRATIONS` lists the steps from each
version to the next, applied in order (each in its own transaction) when the database is
opened. The database runs in WAL mode with a busy timeout, so the CLI and the running gateway
can use it at once; errors from SQLite become :class:`RegistryError`, saying what was being done.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunplug.exceptions import ConfigError, TunplugError
from tunplug.gateway.resource_store import MIGRATION_3

DB_NAME = "registry.db"
KEY_NAME = "private.key"
#: How long a writer waits for another process's transaction before giving up.
BUSY_TIMEOUT_SECONDS = 5.0


#: ``MIGRATIONS[n]`` takes the schema from version ``n`` to ``n + 1``. Append, never edit.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the gateway row (id 1; ``version`` counts changes to the client list) and clients.
    (
        """CREATE TABLE gateway (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            public_key BLOB NOT NULL,
            endpoint TEXT NOT NULL,
            listen_port INTEGER NOT NULL,
            subnet_v4 TEXT NOT NULL,
            subnet_v6 TEXT NOT NULL,
            resources TEXT NOT NULL,
            dns TEXT NOT NULL,
            created_at REAL NOT NULL,
            version INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE clients (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            public_key BLOB NOT NULL UNIQUE,
            preshared_key BLOB NOT NULL,
            address_index INTEGER NOT NULL,
            address_v4 TEXT NOT NULL,
            address_v6 TEXT NOT NULL,
            created_at REAL NOT NULL,
            revoked_at REAL
        )""",
        "CREATE UNIQUE INDEX clients_active_name ON clients (name) WHERE revoked_at IS NULL",
        "CREATE UNIQUE INDEX clients_active_address ON clients (address_index) "
        "WHERE revoked_at IS NULL",
    ),
    # 2: what the running gateway reports (record_stats).
    (
        "ALTER TABLE clients ADD COLUMN last_handshake REAL",
        "ALTER TABLE clients ADD COLUMN rx_bytes INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE clients ADD COLUMN tx_bytes INTEGER NOT NULL DEFAULT 0",
    ),
    # 3: resources, groups and memberships (tunplug.gateway.resource_store).
    MIGRATION_3,
)
SCHEMA_VERSION = len(MIGRATIONS)


class RegistryError(TunplugError):
    """The database failed (locked for too long, corrupt, disk full); the CLIs exit 1."""


# -- storage ----------------------------------------------------------------------------------
def path_exists(path: Path) -> bool:
    """Whether ``path`` exists. :raises ConfigError: it cannot be looked at (permissions)."""
    try:
        return path.exists()
    except OSError as exc:
        raise ConfigError("--state-dir", f"cannot read {path}: {_os_reason(exc)}") from None


def _os_reason(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if isinstance(exc, PermissionError):
        reason += " (run as root)"
    return reason


def create_state(state_dir: Path, key_text: str) -> None:
    """A fresh state directory (mode 0700): ``key_text`` in :data:`KEY_NAME`, and an empty
    :data:`DB_NAME` (mode 0600 from its first byte) in place of any database there was.

    :raises ConfigError: the directory or a file cannot be created.
    """
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(state_dir, 0o700)
        for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"):
            (state_dir / name).unlink(missing_ok=True)
        _write_private(state_dir / KEY_NAME, key_text)
        db_path = state_dir / DB_NAME
        os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise ConfigError("--state-dir", f"cannot create {state_dir}: {_os_reason(exc)}") from None


def replace_key(state_dir: Path, key_text: str) -> None:
    """Replace :data:`KEY_NAME` with ``key_text`` atomically (mode 0600 from the first byte).

    :raises ConfigError: it cannot be written.
    """
    try:
        _write_private(state_dir / KEY_NAME, key_text)
    except OSError as exc:
        raise ConfigError(
            "--state-dir", f"cannot write {state_dir / KEY_NAME}: {_os_reason(exc)}"
        ) from None


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte, replacing atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def connect(path: Path) -> sqlite3.Connection:
    """The database at ``path``, in WAL mode with the busy timeout (to share with a thread)."""
    with sqlite_errors(f"opening {path}"):
        # Autocommit mode: reads see other processes' commits; writes use Registry._write().
        connection = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
        )
        try:
            connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            connection.close()
            raise
    return connection


def migrate(connection: sqlite3.Connection, path: Path) -> None:
    """Apply the missing steps of :data:`MIGRATIONS`, each in one transaction."""
    with sqlite_errors(f"migrating {path}"):
        while True:
            connection.execute("BEGIN IMMEDIATE")
            try:
                (version,) = connection.execute("PRAGMA user_version").fetchone()
                if version > SCHEMA_VERSION:
                    raise ConfigError(
                        "--state-dir",
                        f"{path} has schema version {version}, newer than this tunplug knows "
                        f"({SCHEMA_VERSION}): upgrade tunplug",
                    )
                if version == SCHEMA_VERSION:
                    connection.execute("COMMIT")
                    return
                for statement in MIGRATIONS[version]:
                    connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {version + 1}")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")


@contextmanager
def sqlite_errors(action: str) -> Iterator[None]:
    """SQLite's errors as :class:`RegistryError`, saying what was being done."""
    try:
        yield
    except sqlite3.Error as exc:
        raise RegistryError(f"gateway registry: {action} failed: {exc}") from exc
