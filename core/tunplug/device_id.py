"""The device id: a stable identifier of this client machine, shown to gateways and GUIs.

Who calls it: the headless client and the tunnel service at start-up. ``--id`` /
``TUNPLUG_ID`` wins; otherwise the id stored in ``<state dir>/config/device-id`` is used, and
created on first run. A new id is derived from ``/etc/machine-id`` with a keyed hash (so the
machine id itself is never revealed, and reinstalling tunplug keeps the id), or random when the
machine has no machine id. The directory is mode 0770 and the file 0640 (Firezone's layout).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import uuid
from pathlib import Path

from tunplug.exceptions import ConfigError

log = logging.getLogger(__name__)

MACHINE_ID = Path("/etc/machine-id")
#: Domain-separates our derivation from every other use of the machine id.
_DERIVATION_KEY = b"dev.tunplug.client device id"
#: What an id given with ``--id`` may contain.
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def device_id_path(state_dir: Path) -> Path:
    return state_dir / "config" / "device-id"


def validate_device_id(value: str, setting: str = "--id") -> str:
    """An id given by the user, checked. :raises ConfigError: empty, too long or odd bytes."""
    if not _ID_PATTERN.fullmatch(value):
        raise ConfigError(
            setting, "must be 1-128 letters, digits, '.', '_', ':' or '-' (starting alphanumeric)"
        )
    return value


def derive_device_id(machine_id: Path = MACHINE_ID) -> tuple[str, str]:
    """A new id and where it came from (``"machine-id"`` or ``"random"``)."""
    try:
        secret = machine_id.read_bytes().strip()
    except OSError:
        secret = b""
    if secret:
        digest = hashlib.blake2s(secret, key=_DERIVATION_KEY, digest_size=16).digest()
        return str(uuid.UUID(bytes=digest, version=4)), "machine-id"
    return str(uuid.uuid4()), "random"


def load_or_create_device_id(state_dir: Path, machine_id: Path = MACHINE_ID) -> str:
    """The stored id, or a new one written to ``<state_dir>/config/device-id``.

    :raises ConfigError: the state directory cannot be created or written (names the path).
    """
    path = device_id_path(state_dir)
    try:
        stored = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        stored = ""
    except OSError as exc:
        raise ConfigError("TUNPLUG_STATE_DIR", f"cannot read {path}: {exc.strerror}") from None
    if stored:
        return validate_device_id(stored, str(path))
    device_id, origin = derive_device_id(machine_id)
    try:
        path.parent.mkdir(mode=0o770, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o770)
        temporary = path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(device_id + "\n")
        os.chmod(temporary, 0o640)  # the umask may have narrowed it; 0640 exactly
        os.replace(temporary, path)
    except OSError as exc:
        raise ConfigError(
            "TUNPLUG_STATE_DIR", f"cannot create {path}: {exc.strerror or exc}"
        ) from None
    log.info("created device id %s (from %s) in %s", device_id, origin, path)
    return device_id
