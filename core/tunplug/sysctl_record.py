"""Sysctl values to put back, kept in a file while a process has them changed.

Who calls it: the gateway's forwarding (:func:`tunplug.gateway.firewall.forwarding`, record in
its state directory) and the Linux TUN backend's full tunnel (``src_valid_mark``, record in
RUN_DIR). A process that changes a sysctl for its lifetime writes the value from before to a
record first and deletes the record once it put the value back. A SIGKILL skips that, so the
next run in the same boot and network namespace finds the record of a process that is gone,
adopts its values and puts *those* back when it exits, instead of taking the killed run's
value for the original and leaving it for good.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

#: Where records live that have no state directory of their own (a tmpfs: cleared at boot, as
#: the sysctls are).
RUN_DIR = Path("/run/tunplug")


def here() -> dict[str, object]:
    """This boot and network namespace: a record made elsewhere says nothing about here."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
            boot_id = file.read().strip()
        netns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return {}
    return {"boot_id": boot_id, "netns": netns}


def netns_record(name: str) -> Path:
    """A record in RUN_DIR for this network namespace: ``<name>-<netns inode>.json``."""
    where = here()
    return RUN_DIR / f"{name}-{where.get('netns', 'unknown')}.json"


def sysctl_name(path: str) -> str:
    """``/proc/sys/net/ipv4/ip_forward`` -> ``net.ipv4.ip_forward``."""
    return path.removeprefix("/proc/sys/").replace("/", ".")


class SysctlRecord:
    """The record at ``path``: :meth:`adopt` what a killed run left, :meth:`write` ours,
    :meth:`remove` it once the values are back."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what  # for the log line, e.g. "forwarding left on"
        self.owned = False

    def adopt(self) -> dict[str, str]:
        """The values a run that is gone recorded to put back (empty: none, or its process is
        still running, or the record is from another boot or namespace); the record is then
        ours to replace and remove."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            pid, where, values = int(data["pid"]), data["where"], dict(data["restore"])
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring damaged record %s: %s", self.path, exc)
            return {}
        if not where or where != here() or _alive(pid):
            return {}
        restore = {str(path): str(value) for path, value in values.items()}
        log.warning(
            "found %s by a run that was killed (pid %d): restoring %s on exit",
            self.what,
            pid,
            ", ".join(f"{sysctl_name(path)}={value}" for path, value in restore.items()),
        )
        self.owned = True
        return restore

    def write(self, restore: dict[str, str]) -> None:
        """Record ``restore`` (path -> value from before) under this process's pid.

        :raises OSError: the record cannot be written.
        """
        data = {"pid": os.getpid(), "where": here(), "restore": restore}
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(data, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
        self.owned = True

    def remove(self) -> None:
        """Delete the record if it is ours (the values are back)."""
        if self.owned:
            self.path.unlink(missing_ok=True)
            self.owned = False
            if self.path.parent == RUN_DIR:
                with contextlib.suppress(OSError):  # another record still there: keep it
                    RUN_DIR.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()
