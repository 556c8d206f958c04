"""The gateway's DNS server for DNS resources: real addresses behind proxy addresses.

Who calls it: :func:`tunplug.gateway.server.run_gateway` starts :meth:`DnsServer.serve` as a
background task once the tunnel is up. Clients send it the queries under their DNS resources'
domains (the control channel tells them which), to UDP port 53 of the gateway's tunnel address.

For a query from a client's tunnel address:

- a name none of the client's DNS resources covers: ``REFUSED``;
- A or AAAA of a covered name: resolved upstream (``--dns-upstream``, else the nameservers of
  ``/etc/resolv.conf``, read once at start), each real address given its stable proxy address
  (:class:`ProxyTable`), the nftables map element proxy -> real and
  the client's access to the proxy (with the resource's ports) installed, and only then the
  answer sent: the proxy addresses, TTL at most :data:`MAX_TTL`. The CNAME chain is not shown;
- another type of a covered name: ``NOERROR`` without records; ``NXDOMAIN`` passes through;
  no upstream answering: ``SERVFAIL``;
- a query from any other source: no answer.

Proxy addresses rather than real ones: the client routes the proxy ranges into the tunnel once,
so no route has to follow a DNS answer (no race between the answer and the route), and it works
the same when the client's resolver (systemd-resolved, a stub) never shows it the answer.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path
from typing import Protocol

import anyio
import anyio.abc
import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tunplug.dns import resolv_conf_nameservers
from tunplug.exceptions import ConfigError, TunplugError
from tunplug.gateway.control import bind_both
from tunplug.gateway.registry import ClientRecord
from tunplug.gateway.validation import parse_port
from tunplug.resources import DNS_PORT, PROXY_V4, PROXY_V6, Resource, name_matches

log = logging.getLogger(__name__)

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

#: The longest TTL given to a proxy answer (seconds): clients ask again soon enough to follow a
#: resource whose addresses change.
MAX_TTL = 60
#: One upstream query's timeout (seconds), and how many rounds over the servers.
UPSTREAM_TIMEOUT = 2.0
UPSTREAM_ROUNDS = 2
#: Queries answered at once; more are dropped (the client asks again).
MAX_IN_FLIGHT = 256


class DnsAuthority(Protocol):
    """What the DNS server needs from the running gateway."""

    def client_at(self, address: str) -> ClientRecord | None:
        """The active client whose tunnel address is ``address``."""
        ...

    def dns_resources(self, client: ClientRecord) -> list[Resource]:
        """The DNS resources ``client`` may reach now."""
        ...

    async def grant(
        self,
        client: ClientRecord,
        resources: Sequence[Resource],
        name: str,
        reals: Sequence[Address],
    ) -> list[tuple[Address, Address, bool]]:
        """Give ``client`` access to ``reals`` (answers for ``name``, covered by ``resources``)
        through their proxy addresses, installed before returning: ``(real, proxy, new)``
        for each, ``new`` when the client had no access to that proxy before.

        :raises LookupError: the proxy range is used up.
        """
        ...


class ProxyTable:
    """Stable proxy addresses for the real addresses of DNS resources: each real address gets
    the next free address of :data:`~tunplug.resources.PROXY_V4` (or ``PROXY_V6``) the first
    time it is seen, and keeps it for the table's life (the gateway's run)."""

    def __init__(self, pool_v4: IPv4Network = PROXY_V4, pool_v6: IPv6Network = PROXY_V6) -> None:
        self._pools: dict[int, Iterator[Address]] = {
            4: iter(pool_v4.hosts()),
            6: iter(pool_v6.hosts()),
        }
        self._by_real: dict[Address, Address] = {}
        self._by_proxy: dict[Address, Address] = {}

    def proxy_for(self, real: Address) -> Address:
        """The proxy address of ``real`` (allocated now if new).

        :raises LookupError: the proxy range of that IP version is used up.
        """
        proxy = self._by_real.get(real)
        if proxy is None:
            proxy = next(self._pools[real.version], None)
            if proxy is None:
                raise LookupError(f"no proxy address left for {real}")
            self._by_real[real] = proxy
            self._by_proxy[proxy] = real
        return proxy

    def real(self, proxy: Address) -> Address | None:
        return self._by_proxy.get(proxy)

    def mapping(self) -> dict[Address, Address]:
        """Proxy address -> real address, every one allocated so far."""
        return dict(self._by_proxy)

    def __len__(self) -> int:
        return len(self._by_proxy)


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str
    port: int = DNS_PORT

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DNS_PORT else f"{host}:{self.port}"


def parse_upstreams(text: str, flag: str = "--dns-upstream") -> list[Upstream]:
    """``10.0.0.53, fd00::53, 10.0.0.54:5353, [fd00::54]:5353``. :raises ConfigError:"""
    servers = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, port = item, DNS_PORT
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            if rest:
                port = (parse_port(rest[1:]) if rest.startswith(":") else None) or -1
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
            port = parse_port(port_text) or -1
        try:
            ip_address(host)
        except ValueError:
            port = -1
        if port == -1:
            raise ConfigError(
                flag, f"{item!r} is not a DNS server address (10.0.0.53, fd00::53, host:port)"
            )
        servers.append(Upstream(host, port))
    return servers


def resolv_conf_servers(path: Path = Path("/etc/resolv.conf")) -> list[Upstream]:
    """The ``nameserver`` lines of ``path`` (none when it cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [Upstream(server) for server in resolv_conf_nameservers(text)]


class Resolver:
    """Queries to the upstream servers, in order, with :data:`UPSTREAM_ROUNDS` rounds."""

    def __init__(self, servers: Sequence[Upstream], timeout: float = UPSTREAM_TIMEOUT) -> None:
        self.servers = list(servers)
        self.timeout = timeout

    async def resolve(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> dns.message.Message | None:
        """The first answer that is NOERROR or NXDOMAIN (None: no server gave one)."""
        query = dns.message.make_query(name, rdtype)
        failure = "no upstream DNS server (set --dns-upstream)"
        for _ in range(UPSTREAM_ROUNDS if self.servers else 0):
            for server in self.servers:
                try:
                    response, _ = await dns.asyncquery.udp_with_fallback(
                        query, server.host, timeout=self.timeout, port=server.port
                    )
                except (dns.exception.DNSException, OSError) as exc:
                    failure = f"{server}: {exc or type(exc).__name__}"
                    continue
                if response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                    return response
                failure = f"{server}: {dns.rcode.to_text(response.rcode())}"
        log.warning(
            "DNS resources: %s %s not resolved: %s", name, dns.rdatatype.to_text(rdtype), failure
        )
        return None


class DnsServer:
    """Answers clients' queries for their DNS resources (see the module's docstring).

    ``forbidden``: networks an upstream answer must not lead to (the clients' subnets, the
    proxy ranges); such addresses are left out of the answer.
    """

    def __init__(
        self, authority: DnsAuthority, resolver: Resolver, forbidden: Sequence[Network] = ()
    ) -> None:
        self.authority = authority
        self.resolver = resolver
        self.forbidden = list(forbidden)

    async def handle(self, wire: bytes, source: str) -> bytes | None:
        """The answer to the query ``wire`` from ``source`` (None: no answer)."""
        client = self.authority.client_at(source)
        if client is None:
            return None
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            response.set_rcode(dns.rcode.NOTIMP if query.question else dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        matching = [
            resource
            for resource in self.authority.dns_resources(client)
            if name_matches(str(resource.target.pattern), name)
        ]
        if not matching or question.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
            return response.to_wire()
        if question.rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA):
            return response.to_wire()
        upstream = await self.resolver.resolve(question.name, question.rdtype)
        if upstream is None:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        if upstream.rcode() != dns.rcode.NOERROR:
            response.set_rcode(upstream.rcode())
            return response.to_wire()
        reals, ttl = self._addresses(upstream, question.rdtype)
        try:
            granted = await self.authority.grant(client, matching, name, reals)
        except (LookupError, TunplugError) as exc:
            log.error("client %s: %s not answered: %s", client.name, name, exc)
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        for real, proxy, new in granted:
            if new:
                log.info(
                    "client %s: %s -> %s as %s (resource %s)",
                    client.name,
                    name,
                    real,
                    proxy,
                    ", ".join(resource.name for resource in matching),
                )
        if granted:
            response.answer.append(
                dns.rrset.from_text_list(
                    question.name,
                    ttl,
                    dns.rdataclass.IN,
                    question.rdtype,
                    list(dict.fromkeys(str(proxy) for _, proxy, _ in granted)),
                )
            )
        return response.to_wire()

    def _addresses(
        self, upstream: dns.message.Message, rdtype: dns.rdatatype.RdataType
    ) -> tuple[list[Address], int]:
        """The usable addresses of type ``rdtype`` in the answer (through its CNAMEs), and the
        TTL to give (the chain's smallest, at most :data:`MAX_TTL`)."""
        reals: list[Address] = []
        ttl = MAX_TTL
        for rrset in upstream.answer:
            ttl = min(ttl, rrset.ttl)
            if rrset.rdtype != rdtype:
                continue
            for rdata in rrset:
                real = ip_address(rdata.address)
                if self._usable(real) and real not in reals:
                    reals.append(real)
        return reals, ttl

    def _usable(self, real: Address) -> bool:
        if (
            real.is_loopback
            or real.is_unspecified
            or real.is_multicast
            or real.is_link_local
            or any(real in network for network in self.forbidden)
        ):
            log.warning("DNS resources: upstream answered %s, which cannot be a resource", real)
            return False
        return True

    async def serve(
        self,
        addresses: Sequence[Address],
        port: int = DNS_PORT,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer on UDP ``port`` of ``addresses`` (the first must bind) until cancelled."""
        sockets = bind_both(socket.SOCK_DGRAM, addresses, port, "DNS server")
        endpoints = [await anyio.abc.UDPSocket.from_socket(sock) for sock in sockets]
        servers = ", ".join(map(str, self.resolver.servers)) or "none"
        log.info(
            "DNS server for DNS resources on %s port %d (upstream: %s)",
            ", ".join(str(address) for address in addresses[: len(sockets)]),
            port,
            servers,
        )
        limiter = anyio.CapacityLimiter(MAX_IN_FLIGHT)

        async def reply(endpoint: anyio.abc.UDPSocket, wire: bytes, host: str, port: int) -> None:
            async with limiter:
                answer = await self.handle(wire, host.split("%", 1)[0])
                if answer is not None:
                    try:
                        await endpoint.sendto(answer, host, port)
                    except OSError as exc:
                        log.debug("DNS answer to %s not sent: %s", host, exc)

        async def receive(endpoint: anyio.abc.UDPSocket) -> None:
            async with endpoint:
                async for wire, (host, source_port) in endpoint:
                    if limiter.available_tokens < 1:
                        continue  # overloaded: the client asks again
                    tasks.start_soon(reply, endpoint, wire, str(host), source_port)

        async with anyio.create_task_group() as tasks:
            for endpoint in endpoints:
                tasks.start_soon(receive, endpoint)
            task_status.started()
