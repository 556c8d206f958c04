"""Checking what an operator types into ``tunplug-gateway init`` and ``client add``.

Who calls it: :mod:`tunplug.gateway.registry`. Every function raises a one-line
:class:`~tunplug.exceptions.ConfigError` naming the flag (or ``NAME``) to fix; nothing is
resolved or looked up on the network.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from tunplug.exceptions import ConfigError

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
# ASCII digits only: isdigit() also takes '²', which int() refuses; 5 at most, as int() refuses
# more than 4,300.
_PORT = re.compile(r"[0-9]{1,5}")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_MIN_PREFIX_V4, _MAX_PREFIX_V4 = 8, 30
_MIN_PREFIX_V6, _MAX_PREFIX_V6 = 32, 120


def validate_client_name(name: str) -> str:
    """:raises ConfigError: ``name`` is not 1-64 letters, digits, ``.``, ``_`` or ``-``."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            "NAME", f"{name!r} is not a client name (1-64 letters, digits, '.', '_' or '-')"
        )
    return name


def parse_port(text: str) -> int | None:
    """``text`` as a port 1-65535 (ASCII digits only), or None."""
    return int(text) if _PORT.fullmatch(text) and 1 <= int(text) <= 65535 else None


def validate_endpoint(endpoint: str) -> str:
    """Check ``host:port`` or ``[v6-address]:port`` without resolving the host.

    :raises ConfigError: naming ``--endpoint``.
    """
    host, sep, port_text = endpoint.strip().rpartition(":")
    problem = None
    if not sep or not host:
        problem = "expected HOST:PORT or [IPv6-ADDRESS]:PORT"
    elif parse_port(port_text) is None:
        problem = f"port {port_text!r} is not 1-65535"
    elif host.startswith("["):
        try:
            IPv6Address(host.removeprefix("[").removesuffix("]"))
            problem = None if host.endswith("]") else "missing ']'"
        except ValueError:
            problem = f"{host} is not an IPv6 address"
    elif ":" in host:
        problem = "put an IPv6 address in brackets: [ADDRESS]:PORT"
    elif len(host) > 253 or not all(_HOST_LABEL.fullmatch(part) for part in host.split(".")):
        problem = f"{host!r} is not a host name or address"
    if problem:
        raise ConfigError("--endpoint", f"{problem} (got {endpoint!r})")
    return endpoint.strip()


def validate_subnets(subnet_v4: str, subnet_v6: str) -> tuple[IPv4Network, IPv6Network]:
    network_v4 = parse_network(subnet_v4, "--subnet-v4", 4)
    network_v6 = parse_network(subnet_v6, "--subnet-v6", 6)
    assert isinstance(network_v4, IPv4Network) and isinstance(network_v6, IPv6Network)
    if not _MIN_PREFIX_V4 <= network_v4.prefixlen <= _MAX_PREFIX_V4:
        raise ConfigError(
            "--subnet-v4",
            f"prefix length must be /{_MIN_PREFIX_V4} to /{_MAX_PREFIX_V4}, got {network_v4}",
        )
    if not _MIN_PREFIX_V6 <= network_v6.prefixlen <= _MAX_PREFIX_V6:
        raise ConfigError(
            "--subnet-v6",
            f"prefix length must be /{_MIN_PREFIX_V6} to /{_MAX_PREFIX_V6}, got {network_v6}",
        )
    if network_v6.num_addresses < network_v4.num_addresses:
        raise ConfigError(
            "--subnet-v6",
            f"{network_v6} has fewer addresses than --subnet-v4 {network_v4} (each client gets "
            "one of each)",
        )
    return network_v4, network_v6


def parse_network(text: str, flag: str, version: int) -> IPv4Network | IPv6Network:
    try:
        network = ip_network(text.strip())
    except ValueError as exc:
        raise ConfigError(flag, f"{text!r} is not a network in CIDR form: {exc}") from None
    if version and network.version != version:
        raise ConfigError(flag, f"{text!r} is not an IPv{version} network")
    return network


def validate_dns(dns: Sequence[str]) -> tuple[IPv4Address | IPv6Address, ...]:
    servers: list[IPv4Address | IPv6Address] = []
    for text in dns:
        try:
            servers.append(ip_address(text.strip()))
        except ValueError:
            raise ConfigError("--dns", f"{text!r} is not an IP address") from None
    return tuple(servers)
