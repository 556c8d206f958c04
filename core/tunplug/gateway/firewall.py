"""The gateway's packet filter and NAT, with nftables, and IP forwarding.

Who calls it: :func:`tunplug.gateway.server.run_gateway`, around the tunnel's lifetime, and the
running gateway's registry poll and DNS server, which change who may reach what through
:meth:`Firewall.update` (:mod:`tunplug.gateway.access` computes the elements). One nftables
table of its own (``inet tunplug_<interface>``) holds everything, so removing it on exit removes
exactly what tunplug added, and a table left by a killed run is replaced at start. Forwarding is
switched on for the run and put back on exit; the values to put back are kept in the state
directory meanwhile, so that the run after a SIGKILL puts back those from before.

What the rules do, for every packet arriving from the tunnel interface (in prerouting, before
destination NAT, so an open connection is checked packet by packet and cut as soon as its
access is taken away):
- TCP to the control channel and UDP to the DNS server on the gateway's tunnel addresses:
  accepted;
- to the clients' subnets (another client, the gateway's other ports): dropped and counted;
- matching the client's access sets (its address and the destination, protocol and port; a
  DNS resource's proxy address before it is translated): accepted, then proxy addresses are
  translated to the real ones (``proxy4``/``proxy6`` maps), and what leaves by another
  interface is masqueraded, so resources need no route back to the tunnel subnet;
- anything else: dropped and counted in the named counter ``not_a_resource``.
Only replies (conntrack established/related) may enter the tunnel from outside.

The sets and maps are changed live, in one ``nft -f`` transaction per change that deletes and
adds only the elements that differ: nothing is reloaded, other clients' flows are untouched.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

from tunplug.exceptions import ConfigError, TunplugError
from tunplug.gateway.access import ACCESS_SETS
from tunplug.resources import CONTROL_PORT, DNS_PORT, PROXY_V4, PROXY_V6
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
#: The filter's priority on prerouting: after conntrack (-200), before destination NAT (-100).
FILTER_PRIORITY = -150
#: What the rules need, said when nft refuses them.
NFT_NEEDS = "nftables >= 0.9.4 and Linux >= 5.6 for sets of concatenated ranges"


class FirewallError(TunplugError):
    """nft refused the rules or is missing; the message has nft's own words."""


def table_name(interface: str) -> str:
    """``inet`` table name for ``interface`` (nft names: letters, digits, underscores)."""
    return "tunplug_" + re.sub(r"[^A-Za-z0-9_]", "_", interface)


def ruleset(
    interface: str,
    subnet_v4: IPv4Network,
    subnet_v6: IPv6Network,
    gateway_v4: IPv4Address,
    gateway_v6: IPv6Address,
) -> str:
    """The nft script that creates tunplug's table for ``interface``, its sets and maps empty
    (:meth:`Firewall.update` fills them)."""
    table = table_name(interface)
    quoted = json.dumps(interface)
    drop = f'counter name "{DROP_COUNTER}" drop'
    sets = []
    for version, address in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        sets += [
            f"  set access{version} {{ type {address} . {address}; flags interval; }}",
            f"  set access{version}_proto {{ type {address} . {address} . inet_proto; "
            "flags interval; }",
            f"  set access{version}_port {{ type {address} . {address} . inet_proto . "
            "inet_service; flags interval; }",
            f"  map proxy{version} {{ type {address} : {address}; }}",
        ]
    return "\n".join(
        [
            f"table inet {table} {{",
            *sets,
            f"  counter {DROP_COUNTER} {{ }}",
            # Before destination NAT (-100): a DNS resource's packets are checked against the
            # proxy address the client was given, then translated.
            "  chain prerouting {",
            f"    type filter hook prerouting priority {FILTER_PRIORITY}; policy accept;",
            f"    iifname {quoted} jump from_tunnel",
            "  }",
            "  chain from_tunnel {",
            f"    ip daddr {gateway_v4} tcp dport {CONTROL_PORT} accept",
            f"    ip daddr {gateway_v4} udp dport {DNS_PORT} accept",
            f"    ip6 daddr {gateway_v6} tcp dport {CONTROL_PORT} accept",
            f"    ip6 daddr {gateway_v6} udp dport {DNS_PORT} accept",
            # Clients never reach each other, whatever their resources (the Internet too).
            f"    ip daddr {subnet_v4} {drop}",
            f"    ip6 daddr {subnet_v6} {drop}",
            "    ip saddr . ip daddr @access4 accept",
            "    ip saddr . ip daddr . meta l4proto @access4_proto accept",
            "    ip saddr . ip daddr . meta l4proto . th dport @access4_port accept",
            "    ip6 saddr . ip6 daddr @access6 accept",
            "    ip6 saddr . ip6 daddr . meta l4proto @access6_proto accept",
            "    ip6 saddr . ip6 daddr . meta l4proto . th dport @access6_port accept",
            # ICMP errors about a flow the client was allowed to open (path MTU, unreachable).
            "    meta l4proto { icmp, ipv6-icmp } ct state related accept",
            f"    {drop}",
            "  }",
            "  chain proxy {",
            "    type nat hook prerouting priority dstnat; policy accept;",
            f"    iifname {quoted} ip daddr {PROXY_V4} dnat ip to ip daddr map @proxy4",
            f"    iifname {quoted} ip6 daddr {PROXY_V6} dnat ip6 to ip6 daddr map @proxy6",
            "  }",
            "  chain forward {",
            "    type filter hook forward priority filter; policy accept;",
            # A proxy address translated to a client's address must not reach that client.
            f"    iifname {quoted} oifname {quoted} {drop}",
            f"    iifname {quoted} accept",
            f"    oifname {quoted} ct state established,related accept",
            f"    oifname {quoted} drop",
            "  }",
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            f"    oifname != {quoted} ip saddr {subnet_v4} masquerade",
            f"    oifname != {quoted} ip6 saddr {subnet_v6} masquerade",
            "  }",
            "}",
        ]
    )


