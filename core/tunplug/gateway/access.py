"""Who may reach what: the content of the gateway's nftables access sets, computed from the
registry's clients, resources and groups and from the DNS grants.

Who calls it: the running gateway, through :class:`AccessState` (:mod:`tunplug.gateway.server`
loads each registry change into it; :mod:`tunplug.gateway.dns_server` adds grants and proxy
addresses for DNS resources; :mod:`tunplug.gateway.control` reads the clients' views), which
hands the result to :class:`tunplug.gateway.firewall.Firewall`. The functions are pure; nothing
here runs nft (the firewall is handed in) or touches the network.

The sets (their types are in :func:`tunplug.gateway.firewall.ruleset`), for IPv4 (``4``) and
IPv6 (``6``), each element starting with the client's tunnel address:

- ``access4``: ``client . network`` — every protocol and port;
- ``access4_proto``: ``client . network . protocol`` — every TCP or UDP port, or ICMP;
- ``access4_port``: ``client . network . protocol . ports`` — a TCP or UDP port range;
- ``proxy4`` (a map): ``proxy address : real address`` for DNS resources.

nftables refuses an element of an interval set that starts or ends inside another element of
the same set (measured with nftables 1.0.6 on Linux 6.18: ``client . 10.0.1.0/24`` after
``client . 10.0.0.0/16`` fails with "File exists", the other way round passes), so each set's
elements are made disjoint per client here: networks collapsed, nested networks split, port
ranges merged.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    collapse_addresses,
    ip_network,
)
from typing import Protocol

import anyio
import anyio.to_thread

from tunplug.gateway.dns_server import ProxyTable
from tunplug.gateway.registry import ClientRecord
from tunplug.resources import (
    INTERNET_NETWORKS,
    ClientView,
    PortRule,
    Resource,
    client_view,
    name_matches,
)

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network
#: Set (and map) name -> its elements as nft text.
Contents = dict[str, frozenset[str]]

#: Above this many clients to compute, :meth:`AccessState.apply` computes in a worker thread
#: (10,000 clients with three resources: 0.24 s).
OFFLOAD_CLIENTS = 500

ACCESS_SETS = (
    "access4",
    "access4_proto",
    "access4_port",
    "access6",
    "access6_proto",
    "access6_port",
)
PROXY_MAPS = ("proxy4", "proxy6")


@dataclass(frozen=True, slots=True)
class Grant:
    """One client may reach ``network`` on ``ports`` (empty: every protocol and port)."""

    client: Address
    network: Network
    ports: tuple[PortRule, ...] = ()


@dataclass(frozen=True, slots=True)
class DnsGrant:
    """A client (by public key) asked the gateway's DNS server for ``name``, which resource
    ``resource`` covers, and was answered with ``proxy``."""

    client: bytes
    resource: str
    name: str
    proxy: Address


def resource_grants(
    client: ClientRecord, resources: Sequence[Resource], groups: Sequence[str]
) -> list[Grant]:
    """What a client in ``groups`` may reach through its CIDR resources and the Internet
    resource (DNS resources are granted address by address, see :func:`dns_access`)."""
    grants = []
    for resource in resources:
        if not resource.allows(groups):
            continue
        networks: Sequence[Network] = ()
        if resource.kind == "cidr" and resource.target.network is not None:
            networks = (resource.target.network,)
        elif resource.kind == "internet":
            networks = INTERNET_NETWORKS
        for network in networks:
            address = client.address_v4 if network.version == 4 else client.address_v6
            grants.append(Grant(address, network, resource.ports))
    return grants


def valid_dns_grants(
    grants: Iterable[DnsGrant],
    clients: Mapping[bytes, ClientRecord],
    resources: Sequence[Resource],
    client_groups: Mapping[str, Sequence[str]],
) -> set[DnsGrant]:
    """The grants that still hold: the client is active, and the resource still exists, still
    covers the name and still allows the client's groups."""
    by_name = {resource.name: resource for resource in resources if resource.kind == "dns"}
    kept = set()
    for grant in grants:
        client = clients.get(grant.client)
        resource = by_name.get(grant.resource)
        if (
            client is not None
            and resource is not None
            and name_matches(str(resource.target.pattern), grant.name)
            and resource.allows(client_groups.get(client.name, ()))
        ):
            kept.add(grant)
    return kept


