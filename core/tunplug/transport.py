"""Datagram transports: how encrypted WireGuard packets leave and enter the machine.

Who calls it: the tunnel engine (:mod:`tunplug.engine`). :class:`UdpTransport` is the real UDP
socket; :class:`tunplug.testing.MemoryNetwork` hands out in-memory transports with the same
contract for tests and the in-process demo.
"""

from __future__ import annotations

import errno
import socket
from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import anyio

from tunplug.exceptions import ClosedResource, map_os_errors

#: A peer's UDP address: (IP address as text, port).
Endpoint = tuple[str, int]
#: One datagram and where it came from or goes to.
Datagram = tuple[bytes, Endpoint]

#: wireguard-go's socket buffer size; needs root (SO_*BUFFORCE) beyond net.core.*mem_max.
SOCKET_BUFFER_BYTES = 7 << 20
_MAX_DATAGRAM = 65535


class DatagramTransport(ABC):
    """A bound datagram socket that moves batches.

    :meth:`recv_many` waits for at least one datagram and returns up to ``max_datagrams``;
    :meth:`send_many` sends a batch, waiting (not dropping) while the socket buffer is full.
    Errors: :class:`~tunplug.exceptions.ClosedResource` once closed.
    """

    @property
    @abstractmethod
    def local_endpoint(self) -> Endpoint:
        """The address and port this transport is bound to."""

    @abstractmethod
    async def recv_many(self, max_datagrams: int = 100) -> list[Datagram]:
        """Wait for at least one datagram, then return up to ``max_datagrams``."""

    @abstractmethod
    async def send_many(self, datagrams: Sequence[Datagram]) -> None:
        """Send every datagram, in order."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close the socket. Idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def normalize_endpoint(address: tuple[str, int] | tuple[str, int, int, int]) -> Endpoint:
    """Reduce a socket address (IPv6 ones have four fields) to ``(host, port)``.

    IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) become plain IPv4 text, so a peer has one
    spelling whichever socket family saw it.
    """
    host, port = address[0], address[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port


class UdpTransport(DatagramTransport):
    """A non-blocking dual-stack UDP socket driven by the event loop.

    Bound to ``[::]:port`` with IPv6-only off, so it serves IPv4 and IPv6 peers, unless ``host``
    is an IPv4 address. Socket buffers are raised to :data:`SOCKET_BUFFER_BYTES` (forced when
    privileged).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._closed = False
        host, port = normalize_endpoint(sock.getsockname())
        self._local: Endpoint = (host, port)

    @classmethod
    def bind(cls, port: int = 0, host: str | None = None, *, fwmark: int | None = None) -> Self:
        family = socket.AF_INET if host and ":" not in host else socket.AF_INET6
        with map_os_errors(f"bind UDP port {port}"):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                _raise_buffers(sock)
                if fwmark is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, fwmark)
                sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
        return cls(sock)

    @property
    def local_endpoint(self) -> Endpoint:
        return self._local

    def _target(self, endpoint: Endpoint) -> tuple[str, int]:
        host, port = endpoint
        if self._sock.family == socket.AF_INET6 and ":" not in host:
            return "::ffff:" + host, port
        return host, port

    async def recv_many(self, max_datagrams: int = 100) -> list[Datagram]:
        sock = self._sock
        out: list[Datagram] = []
        while True:
            if self._closed:
                raise ClosedResource("UDP transport is closed")
            while len(out) < max_datagrams:
                try:
                    data, address = sock.recvfrom(_MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                        continue  # ICMP errors from an earlier send; the peer may come back
                    with map_os_errors("receive from the UDP socket"):
                        raise
                out.append((data, normalize_endpoint(address)))
            if out:
                return out
            await anyio.wait_readable(sock)

    async def send_many(self, datagrams: Sequence[Datagram]) -> None:
        sock = self._sock
        for data, endpoint in datagrams:
            target = self._target(endpoint)
            while True:
                if self._closed:
                    raise ClosedResource("UDP transport is closed")
                try:
                    sock.sendto(data, target)
                    break
                except (BlockingIOError, InterruptedError):
                    await anyio.wait_writable(sock)
                except OSError as exc:
                    if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                        break  # the peer is unreachable now; WireGuard's timers retry
                    with map_os_errors(f"send to {endpoint[0]}:{endpoint[1]}"):
                        raise

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self._sock)
            self._sock.close()


def _raise_buffers(sock: socket.socket) -> None:
    for forced, plain in (
        (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
        (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF),
    ):
        try:
            if forced is None:
                raise PermissionError
            sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER_BYTES)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER_BYTES)