def update_script(
    table: str, old: Mapping[str, frozenset[str]], new: Mapping[str, frozenset[str]]
) -> str:
    """The nft commands that take the sets and maps of ``table`` from ``old`` to ``new``
    (empty when nothing differs): deletions first, then additions, in one transaction."""
    deletions, additions = [], []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name, frozenset()), new.get(name, frozenset())
        gone, added = before - after, after - before
        if gone:
            # A map element is deleted by its key.
            keys = sorted(item.split(" : ")[0] for item in gone)
            deletions.append(f"delete element inet {table} {name} {{ {', '.join(keys)} }}")
        if added:
            additions.append(f"add element inet {table} {name} {{ {', '.join(sorted(added))} }}")
    return "\n".join(deletions + additions)


def flush_script(table: str, contents: Mapping[str, frozenset[str]]) -> str:
    """The nft commands that empty the sets and maps in ``contents`` and fill them again."""
    lines = [f"flush {_kind(name)} inet {table} {name}" for name in sorted(contents)]
    return "\n".join([*lines, update_script(table, {}, contents)])


def _kind(name: str) -> str:
    return "map" if name.startswith("proxy") else "set"


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


class Firewall:
    """The installed table's sets and maps: the one place that changes them, from what
    :mod:`tunplug.gateway.access` computes. Calls block (they run ``nft``): call them from a
    worker thread, one at a time."""

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self.table = table_name(interface)
        self._installed: dict[str, frozenset[str]] = {}

    def update(self, contents: Mapping[str, frozenset[str]]) -> bool:
        """Make the sets and maps hold ``contents`` (sets not named keep theirs), changing only
        the elements that differ. Returns whether anything changed.

        :raises FirewallError: nft refused both the change and a full refill.
        """
        wanted = {**self._installed, **contents}
        script = update_script(self.table, self._installed, wanted)
        if not script:
            return False
        done = _nft("-f", "-", script=script)
        if done.returncode != 0:
            # Someone changed the table behind tunplug's back: refill it from scratch.
            log.warning(
                "nft refused a change of the access sets (%s): refilling them",
                _one_line(done.stderr),
            )
            done = _nft("-f", "-", script=flush_script(self.table, wanted))
            if done.returncode != 0:
                raise FirewallError(
                    f"nft refused the gateway's access sets: {_one_line(done.stderr)}"
                )
        self._installed = wanted
        return True


@contextmanager
def firewall(
    interface: str,
    subnet_v4: IPv4Network,
    subnet_v6: IPv6Network,
    gateway_v4: IPv4Address,
    gateway_v6: IPv6Address,
    contents: Mapping[str, frozenset[str]],
) -> Iterator[Firewall]:
    """Install the table with ``contents`` in its sets for the duration of the block (before
    the tunnel carries a packet); remove it on any exit."""
    table = table_name(interface)
    if _delete_table(table):
        log.warning("removed nftables table %s left by a run that did not exit cleanly", table)
    done = _nft("-f", "-", script=ruleset(interface, subnet_v4, subnet_v6, gateway_v4, gateway_v6))
    if done.returncode != 0:
        raise FirewallError(
            f"nft refused the gateway's rules ({NFT_NEEDS}): {_one_line(done.stderr)}"
        )
    installed = Firewall(interface)
    try:
        installed.update(contents)
        log.info(
            "nftables table inet %s: clients reach their resources (%d access elements), "
            "everything else from %s is dropped",
            table,
            sum(len(contents.get(name, ())) for name in ACCESS_SETS),
            interface,
        )
        yield installed
    finally:
        if not _delete_table(table):
            log.error(
                "could not remove nftables table inet %s: nft delete table inet %s", table, table
            )


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


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
