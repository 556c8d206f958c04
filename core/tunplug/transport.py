"""Datagram transports: how encrypted WireGuard packets leave and enter the machine.

Who calls it: the tunnel engine (:mod:`tunplug.engine`). :class:`UdpTransport` is the real UDP
socket; :class:`tunplug.testing.MemoryNetwork` hands out in-memory transports with the same
contract for tests and the in-process demo.
"""

from __future__ import annotations

import errno
import logging
import platform
import socket
import sys
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Self

import anyio
from anyio.abc import AsyncResource

from tunplug import socket_filter
from tunplug.exceptions import ClosedResource, map_os_errors
from tunplug.udp_offload import (
    GRO_BUFFER_BYTES,
    GSO_REFUSED_ERRNOS,
    UdpStats,
    enable_gro,
    gro_control_space,
    gro_segment_size,
    gso_runs,
    probe_gso,
    segment_control,
    split_segments,
)
from tunplug.wireguard.endpoint import Endpoint as Endpoint

if TYPE_CHECKING:
    from tunplug.wireguard.flood import FloodFilter

log = logging.getLogger(__name__)

#: One datagram and where it came from or goes to.
Datagram = tuple[bytes | memoryview, Endpoint]

#: wireguard-go's socket buffer size; needs root (SO_*BUFFORCE) beyond net.core.*mem_max.
SOCKET_BUFFER_BYTES = 7 << 20
_MAX_DATAGRAM = 65535