def dns_access(
    client: ClientRecord, grants: Iterable[DnsGrant], resources: Sequence[Resource]
) -> list[Grant]:
    """The client's DNS grants as grants of its proxy addresses (with the resource's ports)."""
    by_name = {resource.name: resource for resource in resources}
    result = []
    for grant in grants:
        resource = by_name.get(grant.resource)
        if resource is None or grant.client != client.public_key:
            continue
        address = client.address_v4 if grant.proxy.version == 4 else client.address_v6
        result.append(Grant(address, ip_network(grant.proxy), resource.ports))
    return result


def access_contents(grants: Iterable[Grant]) -> Contents:
    """The elements of every access set for ``grants``, disjoint within each set."""
    shapes: dict[Address, set[tuple[Network, tuple[PortRule, ...]]]] = defaultdict(set)
    for grant in grants:
        if grant.network.version == grant.client.version:
            shapes[grant.client].add((grant.network, grant.ports))
    elements: dict[str, set[str]] = {name: set() for name in ACCESS_SETS}
    for client, shape in shapes.items():
        prefix = str(client)
        for name, suffix in _elements(frozenset(shape)):
            elements[name].add(f"{prefix} . {suffix}")
    return {name: frozenset(items) for name, items in elements.items()}


# Clients in the same groups have the same shape: 10,000 clients and three resources took
# 0.86 s without this cache, 0.1 s with it.
@functools.lru_cache(maxsize=4096)
def _elements(
    shape: frozenset[tuple[Network, tuple[PortRule, ...]]],
) -> tuple[tuple[str, str], ...]:
    """(set name, element without the client) of one client's grants (one IP version)."""
    all_protocols: list[Network] = []
    whole_protocol: dict[str, list[Network]] = defaultdict(list)
    port_ranges: dict[str, list[tuple[Network, int, int]]] = defaultdict(list)
    version = 4
    for network, ports in shape:
        version = network.version
        if not ports:
            all_protocols.append(network)
        for rule in ports:
            protocol = _nft_protocol(rule, version)
            if rule.first is None or rule.last is None:
                whole_protocol[protocol].append(network)
            else:
                port_ranges[protocol].append((network, rule.first, rule.last))
    result = [(f"access{version}", _net(network)) for network in _collapse(all_protocols)]
    for protocol, networks in whole_protocol.items():
        result += [
            (f"access{version}_proto", f"{_net(network)} . {protocol}")
            for network in _collapse(networks)
        ]
    for protocol, ranges in port_ranges.items():
        for network, first, last in _disjoint_ranges(ranges):
            ports_text = str(first) if first == last else f"{first}-{last}"
            result.append((f"access{version}_port", f"{_net(network)} . {protocol} . {ports_text}"))
    return tuple(result)


def proxy_contents(proxies: Mapping[Address, Address]) -> Contents:
    """The ``proxy4`` and ``proxy6`` map elements (``proxy : real``)."""
    return {
        f"proxy{version}": frozenset(
            f"{proxy} : {real}" for proxy, real in proxies.items() if proxy.version == version
        )
        for version in (4, 6)
    }


