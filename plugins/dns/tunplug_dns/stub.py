"""A small forwarding DNS resolver on a loopback address: split DNS for ``/etc/resolv.conf``.

Who calls it: the ``etc-resolv-conf`` manager (:mod:`tunplug_dns.resolv_conf`), while a tunnel
has routing-only domains (a gateway's DNS resources). resolv.conf cannot send some names to one
server and the rest to another, so the file names this stub, and the stub does the split:

- a query for a name under a routing domain (``corp.example``: the domain itself and every
  name under it) goes to the routing servers (the gateway, through the tunnel);
- every other query goes to the default servers: the tunnel's servers for every name when it
  has some, else the nameservers of the resolv.conf the manager replaced. Those names never
  cross the tunnel.

Queries and answers are forwarded as DNS messages (dnspython wire format); the stub listens
on UDP and TCP and asks upstream over UDP, over TCP only when a TCP client's answer came back
truncated. When no upstream answers, the client gets SERVFAIL. One thread waits on the
sockets; each query is forwarded from a small thread pool, so one slow upstream does not hold
the others up. :data:`DEFAULT_ADDRESS` is on loopback but not systemd-resolved's 127.0.0.53.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode

from tunplug_dns._common import DnsError

log = logging.getLogger(__name__)

#: Where the stub listens by default (port 53: resolv.conf has no port).
DEFAULT_ADDRESS = ("127.0.0.153", 53)
#: How long one upstream gets to answer before the next is tried.
UPSTREAM_TIMEOUT = 2.0
#: A TCP client that sends nothing for this long is disconnected.
TCP_IDLE_TIMEOUT = 10.0
#: Queries forwarded at the same time.
WORKERS = 16
#: The largest UDP query accepted (EDNS allows up to 65535; clients send far less).
MAX_UDP_QUERY = 4096

Upstream = tuple[str, int]


@dataclass(frozen=True, slots=True)
class StubRoutes:
    """Which upstreams answer which names."""

    routing_domains: tuple[str, ...]
    routing_servers: tuple[Upstream, ...]
    default_servers: tuple[Upstream, ...]

    def upstreams(self, qname: dns.name.Name) -> tuple[Upstream, ...]:
        """The servers for a query name: the routing servers under a routing domain."""
        for domain in self.routing_domains:
            if qname.is_subdomain(dns.name.from_text(domain)):
                return self.routing_servers
        return self.default_servers


class StubResolver:
    """Listens on ``address`` (UDP and TCP) and forwards each query per :class:`StubRoutes`.

    :meth:`start` binds (``DnsError`` when it cannot) and starts the threads; :meth:`stop`
    closes the sockets and waits for them. Both are for a worker thread, not the event loop.
    """

    def __init__(
        self, routes: StubRoutes, address: Upstream = DEFAULT_ADDRESS, *, timeout: float = 0.0
    ) -> None:
        self.routes = routes
        self.address = address
        self.timeout = timeout or UPSTREAM_TIMEOUT
        self._stop_r, self._stop_w = socket.socketpair()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="tunplug-dns-stub")

    def start(self) -> None:
        host, port = self.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            udp.bind((host, port))
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((host, udp.getsockname()[1]))  # the same port when port 0 chose one
            tcp.listen(64)
        except OSError as exc:
            udp.close()
            tcp.close()
            raise DnsError(
                f"cannot listen on {host} port {port} for the DNS stub: {exc.strerror}"
            ) from exc
        self._udp, self._tcp = udp, tcp
        self.address = (host, udp.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="tunplug-dns-stub", daemon=True)
        self._thread.start()
        log.info(
            "DNS stub on %s port %d: %s to %s, everything else to %s",
            host,
            self.address[1],
            " ".join(self.routes.routing_domains),
            _upstreams(self.routes.routing_servers),
            _upstreams(self.routes.default_servers) or "nobody (SERVFAIL)",
        )

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._stop_w.send(b"x")
        if self._thread is not None:
            self._thread.join(5.0)
        self._pool.shutdown(wait=True, cancel_futures=True)
        for sock in (self._udp, self._tcp, self._stop_r, self._stop_w):
            if sock is not None:
                sock.close()

    # -- the threads --------------------------------------------------------------------------
    def _serve(self) -> None:
        assert self._udp is not None and self._tcp is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._udp, selectors.EVENT_READ)
            selector.register(self._tcp, selectors.EVENT_READ)
            selector.register(self._stop_r, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is self._stop_r:
                        return
                    try:
                        if key.fileobj is self._udp:
                            data, client = self._udp.recvfrom(MAX_UDP_QUERY)
                            self._pool.submit(self._answer_udp, data, client)
                        else:
                            connection, _ = self._tcp.accept()
                            self._pool.submit(self._answer_tcp, connection)
                    except OSError as exc:
                        log.debug("DNS stub: %s", exc)
                    except RuntimeError:  # the pool is shut down: stopping
                        return

    def _answer_udp(self, data: bytes, client: tuple[str, int]) -> None:
        answer = self._forward(data, tcp=False)
        if answer is not None and self._udp is not None:
            with contextlib.suppress(OSError):
                self._udp.sendto(answer, client)

    def _answer_tcp(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(TCP_IDLE_TIMEOUT)
            while True:
                try:
                    header = _recv_exactly(connection, 2)
                    if header is None:
                        return
                    data = _recv_exactly(connection, int.from_bytes(header, "big"))
                    if data is None:
                        return
                    answer = self._forward(data, tcp=True)
                    if answer is None:
                        return
                    connection.sendall(len(answer).to_bytes(2, "big") + answer)
                except OSError:
                    return

    def _forward(self, data: bytes, *, tcp: bool) -> bytes | None:
        """The answer to one query in wire format (``None``: not a query, dropped)."""
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        if query.flags & dns.flags.QR or len(query.question) != 1:
            return _reply(query, dns.rcode.FORMERR)
        upstreams = self.routes.upstreams(query.question[0].name)
        for host, port in upstreams:
            try:
                # UDP first, also for a TCP client; TCP upstream only for a truncated answer.
                response = dns.query.udp(query, host, timeout=self.timeout, port=port)
                if tcp and response.flags & dns.flags.TC:
                    response = dns.query.tcp(query, host, timeout=self.timeout, port=port)
            except (dns.exception.DNSException, OSError) as exc:
                log.debug("DNS stub: %s port %d did not answer: %s", host, port, exc)
                continue
            if tcp:
                return response.to_wire()
            return response.to_wire(max_size=_udp_limit(query), prefer_truncation=True)
        return _reply(query, dns.rcode.SERVFAIL)


def _reply(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    return response.to_wire()


def _udp_limit(query: dns.message.Message) -> int:
    return max(512, query.payload) if query.edns >= 0 else 512


def _recv_exactly(connection: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _upstreams(servers: Sequence[Upstream]) -> str:
    return ", ".join(host if port == 53 else f"{host} port {port}" for host, port in servers)
