"""The gateway's packet filter and NAT, with nftables, and IP forwarding.

Who calls it: :func:`tunplug.gateway.server.run_gateway`, around the tunnel's lifetime. One
nftables table of its own (``inet tunplug_<interface>``) holds everything, so removing it on exit
removes exactly what tunplug added, and a table left by a killed run is replaced at start.
Forwarding is switched on for the run and put back on exit; the values to put back are kept in
the state directory meanwhile, so that the run after a SIGKILL puts back those from before.

What the rules do, for packets arriving from the tunnel interface:
- to an allowed resource: forwarded, and masqueraded (source NAT to the gateway's address on
  the way out), so resources need no route back to the tunnel subnet;
- to anything else (other networks, other clients, the gateway itself): dropped and counted
  in the named counter ``not_a_resource``;
- replies (conntrack established/related) flow back to the client; nothing else may enter the
  tunnel from outside.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from tunplug.exceptions import ConfigError, TunplugError
from tunplug.sysctl_record import SysctlRecord

log = logging.getLogger(__name__)

NFT = "nft"
FORWARDING_SYSCTLS = (
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
)
#: In the gateway's state directory while forwarding is on: the values to put back on exit.
FORWARDING_RECORD = "forwarding-restore.json"
#: The counter that counts packets from clients to destinations that are not resources.
DROP_COUNTER = "not_a_resource"


class FirewallError(TunplugError):
    """nft refused the rules or is missing; the message has nft's own words."""


def table_name(interface: str) -> str:
    """``inet`` table name for ``interface`` (nft names: letters, digits, underscores)."""
    return "tunplug_" + re.sub(r"[^A-Za-z0-9_]", "_", interface)


def ruleset(
    interface: str,
    subnet_v4: IPv4Network,
    subnet_v6: IPv6Network,
    resources: Sequence[IPv4Network | IPv6Network],
) -> str:
    """The nft script that creates tunplug's table for ``interface`` (after deleting it)."""
    table = table_name(interface)
    v4 = ", ".join(str(n) for n in resources if n.version == 4)
    v6 = ", ".join(str(n) for n in resources if n.version == 6)
    sets = [
        "  set resources4 { type ipv4_addr; flags interval; "
        + (f"elements = {{ {v4} }}; " if v4 else "")
        + "}",
        "  set resources6 { type ipv6_addr; flags interval; "
        + (f"elements = {{ {v6} }}; " if v6 else "")
        + "}",
    ]
    quoted = json.dumps(interface)
    return "\n".join(
        [
            f"table inet {table} {{",
            *sets,
            f"  counter {DROP_COUNTER} {{ }}",
            "  chain forward {",
            "    type filter hook forward priority filter; policy accept;",
            f"    iifname {quoted} ip daddr @resources4 accept",
            f"    iifname {quoted} ip6 daddr @resources6 accept",
            f'    iifname {quoted} counter name "{DROP_COUNTER}" drop',
            f"    oifname {quoted} ct state established,related accept",
            f"    oifname {quoted} drop",
            "  }",
            "  chain input {",
            "    type filter hook input priority filter; policy accept;",
            f"    iifname {quoted} ct state established,related accept",
            f"    iifname {quoted} ip daddr @resources4 accept",
            f"    iifname {quoted} ip6 daddr @resources6 accept",
            f'    iifname {quoted} counter name "{DROP_COUNTER}" drop',
            "  }",
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            f"    oifname != {quoted} ip saddr {subnet_v4} ip daddr @resources4 masquerade",
            f"    oifname != {quoted} ip6 saddr {subnet_v6} ip6 daddr @resources6 masquerade",
            "  }",
            "}",
        ]
    )


def _nft(*args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [NFT, *args], input=script, capture_output=True, text=True, timeout=30, check=False
        )
    except FileNotFoundError:
        raise ConfigError(
            "nftables", "the 'nft' command is missing: install the nftables package"
        ) from None


def _delete_table(table: str) -> bool:
    return _nft("delete", "table", "inet", table).returncode == 0


@contextmanager
def firewall(
    interface: str,
    subnet_v4: IPv4Network,
    subnet_v6: IPv6Network,
    resources: Sequence[IPv4Network | IPv6Network],
) -> Iterator[None]:
    """Install the table for the duration of the block; remove it on any exit."""
    table = table_name(interface)
    if _delete_table(table):
        log.warning("removed nftables table %s left by a run that did not exit cleanly", table)
    done = _nft("-f", "-", script=ruleset(interface, subnet_v4, subnet_v6, resources))
    if done.returncode != 0:
        detail = " ".join(done.stderr.split())[:300]
        raise FirewallError(f"nft refused the gateway's rules: {detail}")
    log.info(
        "nftables table inet %s: forwarding and NAT to %s; everything else from %s dropped",
        table,
        ", ".join(map(str, resources)),
        interface,
    )
    try:
        yield
    finally:
        if not _delete_table(table):
            log.error(
                "could not remove nftables table inet %s: nft delete table inet %s", table, table
            )


def dropped_packets(interface: str) -> int | None:
    """Packets counted by :data:`DROP_COUNTER` (None when the table is not there)."""
    done = _nft("-j", "list", "counter", "inet", table_name(interface), DROP_COUNTER)
    if done.returncode != 0:
        return None
    try:
        for item in json.loads(done.stdout)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
    except (ValueError, KeyError, TypeError):
        return None
    return None


@contextmanager
def forwarding(state_dir: Path) -> Iterator[None]:
    """IPv4 and IPv6 forwarding on (in this network namespace), restored on exit.

    What to restore is written to :data:`FORWARDING_RECORD` in ``state_dir`` before anything
    changes, and removed once restored: after a SIGKILL, the next run finds it and restores the
    values from before the killed run (not the ``1`` that run left) when it exits
    (:mod:`tunplug.sysctl_record`).
    """
    record = SysctlRecord(state_dir / FORWARDING_RECORD, "forwarding left on")
    restore = record.adopt()
    try:
        turn_on = []
        for path in FORWARDING_SYSCTLS:
            try:
                with open(path, encoding="ascii") as file:
                    old = file.read().strip()
            except OSError as exc:
                raise FirewallError(f"cannot read {path}: {exc.strerror}") from None
            if old != "1":
                restore[path] = old
                turn_on.append(path)
        if restore:
            try:
                record.write(restore)
            except OSError as exc:
                raise FirewallError(f"cannot write {record.path}: {exc.strerror}") from None
        for path in turn_on:
            try:
                with open(path, "w", encoding="ascii") as file:
                    file.write("1")
            except OSError as exc:
                raise FirewallError(f"cannot enable forwarding ({path}): {exc.strerror}") from None
        yield
    finally:
        failed = False
        for path, value in restore.items():
            try:
                with open(path, "w", encoding="ascii") as file:
                    file.write(value)
            except OSError as exc:
                failed = True
                log.error("could not restore %s to %s: %s", path, value, exc.strerror)
        if not failed:
            record.remove()
