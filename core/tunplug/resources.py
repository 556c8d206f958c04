"""Resources: what a gateway's clients may reach, and what a client is told about them.

Who calls it: the gateway (``tunplug-gateway resource add``, the registry, the firewall, the
gateway's DNS server and control channel) and the client (the control channel's answer, the
routes and DNS it applies). Nothing here touches the network.

A resource is one of:

- ``cidr``: a network or a single address (``10.10.0.0/16``, ``10.10.0.7``, ``fd10::/64``);
- ``dns``: a name (``db.internal``) or a wildcard (``*.corp.example``, which also matches
  ``corp.example`` itself). The client sends queries for these names, and only these, to the
  gateway's DNS server on its tunnel address; the gateway resolves them, gives the client a
  *proxy address* for each address it found (from :data:`PROXY_V4` / :data:`PROXY_V6`, which
  the client routes into the tunnel once, statically) and translates the proxy address back to
  the real one for that client (docs/gateway.md says why);
- ``internet``: everything (``0.0.0.0/0`` and ``::/0``), used only by clients that opt in
  (``--activate-internet-resource``).

A resource may be limited to ports and protocols (``tcp/443``, ``udp/53``, ``tcp/8000-8100``,
``tcp`` for every TCP port, ``icmp``); without a limit every protocol and port passes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tunplug.exceptions import ConfigError

Network = IPv4Network | IPv6Network
Kind = Literal["cidr", "dns", "internet"]
Protocol = Literal["tcp", "udp", "icmp"]

#: TCP port of the control channel, on the gateway's tunnel addresses.
CONTROL_PORT = 51820
#: UDP port of the gateway's DNS server for DNS resources, on its tunnel addresses.
DNS_PORT = 53
#: Proxy addresses the gateway hands out for the addresses of DNS resources.
PROXY_V4 = IPv4Network("100.96.0.0/11")
PROXY_V6 = IPv6Network("fd7a:7470:6c67:d5::/64")
#: The Internet resource's name and networks.
INTERNET = "internet"
INTERNET_NETWORKS: tuple[Network, ...] = (IPv4Network("0.0.0.0/0"), IPv6Network("::/0"))

_RESOURCE_NAME = re.compile(r"[A-Za-z0-9._*:/-]{1,128}")
_GROUP_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_PORT_RULE = re.compile(r"(tcp|udp)(?:/([0-9]{1,5})(?:-([0-9]{1,5}))?)?|icmp")


@dataclass(frozen=True, slots=True)
class PortRule:
    """One protocol, and for TCP/UDP a port range (``first`` to ``last``, both inclusive;
    ``None`` for every port)."""

    protocol: Protocol
    first: int | None = None
    last: int | None = None

    def __str__(self) -> str:
        if self.first is None:
            return self.protocol
        if self.first == self.last:
            return f"{self.protocol}/{self.first}"
        return f"{self.protocol}/{self.first}-{self.last}"


def parse_port_rule(text: str, flag: str = "--port") -> PortRule:
    """``tcp/443``, ``udp/53``, ``tcp/8000-8100``, ``tcp``, ``udp`` or ``icmp``.

    :raises ConfigError: naming ``flag``.
    """
    match = _PORT_RULE.fullmatch(text.strip().lower())
    if match is None:
        raise ConfigError(
            flag, f"{text!r} is not a port rule (tcp/443, udp/53, tcp/8000-8100, tcp, udp, icmp)"
        )
    if match.group(0) == "icmp":
        return PortRule("icmp")
    protocol: Protocol = "tcp" if match.group(1) == "tcp" else "udp"
    if match.group(2) is None:
        return PortRule(protocol)
    first = int(match.group(2))
    last = int(match.group(3)) if match.group(3) else first
    if not 1 <= first <= last <= 65535:
        raise ConfigError(flag, f"{text!r}: ports must be 1-65535, the first not above the last")
    return PortRule(protocol, first, last)


def parse_port_rules(texts: Sequence[str], flag: str = "--port") -> tuple[PortRule, ...]:
    """Several rules (each may itself be a comma-separated list), duplicates dropped."""
    rules: list[PortRule] = []
    for text in texts:
        for item in filter(None, (part.strip() for part in text.split(","))):
            rule = parse_port_rule(item, flag)
            if rule not in rules:
                rules.append(rule)
    return tuple(rules)


def normalize_name(text: str, flag: str) -> str:
    """A DNS name or wildcard in lower case without the final dot.

    :raises ConfigError: not a name (labels of letters, digits, ``-`` and ``_``, at least two
        labels, ``*`` only as the whole first label).
    """
    name = text.strip().lower().removesuffix(".")
    labels = name.split(".")
    body = labels[1:] if labels[0] == "*" else labels
    if (
        len(name) > 253
        or len(body) < 2
        or not all(_LABEL.fullmatch(label) for label in body)
        or body[-1].isdigit()
    ):
        raise ConfigError(
            flag,
            f"{text!r} is not a DNS name or wildcard (e.g. db.internal, *.corp.example; "
            "at least two labels)",
        )
    return name


@dataclass(frozen=True, slots=True)
class Target:
    """What a resource points at: a network, a DNS name pattern, or the Internet."""

    kind: Kind
    network: Network | None = None
    pattern: str | None = None

    def __str__(self) -> str:
        if self.kind == "cidr":
            return str(self.network)
        if self.kind == "dns":
            return str(self.pattern)
        return INTERNET


def parse_target(text: str, flag: str = "TARGET") -> Target:
    """A CIDR, an address (``/32`` or ``/128``), a DNS name or wildcard, or ``internet``.

    :raises ConfigError: naming ``flag``.
    """
    stripped = text.strip()
    if stripped.lower() == INTERNET:
        return Target("internet")
    looks_like_address = bool(re.fullmatch(r"[0-9./]+|[0-9a-fA-F:./]*:[0-9a-fA-F:./]*", stripped))
    if looks_like_address:
        try:
            network = ip_network(stripped)
        except ValueError as exc:
            raise ConfigError(flag, f"{text!r} is not a network in CIDR form: {exc}") from None
        if network.prefixlen == 0:
            raise ConfigError(
                flag, f"{text!r} is everything: add the Internet resource as 'internet' instead"
            )
        return Target("cidr", network=network)
    return Target("dns", pattern=normalize_name(stripped, flag))


def name_matches(pattern: str, name: str) -> bool:
    """Whether the query ``name`` (any case, with or without the final dot) is covered by the
    resource ``pattern`` (a name, or ``*.suffix`` for the suffix and everything under it)."""
    name = name.lower().removesuffix(".")
    if pattern.startswith("*."):
        suffix = pattern[2:]
        return name == suffix or name.endswith("." + suffix)
    return name == pattern


def routing_domain(pattern: str) -> str:
    """The DNS domain a client sends to the gateway for ``pattern`` (``*.x`` -> ``x``)."""
    return pattern.removeprefix("*.")


def validate_resource_name(name: str) -> str:
    """:raises ConfigError: not 1-128 letters, digits or ``. _ - * : /``."""
    if not _RESOURCE_NAME.fullmatch(name):
        raise ConfigError(
            "--name",
            f"{name!r} is not a resource name (1-128 letters, digits, '.', '_', '-', "
            "'*', ':' or '/')",
        )
    return name


def validate_group_name(name: str, flag: str = "GROUP") -> str:
    """:raises ConfigError: not 1-64 letters, digits, ``.``, ``_`` or ``-``."""
    if not _GROUP_NAME.fullmatch(name):
        raise ConfigError(
            flag, f"{name!r} is not a group name (1-64 letters, digits, '.', '_' or '-')"
        )
    return name


@dataclass(frozen=True, slots=True)
class Resource:
    """A resource as the gateway stores it. ``groups`` empty: every client may reach it."""

    name: str
    target: Target
    ports: tuple[PortRule, ...] = ()
    groups: tuple[str, ...] = ()

    @property
    def kind(self) -> Kind:
        return self.target.kind

    def allows(self, client_groups: Sequence[str]) -> bool:
        """Whether a client in ``client_groups`` may reach this resource."""
        return not self.groups or any(group in self.groups for group in client_groups)

    def view(self) -> ResourceView:
        return ResourceView(
            name=self.name,
            kind=self.kind,
            target=str(self.target),
            ports=[str(rule) for rule in self.ports],
        )


# -- what the control channel sends a client ------------------------------------------------


class ResourceView(BaseModel):
    """One resource as a client sees it (no groups: a client sees only its own)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    kind: Kind
    target: str
    ports: list[str] = Field(default_factory=list)


