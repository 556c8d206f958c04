"""Runs ``etc-resolv-conf`` on the real ``/etc/resolv.conf`` inside a private mount namespace.

Started by ``test_resolv_conf_root.py`` as ``unshare -m sh -c 'mount ...; exec python THIS'``
after a temporary file was bind-mounted over the resolver path (``/etc/resolv.conf``, or a
path in a temporary directory) in that namespace only. Arguments:
``BIND_SOURCE TARGET STATE_DIR SCENARIO SERVER...``; the manager uses its default path when
``TARGET`` is ``/etc/resolv.conf`` and is given ``TARGET`` otherwise.

Before touching anything it checks that ``TARGET`` *is* the bind-mounted temporary file (same
device and inode, not a symlink), and exits with status 3 otherwise: the host's file must
never be written. Scenarios:

- ``crash``: activate, print the file as one JSON line, then wait to be SIGKILLed;
- ``finish``: activate (which recovers a crashed run first), print the file, deactivate,
  print the file again, exit 0.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from ipaddress import ip_address
from pathlib import Path

import anyio

from tunplug.dns import DnsSettings
from tunplug_dns.resolv_conf import EtcResolvConf


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> int:
    source, target, state_dir, scenario, *servers = sys.argv[1:]
    resolv = Path(target)
    ours, theirs = os.stat(source), os.lstat(resolv)
    if resolv.is_symlink() or (ours.st_dev, ours.st_ino) != (theirs.st_dev, theirs.st_ino):
        say(error=f"{resolv} is not the bind-mounted {source}; refusing to touch it")
        return 3
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    if resolv == EtcResolvConf.default_path:
        manager = EtcResolvConf(Path(state_dir))
    else:
        manager = EtcResolvConf(Path(state_dir), path=resolv)
    assert manager.path == resolv
    settings = DnsSettings("tun-root", tuple(map(ip_address, servers)), ("corp.example",), True)
    anyio.run(manager.activate, settings)
    say(active=resolv.read_text())
    if scenario == "crash":
        while True:
            time.sleep(60)
    anyio.run(manager.deactivate)
    say(restored=resolv.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
