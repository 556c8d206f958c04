"""What the DNS managers share: their error class, input checks and the state-file helper.

Who calls it: the managers in this package (``resolv_conf``, ``resolved``, ``nrpt``). Each
manager keeps what it must undo in one JSON file in its ``state_dir``; the file is written
atomically *before* the system is changed, so a run that crashes at any point leaves enough
behind for the next ``activate`` (or ``deactivate``) to put things back.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunplug.dns import DnsSettings
from tunplug.exceptions import TunplugError


class DnsError(TunplugError):
    """A DNS manager could not apply or undo its settings; the message is one line."""


# A DNS name as resolvers accept it in a search list: labels of letters, digits, '-' and '_'
# (the latter for SRV-style names), separated by dots, optionally ending in one.
_DOMAIN = re.compile(r"^(?=.{1,253}\.?$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                     r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?$")  # fmt: skip


def check_settings(settings: DnsSettings) -> None:
    """Refuse an interface name or domain that would break a file, a command line or a key.

    Names come from configuration files; a domain with a newline would add lines to
    resolv.conf, and one starting with ``-`` would read as an option to ``resolvectl``.

    :raises DnsError: the first bad value, named.
    """
    name = settings.interface
    # Spaces are allowed: Windows adapter names have them (Linux refuses them itself).
    if not name or name.startswith("-") or any(c in "/\\" or not c.isprintable() for c in name):
        raise DnsError(f"DNS: invalid interface name {name!r}")
    for domain in settings.domains:
        if not _DOMAIN.match(domain):
            raise DnsError(f"DNS: invalid search domain {domain!r} for {name}")
    for domain in settings.routing_domains:
        if not _DOMAIN.match(domain):
            raise DnsError(f"DNS: invalid routing domain {domain!r} for {name}")


def join_servers(servers: Sequence[object]) -> str:
    return ", ".join(map(str, servers))


class StateFile:
    """One JSON document in a manager's ``state_dir``, replaced atomically.

    ``read`` returns ``None`` when there is no file; a file that is not valid JSON (a disk
    that filled up mid-write is the only known cause, since writes are atomic) is reported as
    :class:`DnsError`, because guessing what it said could destroy the user's configuration.
    """

    def __init__(self, state_dir: Path, name: str) -> None:
        self.path = state_dir / name

    def read(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DnsError(f"cannot read DNS state file {self.path}: {exc.strerror}") from exc
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise DnsError(
                f"DNS state file {self.path} is damaged; check what it describes, "
                "restore the resolver by hand and delete the file"
            )
        return data

    def write(self, data: dict[str, Any]) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomically(self.path, json.dumps(data, indent=1).encode(), mode=0o600)
        except OSError as exc:
            raise DnsError(f"cannot write DNS state file {self.path}: {exc.strerror}") from exc

    def remove(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            raise DnsError(f"cannot delete DNS state file {self.path}: {exc.strerror}") from exc


def write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to a temporary file next to ``path`` and rename it over ``path``.

    Readers see the old file or the new one, never a part. The temporary file is removed if
    anything fails. :raises OSError: as the system reported it (the caller decides).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tunplug-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # not fchmod: this module also runs on Windows (NRPT state)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
