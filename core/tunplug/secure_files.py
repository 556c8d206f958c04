"""Reading files that hold secrets (tokens, private keys), refusing ones others could read.

Who calls it: the headless client for its token file and for a wg-quick file (which always
holds a ``PrivateKey``), and the gateway for its state. On POSIX systems such a file must be
owned by root (or by the user tunplug runs as, for an unprivileged service holding only
``CAP_NET_ADMIN``) and must not be readable or writable by group or others (mode 0400 or
0600). A file that fails the check is refused with one line that says the command to run.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from tunplug.exceptions import ConfigError


def check_private_file(path: Path, setting: str) -> None:
    """Refuse ``path`` unless only its owner (root, or us) can read and write it.

    :raises ConfigError: the file is missing, not a regular file, owned by someone else, or
        open to group or others; the message names ``setting`` and the fix.
    """
    if sys.platform == "win32":  # NTFS ACLs; the installer restricts the directory.
        return
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(setting, f"{path} does not exist") from None
    except OSError as exc:
        raise ConfigError(setting, f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(setting, f"{path} is not a regular file")
    allowed_owners = {0, os.geteuid()}
    if info.st_uid not in allowed_owners:
        raise ConfigError(
            setting,
            f"{path} must be owned by root (it is owned by uid {info.st_uid}); "
            f"run: chown root:root {path}",
        )
    if info.st_mode & 0o077:
        raise ConfigError(
            setting,
            f"{path} is readable or writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}",
        )


def read_private_file(path: Path, setting: str) -> str:
    """:func:`check_private_file`, then the file's text with surrounding whitespace removed."""
    check_private_file(path, setting)
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(setting, f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(setting, f"{path} is not UTF-8 text") from None
