"""The ``ifconfig`` and ``route`` command lines that configure a utun device on macOS.

Who calls it: :mod:`tunplug_tun_darwin.device` runs them (in a worker thread); tests check
the commands built. The forms follow wireguard-tools' ``wg-quick/darwin.bash``: a utun device
is point-to-point, so an IPv4 address is given as ``inet ADDR/PREFIX ADDR alias`` and its
prefix is routed explicitly; IPv6 addresses are ``inet6 ADDR/PREFIX alias``. They have not
been run on macOS by this project's CI.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network


def interface_commands(
    name: str, addresses: Sequence[IPv4Interface | IPv6Interface], mtu: int
) -> list[list[str]]:
    """Bring ``name`` up with ``mtu`` and ``addresses``, and route the IPv4 prefixes into it."""
    commands = [["ifconfig", name, "mtu", str(mtu), "up"]]
    for address in addresses:
        if address.version == 4:
            commands.append(
                ["ifconfig", name, "inet", address.with_prefixlen, str(address.ip), "alias"]
            )
        else:
            commands.append(["ifconfig", name, "inet6", address.with_prefixlen, "alias"])
    # The kernel routes an IPv6 prefix by itself, not the IPv4 one of a point-to-point link.
    v4_prefixes = [n for n in own_routes(addresses) if n.version == 4 and n.prefixlen < 32]
    commands.extend(route_command(name, network) for network in v4_prefixes)
    return commands


def own_routes(
    addresses: Sequence[IPv4Interface | IPv6Interface],
) -> list[IPv4Network | IPv6Network]:
    """Networks routed into the device by :func:`interface_commands` or by the kernel."""
    return list(dict.fromkeys(address.network for address in addresses))


def route_command(
    name: str, network: IPv4Network | IPv6Network, *, delete: bool = False
) -> list[str]:
    """Add (or delete) the route of ``network`` into interface ``name``."""
    family = "-inet" if network.version == 4 else "-inet6"
    verb = "delete" if delete else "add"
    return ["route", "-q", "-n", verb, family, str(network), "-interface", name]
