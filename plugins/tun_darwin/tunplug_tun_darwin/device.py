"""The ``darwin`` TUN backend: a macOS utun device, driven from the event loop without threads.

Who calls it: the engine, through the :class:`~tunplug.tun.Tun` contract, once the
``tun-darwin`` plugin registered :class:`DarwinUtunTun`. Tests build it over one end of a
``socket.socketpair(AF_UNIX, SOCK_DGRAM)``: the device logic only needs a connected datagram
socket carrying one framed packet per datagram (:mod:`._utun`).

How it works:

- **Creation** (macOS, root; a worker thread). A ``PF_SYSTEM`` control socket is connected to
  ``com.apple.net.utun_control`` with unit N + 1 for ``utunN`` (0: the kernel picks). A unit
  in use answers EBUSY, so we never join another process's device. ``ifconfig`` and ``route``
  set the MTU, addresses and IPv4 prefix routes (:mod:`.ifconfig`). The device disappears,
  with its addresses and routes, when the socket closes.
- **Reading.** :meth:`DarwinUtunTun.recv_many` reads the non-blocking socket until it would
  block or the batch is full, and only when nothing was there waits with
  :func:`anyio.wait_readable`. Each datagram is a 4-byte address family header and one
  packet; frames with a bad header are dropped and counted.
- **Writing.** :meth:`DarwinUtunTun.send` writes each packet behind its header with one
  ``sendmsg``. When the socket answers EAGAIN or ENOBUFS, the rest of the batch waits in a
  backlog of at most one batch and :meth:`DarwinUtunTun.send_ready` waits (``wait_writable``
  for EAGAIN; short sleeps for ENOBUFS, which ``select`` does not announce) until it is
  written: backpressure, never a silent drop. A packet the kernel rejects (EINVAL, EMSGSIZE,
  not IP) is dropped and counted in :attr:`DarwinUtunTun.drops`.
- **Shutdown.** :meth:`DarwinUtunTun.aclose` wakes tasks waiting on the socket
  (:func:`anyio.notify_closing`) and closes it.
"""

from __future__ import annotations

import errno
import sys
from collections import Counter
from collections.abc import Sequence
from functools import partial
from ipaddress import IPv4Network, IPv6Network
from socket import socket
from typing import Self

import anyio
import anyio.lowlevel

from tunplug.commands import Runner, add_routes, check_command, run_command
from tunplug.exceptions import (
    BackendUnavailable,
    ClosedResource,
    TunError,
    map_os_errors,
)
from tunplug.tun import Packet, Tun, TunOptions
from tunplug_tun_darwin import ifconfig
from tunplug_tun_darwin._utun import HEADER_SIZE, decode, header_for, open_utun, unit_for_name

#: Bytes asked of each read: a header and the largest IP packet.
READ_SIZE = HEADER_SIZE + 65535
#: First and longest sleep of :meth:`DarwinUtunTun.send_ready` after ENOBUFS.
ENOBUFS_POLL_SECONDS = 0.0005
ENOBUFS_POLL_MAX_SECONDS = 0.01

#: Errors that mean the device (or, in tests, the peer socket) is gone.
_DEVICE_GONE = frozenset(
    {errno.EBADF, errno.ENXIO, errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ECONNREFUSED}
)
#: Errors that mean "not now": the packet is kept and written later.
_WOULD_BLOCK = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})