def merge_contents(parts: Iterable[Mapping[str, frozenset[str]]]) -> Contents:
    """The union, set by set, of several :data:`Contents`."""
    merged: dict[str, set[str]] = defaultdict(set)
    for part in parts:
        for name, items in part.items():
            merged[name] |= items
    return {name: frozenset(items) for name, items in merged.items()}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the running gateway reads from the registry when its version changes."""

    version: int
    clients: list[ClientRecord]
    resources: list[Resource]
    client_groups: dict[str, tuple[str, ...]]


class SetWriter(Protocol):
    """Where the contents go (:class:`tunplug.gateway.firewall.Firewall`); blocking."""

    def update(self, contents: Mapping[str, frozenset[str]]) -> bool: ...


class AccessState:
    """The running gateway's one owner of who is served and may reach what: the clients,
    resources and groups of registry version :attr:`version`, the DNS grants and the proxy
    addresses. :meth:`load` takes a new snapshot, :meth:`grant` adds DNS grants, :meth:`apply`
    brings the firewall's sets in line (one call at a time). The control channel and the DNS
    server read it (:meth:`view`, :meth:`client_at`, :meth:`dns_resources`): no SQLite per
    request.
    """

    def __init__(
        self,
        gateway_addresses: tuple[IPv4Address, IPv6Address],
        default_dns: Sequence[Address] = (),
        firewall: SetWriter | None = None,
    ) -> None:
        self.gateway_addresses = gateway_addresses
        self.default_dns = tuple(default_dns)
        self.firewall = firewall
        self.version = -1
        self.clients: dict[bytes, ClientRecord] = {}
        self.resources: list[Resource] = []
        self.client_groups: dict[str, tuple[str, ...]] = {}
        self.proxies = ProxyTable()
        self.dns_grants: dict[bytes, set[DnsGrant]] = {}
        self._by_address: dict[str, ClientRecord] = {}
        self._contents: dict[bytes, Contents] = {}
        self._changed: anyio.Event | None = None
        self._apply_lock: anyio.Lock | None = None
        #: Changes with every :meth:`load` and new grant (a computation in a thread that saw
        #: an older generation is not kept).
        self._generation = 0

    def load(self, snapshot: Snapshot) -> None:
        """Serve ``snapshot`` from now on (DNS grants that no longer hold are dropped); then
        :meth:`apply`, then :meth:`notify_changed`."""
        self._generation += 1
        clients = {client.public_key: client for client in snapshot.clients}
        if snapshot.resources != self.resources:
            self._contents.clear()
        for key in list(self._contents):
            old, new = self.clients.get(key), clients.get(key)
            if (
                old is None
                or new is None
                or (old.address_v4, old.address_v6) != (new.address_v4, new.address_v6)
                or self.client_groups.get(old.name) != snapshot.client_groups.get(new.name)
            ):
                del self._contents[key]
        self.clients = clients
        self._by_address = {
            str(address): client
            for client in snapshot.clients
            for address in (client.address_v4, client.address_v6)
        }
        self.resources = snapshot.resources
        self.client_groups = snapshot.client_groups
        self.version = snapshot.version
        kept = valid_dns_grants(
            (grant for grants in self.dns_grants.values() for grant in grants),
            self.clients,
            self.resources,
            self.client_groups,
        )
        grants: dict[bytes, set[DnsGrant]] = {}
        for grant in kept:
            grants.setdefault(grant.client, set()).add(grant)
        for key, old_grants in self.dns_grants.items():
            if grants.get(key, set()) != old_grants:
                self._contents.pop(key, None)
        self.dns_grants = grants

    # -- reading (control channel, DNS server) ----------------------------------------------
    def client_at(self, address: str) -> ClientRecord | None:
        """The client whose tunnel address is ``address`` (as ``str(ip_address(...))``)."""
        return self._by_address.get(address)

    def groups_of(self, client: ClientRecord) -> tuple[str, ...]:
        return self.client_groups.get(client.name, ())

    def dns_resources(self, client: ClientRecord) -> list[Resource]:
        groups = self.groups_of(client)
        return [r for r in self.resources if r.kind == "dns" and r.allows(groups)]

    def view(self, address: str) -> ClientView | None:
        """What the control channel tells the client at ``address`` (None: not a client)."""
        client = self.client_at(address)
        if client is None:
            return None
        return client_view(
            self.version,
            self.resources,
            self.groups_of(client),
            self.gateway_addresses,
            self.default_dns,
        )

    async def wait_changed(self, since: int) -> None:
        while self.version == since:
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def notify_changed(self) -> None:
        """Wake the control channel's long polls."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    # -- the firewall's sets ----------------------------------------------------------------
    def contents(self) -> Contents:
        """Every access set and proxy map as they must be now (computed per client, kept
        until its grants or the registry change)."""
        self._contents.update(_client_contents(self._missing(), self.resources))
        empty = {name: frozenset[str]() for name in ACCESS_SETS}
        return merge_contents(
            [empty, proxy_contents(self.proxies.mapping()), *self._contents.values()]
        )

    def _missing(self) -> list[tuple[ClientRecord, tuple[str, ...], frozenset[DnsGrant]]]:
        """The clients whose contents are not cached, with what they are computed from."""
        return [
            (client, self.groups_of(client), frozenset(self.dns_grants.get(key, ())))
            for key, client in self.clients.items()
            if key not in self._contents
        ]

    async def apply(self) -> None:
        """Bring the firewall's sets in line with :meth:`contents` (nft in a worker thread;
        many clients' contents too, so that a resource change does not stall the tunnel).

        :raises FirewallError: nft refused.
        """
        if self._apply_lock is None:
            self._apply_lock = anyio.Lock()
        async with self._apply_lock:
            missing = self._missing()
            while len(missing) > OFFLOAD_CLIENTS:
                generation = self._generation
                computed = await anyio.to_thread.run_sync(_client_contents, missing, self.resources)
                if generation == self._generation:  # else computed from what changed since
                    self._contents.update(computed)
                missing = self._missing()
            contents = self.contents()
            if self.firewall is not None:
                await anyio.to_thread.run_sync(self.firewall.update, contents)

    async def grant(
        self,
        client: ClientRecord,
        resources: Sequence[Resource],
        name: str,
        reals: Sequence[Address],
    ) -> list[tuple[Address, Address, bool]]:
        """:meth:`tunplug.gateway.dns_server.DnsAuthority.grant`: installed (:meth:`apply`)
        before it returns."""
        mine = self.dns_grants.setdefault(client.public_key, set())
        had = {grant.proxy for grant in mine}
        known = len(self.proxies)
        result, fresh = [], set()
        for real in reals:
            proxy = self.proxies.proxy_for(real)
            fresh |= {DnsGrant(client.public_key, r.name, name, proxy) for r in resources} - mine
            result.append((real, proxy, proxy not in had))
        if fresh or len(self.proxies) != known:
            self._generation += 1
            mine |= fresh
            self._contents.pop(client.public_key, None)
            await self.apply()
        return result


