"""The control channel: each client asks the gateway, inside the tunnel, what it may reach.

Who calls it: :func:`tunplug.gateway.server.run_gateway` starts :func:`serve_control` as a
background task once the tunnel is up (its addresses exist then); the client side of tunplug
asks it and applies the answer (routes, DNS) to its running tunnel. The gateway's metrics
endpoint shares the HTTP helpers.

Protocol: plain HTTP/1.1 on TCP port :data:`~tunplug.resources.CONTROL_PORT` of the gateway's
tunnel addresses, one request per connection (``Connection: close``):

- ``GET /v1/view``: ``200`` with the JSON of :class:`~tunplug.resources.ClientView` for the
  asking client, at once;
- ``GET /v1/view?since=N``: the same, but when the registry's version is still ``N`` the
  answer waits until it changes or :data:`LONG_POLL_SECONDS` pass (a long poll: a client
  learns of a change within the gateway's poll interval);
- from an address that is not a client's tunnel address: ``403`` with one line saying so;
  anything else ``404`` (``405`` for another method, ``400`` for a bad ``since``).

The client is who its source address says: WireGuard's cryptokey routing lets only that
client's peer send from its tunnel address, so no other credential is needed.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc

from tunplug.exceptions import TunplugError
from tunplug.resources import CONTROL_PORT, ClientView

log = logging.getLogger(__name__)

#: How long a long poll waits for a change before answering the unchanged view.
LONG_POLL_SECONDS = 25.0
#: The largest HTTP request head read.
MAX_REQUEST = 8192
#: How long a connection may take to send its request head.
HEAD_TIMEOUT = 5.0
#: Linux ``IP_FREEBIND`` / ``IPV6_FREEBIND``: bind an address that is not (yet) usable — the
#: tunnel's IPv6 address is tentative while duplicate address detection runs.
IP_FREEBIND = 15
IPV6_FREEBIND = 78


class ViewSource(Protocol):
    """What the control channel needs from the running gateway."""

    @property
    def version(self) -> int:
        """The registry version the gateway serves now."""
        ...

    def view(self, address: str) -> ClientView | None:
        """The view of the client whose tunnel address is ``address`` (None: not a client)."""
        ...

    async def wait_changed(self, since: int) -> None:
        """Return once :attr:`version` differs from ``since`` (at once if it does now)."""
        ...


# -- HTTP, shared with the metrics endpoint --------------------------------------------------
async def read_request_head(stream: anyio.abc.ByteReceiveStream) -> bytes:
    """The request head (up to :data:`MAX_REQUEST` bytes; what came within
    :data:`HEAD_TIMEOUT` seconds)."""
    head = b""
    with anyio.move_on_after(HEAD_TIMEOUT):
        while b"\r\n\r\n" not in head and len(head) < MAX_REQUEST:
            try:
                head += await stream.receive(4096)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                break
    return head


def parse_request_head(head: bytes) -> tuple[bytes, str]:
    """The method and path of an HTTP request head, whatever a client sent (never raises)."""
    parts = head.split(b" ", 2)
    path = parts[1].decode("latin-1", "replace") if len(parts) > 1 else ""
    return parts[0], path


def http_response(
    status: str, body: bytes, content_type: str = "text/plain", version: str = "1.1"
) -> bytes:
    """A complete response that closes the connection."""
    return (
        f"HTTP/{version} {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


async def send_quietly(stream: anyio.abc.ByteSendStream, data: bytes) -> None:
    """Send, ignoring a peer that went away."""
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        await stream.send(data)


# -- the control channel ---------------------------------------------------------------------
async def answer(
    source: ViewSource, address: str, method: bytes, target: str
) -> tuple[str, str, bytes]:
    """(status, content type, body) for a request from ``address`` (waits on a long poll)."""
    url = urlsplit(target)
    if url.path != "/v1/view":
        return "404 Not Found", "text/plain", b"not found: try GET /v1/view\n"
    if method != b"GET":
        return "405 Method Not Allowed", "text/plain", b"only GET\n"
    if source.view(address) is None:
        reason = f"{address} is not the tunnel address of a client of this gateway\n"
        return "403 Forbidden", "text/plain", reason.encode()
    since_values = parse_qs(url.query).get("since")
    if since_values:
        try:
            since = int(since_values[0])
        except ValueError:
            return "400 Bad Request", "text/plain", b"since must be a version number\n"
        if since == source.version:
            with anyio.move_on_after(LONG_POLL_SECONDS):
                await source.wait_changed(since)
    view = source.view(address)
    if view is None:  # revoked while it waited
        reason = f"{address} is no longer a client of this gateway\n"
        return "403 Forbidden", "text/plain", reason.encode()
    return "200 OK", "application/json", view.model_dump_json().encode() + b"\n"


def bind_tunnel_socket(
    kind: socket.SocketKind, address: IPv4Address | IPv6Address, port: int
) -> socket.socket:
    """A socket bound to one of the gateway's tunnel addresses (``IP_FREEBIND``: also while
    the address is still tentative), non-blocking; listening for TCP.

    :raises OSError: the port is taken, or the kernel refused.
    """
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        sock.bind((str(address), port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_both(
    kind: socket.SocketKind, addresses: Sequence[IPv4Address | IPv6Address], port: int, what: str
) -> list[socket.socket]:
    """Sockets on every address: the first must bind, the others may fail (logged).

    :raises TunplugError: the first address cannot be bound (one line, with the reason).
    """
    sockets = []
    for index, address in enumerate(addresses):
        try:
            sockets.append(bind_tunnel_socket(kind, address, port))
        except OSError as exc:
            host = f"[{address}]" if address.version == 6 else str(address)
            if index == 0:
                for sock in sockets:
                    sock.close()
                raise TunplugError(
                    f"{what}: cannot listen on {host}:{port}: {exc.strerror}"
                ) from None
            log.warning("%s: not on %s:%d (%s)", what, host, port, exc.strerror)
    return sockets


async def serve_control(
    source: ViewSource,
    addresses: Sequence[IPv4Address | IPv6Address],
    port: int = CONTROL_PORT,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control channel on ``addresses`` (the first must bind) until cancelled."""
    sockets = bind_both(socket.SOCK_STREAM, addresses, port, "control channel")
    listeners = [await anyio.abc.SocketListener.from_socket(sock) for sock in sockets]
    log.info(
        "control channel on %s",
        ", ".join(f"http://{_host(sock)}:{port}/v1/view" for sock in sockets),
    )

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            remote = stream.extra(anyio.abc.SocketAttribute.remote_address)
            address = _normalise(str(remote[0]) if isinstance(remote, tuple) else str(remote))
            method, target = parse_request_head(await read_request_head(stream))
            status, content_type, body = await answer(source, address, method, target)
            await send_quietly(stream, http_response(status, body, content_type))

    async with contextlib.AsyncExitStack() as stack:
        for listener in listeners:
            await stack.enter_async_context(listener)
        tasks = await stack.enter_async_context(anyio.create_task_group())
        for listener in listeners:
            tasks.start_soon(listener.serve, handle)
        task_status.started()


def _host(sock: socket.socket) -> str:
    host = str(sock.getsockname()[0])
    return f"[{host}]" if ":" in host else host


def _normalise(host: str) -> str:
    """An address as ``str(ip_address(...))`` writes it (the form the state's maps use)."""
    try:
        return str(ip_address(host.split("%", 1)[0]))
    except ValueError:
        return host