class DatagramTransport(AsyncResource):
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
        """Send every datagram, in order, before returning.

        Datagrams may be views into a buffer the caller reuses once this returns (the
        engine's, see ``WireGuardDevice(reuse_send_buffer=True)``): keep none of them; copy
        what must outlive the call.
        """

    @abstractmethod
    async def aclose(self) -> None:
        """Close the socket. Idempotent."""


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

    With ``offloads`` (the default) and a kernel that supports them (Linux), it uses UDP
    segmentation and receive offload (:mod:`tunplug.udp_offload`):

    - :meth:`send_many` sends each run of consecutive datagrams to one endpoint that have one
      length (the last may be shorter), up to 64 datagrams and 65507 bytes, with one
      ``sendmsg``. If the kernel refuses (EIO, EINVAL, ENOPROTOOPT, EOPNOTSUPP), GSO is turned
      off for this socket, logged once, and the run is sent datagram by datagram.
    - :meth:`recv_many` reads with ``UDP_GRO`` on: one read may return up to 64 datagrams of
      one sender coalesced; they are split again and returned one by one, in order. It never
      returns more than ``max_datagrams``: the rest of a coalesced read is kept and returned
      first by the next call, without waiting.

    :meth:`stats` counts both.
    """

    def __init__(self, sock: socket.socket, *, offloads: bool = True) -> None:
        self._sock = sock
        self._closed = False
        host, port = normalize_endpoint(sock.getsockname())
        self._local: Endpoint = (host, port)
        self._gso = offloads and probe_gso(sock)
        self._gro = offloads and enable_gro(sock)
        self._stats = UdpStats(gso_enabled=self._gso, gro_enabled=self._gro)
        #: Datagrams of a coalesced read beyond what the caller asked for.
        self._pending: list[Datagram] = []
        self._control_space = gro_control_space() if self._gro else 0

    @classmethod
    def bind(
        cls,
        port: int = 0,
        host: str | None = None,
        *,
        fwmark: int | None = None,
        offloads: bool = True,
    ) -> Self:
        """Open and bind the socket; ``offloads=False`` keeps one system call per datagram."""
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
        return cls(sock, offloads=offloads)

    @property
    def local_endpoint(self) -> Endpoint:
        return self._local

    def fileno(self) -> int:
        """The socket's descriptor, for a native data plane that receives on it in this
        transport's place (it stays owned, and closed, by this transport)."""
        return self._sock.fileno()

    def block_handshakes(self, policy: FloodFilter) -> bool:
        """Have the kernel drop handshake and cookie messages as ``policy`` says (the blocked
        sources' but a sample, and under a spread flood a share of everyone's); transport data
        always passes. An inactive policy removes the filter. Returns False where socket
        filters are not available (not Linux, or the kernel refused): nothing is filtered then.
        See :mod:`tunplug.socket_filter`."""
        if not sys.platform.startswith("linux") or self._closed:
            return False
        try:
            if policy.active:
                program = socket_filter.guard_program(
                    policy.blocked, policy.sample_one_in, policy.others_one_in
                )
                socket_filter.attach(self._sock, program)
            else:
                socket_filter.detach(self._sock)
        except (OSError, ValueError) as exc:
            log.warning("could not filter handshake floods in the kernel: %s", exc)
            return False
        return True

    def stats(self) -> UdpStats:
        """A snapshot of this transport's counters (and whether GSO and GRO are on)."""
        return replace(self._stats)

    def _target(self, endpoint: Endpoint) -> tuple[str, int]:
        host, port = endpoint
        if self._sock.family == socket.AF_INET6 and ":" not in host:
            return "::ffff:" + host, port
        return host, port

    async def _wait(self, until_ready: Callable[[socket.socket], Awaitable[None]]) -> None:
        """Wait for the socket; closing it meanwhile (:meth:`aclose`) ends the wait."""
        try:
            await until_ready(self._sock)
        except anyio.ClosedResourceError:
            raise ClosedResource("UDP transport is closed") from None
        if self._closed:
            raise ClosedResource("UDP transport is closed")

    # -- receiving --------------------------------------------------------------------------
    async def recv_many(self, max_datagrams: int = 100) -> list[Datagram]:
        if self._closed:
            raise ClosedResource("UDP transport is closed")
        max_datagrams = max(1, max_datagrams)
        if self._pending:
            out = self._pending
            self._pending = out[max_datagrams:]
            del out[max_datagrams:]
            return out
        out = []
        read = self._read_coalesced if self._gro else self._read_plain
        while True:
            read(out, max_datagrams)
            if out:
                if len(out) > max_datagrams:
                    self._pending = out[max_datagrams:]
                    del out[max_datagrams:]
                return out
            await self._wait(anyio.wait_readable)

    def _read_plain(self, out: list[Datagram], max_datagrams: int) -> None:
        sock = self._sock
        stats = self._stats
        before = len(out)
        while len(out) < max_datagrams:
            try:
                data, address = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in _UNREACHABLE:
                    continue  # ICMP errors from an earlier send; the peer may come back
                with map_os_errors("receive from the UDP socket"):
                    raise
            out.append((data, normalize_endpoint(address)))
        stats.recv_calls += len(out) - before
        stats.datagrams_received += len(out) - before

    def _read_coalesced(self, out: list[Datagram], max_datagrams: int) -> None:
        sock = self._sock
        stats = self._stats
        space = self._control_space
        while len(out) < max_datagrams:
            try:
                data, ancdata, flags, address = sock.recvmsg(GRO_BUFFER_BYTES, space)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in _UNREACHABLE:
                    continue
                with map_os_errors("receive from the UDP socket"):
                    raise
            stats.recv_calls += 1
            if flags & _MSG_TRUNC:
                stats.truncated += 1  # cannot happen with a 64 KiB buffer; never pass a part on
                continue
            endpoint = normalize_endpoint(address)
            segment = gro_segment_size(ancdata) if ancdata else 0
            if 0 < segment < len(data):
                before = len(out)
                out.extend([(part, endpoint) for part in split_segments(data, segment)])
                stats.gro_reads += 1
                stats.gro_segments += len(out) - before
                stats.datagrams_received += len(out) - before
            else:
                out.append((data, endpoint))
                stats.datagrams_received += 1

    # -- sending ----------------------------------------------------------------------------
    async def send_many(self, datagrams: Sequence[Datagram]) -> None:
        if not self._gso or len(datagrams) < 2:
            await self._send_plain(datagrams)
            return
        for start, stop in gso_runs(datagrams):
            if stop - start == 1 or not self._gso:
                await self._send_plain(datagrams[start:stop])
            else:
                await self._send_run(datagrams[start:stop])

    async def _send_plain(self, datagrams: Sequence[Datagram]) -> None:
        sock = self._sock
        stats = self._stats
        skipped = 0
        for data, endpoint in datagrams:
            target = self._target(endpoint)
            while True:
                if self._closed:
                    raise ClosedResource("UDP transport is closed")
                try:
                    sock.sendto(data, target)
                    break
                except (BlockingIOError, InterruptedError):
                    await self._wait(anyio.wait_writable)
                except OSError as exc:
                    if exc.errno in _UNREACHABLE:
                        skipped += 1
                        break  # the peer is unreachable now; WireGuard's timers retry
                    with map_os_errors(f"send to {endpoint[0]}:{endpoint[1]}"):
                        raise
        stats.send_calls += len(datagrams) - skipped
        stats.datagrams_sent += len(datagrams) - skipped

    async def _send_run(self, run: Sequence[Datagram]) -> None:
        """One GSO ``sendmsg`` for datagrams that :func:`gso_runs` grouped."""
        sock = self._sock
        endpoint = run[0][1]
        target = self._target(endpoint)
        # One buffer: measured ~5-10% faster than handing sendmsg the datagrams as 46 buffers.
        payload = [b"".join([data for data, _ in run])]
        control = segment_control(len(run[0][0]))
        while True:
            if self._closed:
                raise ClosedResource("UDP transport is closed")
            try:
                sock.sendmsg(payload, control, 0, target)
                break
            except (BlockingIOError, InterruptedError):
                await self._wait(anyio.wait_writable)
            except OSError as exc:
                if exc.errno in _UNREACHABLE:
                    return  # as in _send_plain: the timers retry
                if exc.errno in GSO_REFUSED_ERRNOS:
                    self._refuse_gso(exc)
                    await self._send_plain(run)
                    return
                with map_os_errors(f"send to {endpoint[0]}:{endpoint[1]}"):
                    raise
        stats = self._stats
        stats.send_calls += 1
        stats.gso_sends += 1
        stats.gso_segments += len(run)
        stats.datagrams_sent += len(run)

    def _refuse_gso(self, exc: OSError) -> None:
        self._gso = False
        self._stats.gso_enabled = False
        self._stats.gso_fallbacks += 1
        log.warning(
            "UDP segmentation offload refused by the kernel (%s); sending datagrams one by one "
            "on %s:%d from now on",
            errno.errorcode.get(exc.errno or 0, exc.errno),
            *self._local,
        )

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self._sock)
            self._sock.close()


_UNREACHABLE = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})
_MSG_TRUNC = getattr(socket, "MSG_TRUNC", 0x20)


def _forced_option(name: str, generic_linux_value: int) -> int | None:
    """``SO_RCVBUFFORCE``/``SO_SNDBUFFORCE``: Python 3.11's socket module lacks them, so on
    Linux architectures with the generic socket ABI their values come from
    ``asm-generic/socket.h``."""
    value: int | None = getattr(socket, name, None)
    if value is None and sys.platform == "linux" and platform.machine() in _GENERIC_ABI:
        value = generic_linux_value
    return value


_GENERIC_ABI = frozenset({"x86_64", "i686", "aarch64", "armv7l", "riscv64", "ppc64le", "s390x"})


def _raise_buffers(sock: socket.socket) -> None:
    for forced, plain in (
        (_forced_option("SO_RCVBUFFORCE", 33), socket.SO_RCVBUF),
        (_forced_option("SO_SNDBUFFORCE", 32), socket.SO_SNDBUF),
    ):
        try:
            if forced is None:
                raise PermissionError
            sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER_BYTES)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER_BYTES)