def _client_contents(
    clients: Sequence[tuple[ClientRecord, tuple[str, ...], frozenset[DnsGrant]]],
    resources: Sequence[Resource],
) -> dict[bytes, Contents]:
    """Each client's access contents, from its groups and DNS grants (pure: runs in a worker
    thread for many clients)."""
    result = {}
    for client, groups, grants in clients:
        granted = resource_grants(client, resources, groups)
        granted += dns_access(client, grants, resources)
        result[client.public_key] = access_contents(granted)
    return result


def _nft_protocol(rule: PortRule, version: int) -> str:
    if rule.protocol == "icmp":
        return "icmp" if version == 4 else "ipv6-icmp"
    return rule.protocol


def _net(network: Network) -> str:
    """``10.0.0.7`` for a single address (as nft lists it), else the CIDR."""
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def _collapse(networks: Sequence[Network]) -> list[Network]:
    if len(networks) < 2:
        return list(networks)
    return list(collapse_addresses(networks))  # type: ignore[type-var]


def _disjoint_ranges(ranges: Sequence[tuple[Network, int, int]]) -> list[tuple[Network, int, int]]:
    """(network, first port, last port) elements with no two overlapping: a network nested in
    another is cut out of it (and gets the outer one's ports too), then each network's port
    ranges are merged, and networks with the same ports collapsed again."""
    ports: dict[Network, list[tuple[int, int]]] = defaultdict(list)
    for network, first, last in ranges:
        ports[network].append((first, last))
    while True:
        nested = next(
            (
                (outer, inner)
                for outer in ports
                for inner in ports
                if outer != inner and inner.subnet_of(outer)  # type: ignore[arg-type]
            ),
            None,
        )
        if nested is None:
            break
        outer, inner = nested
        outer_ports = ports.pop(outer)
        ports[inner] += outer_ports
        for piece in outer.address_exclude(inner):  # type: ignore[arg-type]
            ports[piece] += outer_ports
    by_ports: dict[tuple[tuple[int, int], ...], list[Network]] = defaultdict(list)
    for network, network_ports in ports.items():
        by_ports[_merge_ranges(network_ports)].append(network)
    return [
        (network, first, last)
        for merged, networks in by_ports.items()
        for network in _collapse(networks)
        for first, last in merged
    ]


def _merge_ranges(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return tuple(merged)