class DarwinUtunTun(Tun):
    """A utun device (or any connected datagram socket framed the same way).

    Open one with :meth:`create`. The constructor takes a connected socket, makes it
    non-blocking and owns it from then on; ``run`` runs the ``route`` commands of
    :meth:`add_routes` (tests pass a recorder).
    """

    backend_name = "darwin"
    description = "macOS utun device"
    caveat = "never run on real macOS: CI runs it over a Unix socket pair"
    platforms = frozenset({"darwin"})

    def __init__(
        self,
        sock: socket,
        *,
        name: str,
        options: TunOptions,
        run: Runner = run_command,
    ) -> None:
        sock.setblocking(False)
        self.name = name
        self.mtu = options.mtu
        self.queues = 1
        self.batch_size = options.batch_size
        self.addresses = options.addresses
        self._sock = sock
        self._run = run
        self._closed = False
        self._failure: TunError | None = None
        self._buffer = bytearray(READ_SIZE)
        self._backlog: list[tuple[bytes, bytes]] = []
        self._backlog_enobufs = False
        self._routes: list[IPv4Network | IPv6Network] = []
        self.rx_packets = self.rx_bytes = self.tx_packets = self.tx_bytes = 0
        #: Packets dropped, by reason: ``rx_bad_header``, ``tx_not_ip``, ``write_<errno>``,
        #: ``backlog_full`` (only when :meth:`send` is called without :meth:`send_ready`).
        self.drops: Counter[str] = Counter()

    # -- the Tun contract ---------------------------------------------------------------

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if sys.platform != "darwin":
            return "runs on macOS only"
        return None

    @classmethod
    async def create(cls, options: TunOptions) -> Self:
        reason = cls.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"{cls.backend_name}: {reason}")
        try:
            unit = unit_for_name(options.name)
        except ValueError as exc:
            raise TunError(str(exc)) from None
        with anyio.CancelScope(shield=True):
            sock, name = await anyio.to_thread.run_sync(_open_and_configure, unit, options)
        return cls(sock, name=name, options=options)

    async def recv_many(self, max_packets: int | None = None) -> Sequence[Packet]:
        max_packets = self.batch_limit(max_packets)
        await anyio.lowlevel.checkpoint()
        while True:
            self._check_open()
            batch = self._read_batch(max_packets)
            if batch:
                return batch
            try:
                await anyio.wait_readable(self._sock)
            except anyio.ClosedResourceError:
                raise self._closed_error() from None

    async def send_ready(self) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        delay = ENOBUFS_POLL_SECONDS
        while self._backlog:
            self._flush_backlog()
            if not self._backlog:
                return
            try:
                if self._backlog_enobufs:
                    await anyio.sleep(delay)
                    delay = min(delay * 2, ENOBUFS_POLL_MAX_SECONDS)
                else:
                    await anyio.wait_writable(self._sock)
            except anyio.ClosedResourceError:
                raise self._closed_error() from None
            self._check_open()

    def send(self, packets: Sequence[Packet]) -> None:
        if len(packets) > self.batch_size:
            raise ValueError(f"at most {self.batch_size} packets per send, not {len(packets)}")
        self._check_open()
        if self._backlog:
            self._flush_backlog()
        for packet in packets:
            header = header_for(packet)
            if header is None:
                self.drops["tx_not_ip"] += 1
                continue
            data = packet if type(packet) is bytes else bytes(packet)
            if self._backlog or not self._write(header, data):
                self._to_backlog(header, data)

    async def add_routes(self, networks: Sequence[IPv4Network | IPv6Network]) -> None:
        """Route ``networks`` into the device with ``route`` (see :mod:`.ifconfig`).

        macOS removes them with the device; a failure removes the ones this call added.
        """
        self._check_open()
        own = set(ifconfig.own_routes(self.addresses))
        wanted = [n for n in dict.fromkeys(networks) if n not in own and n not in self._routes]
        with anyio.CancelScope(shield=True):
            added = await anyio.to_thread.run_sync(
                add_routes, self._run, partial(ifconfig.route_command, self.name), wanted
            )
        self._routes.extend(added)

    @property
    def routes(self) -> list[IPv4Network | IPv6Network]:
        """The networks :meth:`add_routes` routed here."""
        return list(self._routes)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._backlog.clear()
        anyio.notify_closing(self._sock)
        self._sock.close()

    # -- extras ---------------------------------------------------------------------------

    def stats(self) -> dict[str, int | dict[str, int]]:
        """Packets and bytes read and written, and drops by reason."""
        return {
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "drops": dict(self.drops),
        }

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.name!r} {state}>"

    # -- internals ------------------------------------------------------------------------

    def _closed_error(self) -> ClosedResource:
        return ClosedResource(f"utun device {self.name!r} is closed")

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()
        if self._failure is not None:
            raise type(self._failure)(str(self._failure), self._failure.errno)

    def _fail(self, exc: OSError, action: str) -> TunError:
        if exc.errno in _DEVICE_GONE:
            error: TunError = ClosedResource(
                f"failed to {action} {self.name}: {exc.strerror} (was the device removed?)",
                exc.errno,
            )
        else:
            try:
                with map_os_errors(f"{action} {self.name}"):
                    raise exc
            except TunError as mapped:
                error = mapped
        self._failure = error
        return error

    def _read_batch(self, limit: int) -> list[Packet]:
        batch: list[Packet] = []
        recv_into, buffer = self._sock.recv_into, self._buffer
        while len(batch) < limit:
            try:
                size = recv_into(buffer)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if batch:
                    break  # hand over what we have; the error comes back on the next call
                raise self._fail(exc, "read from") from exc
            packet = decode(memoryview(buffer)[:size])
            if packet is None:
                self.drops["rx_bad_header"] += 1
                continue
            batch.append(bytes(packet))
            self.rx_packets += 1
            self.rx_bytes += len(packet)
        return batch

    def _write(self, header: bytes, data: bytes) -> bool:
        """Write one framed packet; ``False`` if the socket cannot take it now."""
        try:
            self._sock.sendmsg((header, data))
        except OSError as exc:
            if exc.errno in _WOULD_BLOCK:
                self._backlog_enobufs = exc.errno == errno.ENOBUFS
                return False
            if exc.errno in _DEVICE_GONE:
                raise self._fail(exc, "write to") from exc
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno)).lower()
            self.drops[f"write_{name}"] += 1
            return True
        self.tx_packets += 1
        self.tx_bytes += len(data)
        return True

    def _to_backlog(self, header: bytes, data: bytes) -> None:
        if len(self._backlog) >= self.batch_size:
            self.drops["backlog_full"] += 1
            return
        self._backlog.append((header, data))

    def _flush_backlog(self) -> None:
        backlog = self._backlog
        written = 0
        for header, data in backlog:
            if not self._write(header, data):
                break
            written += 1
        del backlog[:written]


def _open_and_configure(unit: int, options: TunOptions) -> tuple[socket, str]:
    """Worker thread: open the utun socket, then MTU, addresses and prefix routes."""
    with map_os_errors("open a utun device"):
        sock, name = open_utun(unit)
    try:
        for command in ifconfig.interface_commands(name, options.addresses, options.mtu):
            check_command(run_command, command)
    except BaseException:
        sock.close()
        raise
    return sock, name
