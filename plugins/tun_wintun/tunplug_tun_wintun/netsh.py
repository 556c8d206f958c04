"""The ``netsh`` command lines that give a WinTun adapter its MTU, addresses and routes.

Who calls it: :mod:`tunplug_tun_wintun.device` builds the commands here and runs them through
:attr:`~tunplug_tun_wintun._api.WindowsApi.run`; tests check the commands built.

Why ``netsh``: it ships with every Windows, needs no extra binding, and its ``store=active``
settings vanish with the adapter (nothing persists after a crash). The adapter is named by its
interface *index* (from its LUID), so adapter names with spaces or quotes never need quoting.
These command lines were written from Microsoft's ``netsh interface ipv4|ipv6`` documentation
and have not been run on Windows by this project's CI.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network

#: IPv6 needs an MTU of at least 1280; a smaller MTU is set for IPv4 only.
IPV6_MIN_MTU = 1280


def interface_commands(
    index: int, addresses: Sequence[IPv4Interface | IPv6Interface], mtu: int
) -> list[list[str]]:
    """Set the MTU of interface ``index`` and add ``addresses`` (until the adapter goes)."""
    commands = [_netsh("ipv4", "set", "subinterface", str(index), f"mtu={mtu}")]
    if mtu >= IPV6_MIN_MTU:
        commands.append(_netsh("ipv6", "set", "subinterface", str(index), f"mtu={mtu}"))
    for address in addresses:
        if address.version == 4:
            ip, mask = f"address={address.ip}", f"mask={address.netmask}"
            commands.append(_netsh("ipv4", "add", "address", f"name={index}", ip, mask))
        else:
            commands.append(
                _netsh("ipv6", "add", "address", f"interface={index}", f"address={address}")
            )
    return commands


def route_command(
    index: int, network: IPv4Network | IPv6Network, *, delete: bool = False
) -> list[str]:
    """Add (or delete) the route of ``network`` into interface ``index``."""
    family = f"ipv{network.version}"
    verb = "delete" if delete else "add"
    return _netsh(family, verb, "route", f"prefix={network}", f"interface={index}")


def _netsh(family: str, *words: str) -> list[str]:
    return ["netsh", "interface", family, *words, "store=active"]