class ClientView(BaseModel):
    """The control channel's answer: everything a client applies to its running tunnel.

    ``routes`` are the networks to route into the tunnel (the client's CIDR resources, the
    proxy ranges when it has DNS resources, and the gateway's own tunnel addresses) — never the
    Internet resource, which the client adds itself when it opted in and ``internet`` is true.
    ``dns_servers`` answer the names under ``dns_domains`` (routing domains: only those
    queries go to them); ``default_dns_servers`` are the gateway's ``--dns`` servers for every
    query (empty when the gateway has none).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    version: int
    routes: list[str]
    dns_servers: list[str] = Field(default_factory=list)
    dns_domains: list[str] = Field(default_factory=list)
    default_dns_servers: list[str] = Field(default_factory=list)
    resources: list[ResourceView] = Field(default_factory=list)
    internet: bool = False

    def networks(self, *, internet: bool = False) -> list[Network]:
        """The routes as networks; with ``internet`` (and the resource offered) also
        ``0.0.0.0/0`` and ``::/0``."""
        networks = [ip_network(route) for route in self.routes]
        if internet and self.internet:
            networks += [n for n in INTERNET_NETWORKS if n not in networks]
        return networks


def client_view(
    version: int,
    resources: Sequence[Resource],
    client_groups: Sequence[str],
    gateway_addresses: tuple[IPv4Address, IPv6Address],
    default_dns: Sequence[IPv4Address | IPv6Address] = (),
) -> ClientView:
    """What the gateway tells one client (in ``client_groups``) about its resources."""
    mine = [resource for resource in resources if resource.allows(client_groups)]
    routes: list[str] = [f"{gateway_addresses[0]}/32", f"{gateway_addresses[1]}/128"]
    domains: list[str] = []
    for resource in mine:
        if resource.kind == "cidr":
            routes.append(str(resource.target.network))
        elif resource.kind == "dns":
            domain = routing_domain(str(resource.target.pattern))
            if domain not in domains:
                domains.append(domain)
    if domains:
        routes += [str(PROXY_V4), str(PROXY_V6)]
    return ClientView(
        version=version,
        routes=list(dict.fromkeys(routes)),
        dns_servers=[str(gateway_addresses[0])] if domains else [],
        dns_domains=domains,
        default_dns_servers=[str(server) for server in default_dns],
        resources=[resource.view() for resource in mine],
        internet=any(resource.kind == "internet" for resource in mine),
    )
