"""The tunnel service's client: ``tunplug ctl connect|disconnect|status|watch`` and
``tunplug status``.

Who calls it: :mod:`tunplug.cli.main` (the ``ctl`` and ``status`` subcommands) and tests.
Blocking sockets, one connection per command: a command-line client has nothing else to do
while it waits. Output of ``status`` follows ``wg show``; ``--json`` prints the protocol's
``TunnelStatus`` object. Nothing here prints or logs a token.
"""

from __future__ import annotations

import collections
import getpass
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import TextIO

from tunplug import __version__
from tunplug.cli._common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from tunplug.exceptions import ConfigError, TunplugError
from tunplug.secure_files import read_private_file
from tunplug.service import protocol as p
from tunplug.service.settings import DEFAULT_GROUP, DEFAULT_SOCKET, SOCKET_VARIABLE
from tunplug.service.status_file import DEFAULT_STATUS_FILE, STALE_AFTER, read_status_file

#: How long a request waits for its reply (Disconnect waits for the device to go).
REPLY_TIMEOUT = 30.0
#: How long ``ctl connect`` waits for TunnelReady.
CONNECT_TIMEOUT = 30.0


class ServiceError(TunplugError):
    """The service answered with an Error, or could not be reached; ``code`` says which."""

    def __init__(self, message: str, code: str = "unreachable") -> None:
        super().__init__(message)
        self.code = code


def default_socket() -> Path:
    """``TUNPLUG_SERVICE_SOCKET``, else the service's default path."""
    return Path(os.environ.get(SOCKET_VARIABLE) or DEFAULT_SOCKET)


class ServiceClient:
    """One connection to the service, after the Hello exchange."""

    def __init__(
        self,
        path: Path,
        *,
        name: str = f"tunplug-ctl {__version__}",
        timeout: float = REPLY_TIMEOUT,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self._next_id = 1
        self.events: collections.deque[p.Reply] = collections.deque()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except FileNotFoundError:
            self.sock.close()
            raise ServiceError(
                f"no tunnel service at {path} (is tunplug-tunnel-service running? "
                f"--socket or {SOCKET_VARIABLE} choose another socket)"
            ) from None
        except PermissionError:
            self.sock.close()
            raise ServiceError(
                f"permission denied: {path}: only root and members of the service's group "
                f"(default {DEFAULT_GROUP}) may use it",
                p.ErrorCode.PERMISSION_DENIED,
            ) from None
        except OSError as exc:
            self.sock.close()
            raise ServiceError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        try:
            welcome = self.request(p.Hello(protocol_version=p.PROTOCOL_VERSION, client=name))
        except BaseException:
            self.sock.close()
            raise
        assert isinstance(welcome, p.Welcome)
        self.welcome = welcome

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def _recv_exactly(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ServiceError("the service closed the connection", "closed")
            data += chunk
        return bytes(data)

    def receive(self, timeout: float | None = None) -> p.Reply:
        """The next reply or event (types this client does not know are skipped).

        :raises ServiceError: the connection closed; :raises TimeoutError: nothing came.
        """
        self.sock.settimeout(timeout if timeout is not None else self.timeout)
        while True:
            try:
                length = p.frame_length(self._recv_exactly(p.HEADER.size))
                message = p.decode_reply(self._recv_exactly(length))
            except p.ProtocolError as exc:
                raise ServiceError(f"bad message from the service: {exc}", "protocol") from None
            except OSError as exc:
                if isinstance(exc, TimeoutError):
                    raise
                raise ServiceError(f"connection to the service failed: {exc}") from None
            if message is not None:
                return message

    def send(self, request: p.Message) -> int:
        """Send a request with a fresh id; returns the id."""
        request = request.model_copy(update={"id": self._next_id})
        self._next_id += 1
        self.sock.settimeout(self.timeout)
        self.sock.sendall(p.encode(request))
        return request.id

    def request(self, request: p.Message) -> p.Reply:
        """Send and wait for the reply (events meanwhile are kept in :attr:`events`).

        :raises ServiceError: the reply is an Error (its code and message), or the connection
            closed. An Error with id 0 (e.g. permission_denied before Hello) counts too.
        """
        request_id = self.send(request)
        while True:
            reply = self.receive()
            if isinstance(reply, p.Error) and reply.id in (request_id, 0):
                raise ServiceError(reply.message, reply.code)
            if reply.id == request_id:
                return reply
            self.events.append(reply)

    def next_event(self, timeout: float | None = None) -> p.Reply:
        return self.events.popleft() if self.events else self.receive(timeout)

    def status(self) -> p.TunnelStatus:
        reply = self.request(p.Status())
        assert isinstance(reply, p.StatusReply)
        return reply.status


# -- formatting --------------------------------------------------------------------------------
def _age(then: float | None, now: float) -> str:
    if then is None:
        return "never"
    seconds = max(0, int(now - then))
    parts: list[str] = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size or (unit == "second" and not parts):
            count, seconds = divmod(seconds, size)
            parts.append(f"{count} {unit}{'' if count == 1 else 's'}")
    return ", ".join(parts) + " ago"


def _bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError


def format_status(status: p.TunnelStatus, now: float | None = None) -> str:
    """The status as ``wg show`` lays it out (interface first, then each peer)."""
    now = time.time() if now is None else now
    managed = {"token_file": " (token file)", "gui": " (GUI)"}.get(status.managed_by or "", "")
    lines = [f"interface: {status.interface or '(none)'}", f"  state: {status.state}{managed}"]
    if status.client_name:
        lines.append(f"  client: {status.client_name}")
    if status.public_key:
        lines.append(f"  public key: {status.public_key}")
    if status.listen_port:
        lines.append(f"  listening port: {status.listen_port}")
    if status.addresses:
        lines.append(f"  addresses: {', '.join(status.addresses)}")
    if status.dns_servers:
        lines.append(f"  dns: {', '.join(status.dns_servers)} (via {status.dns_control})")
    if status.last_error:
        lines.append(f"  last error: {status.last_error}")
    if status.control:
        lines.append(f"  control channel: {status.control}")
    internet = status.internet_resource
    if internet is not None and (internet.offered or internet.requested):
        state = "active" if internet.active else "offered" if internet.offered else "not offered"
        asked = "requested" if internet.requested else "not requested"
        lines.append(f"  internet resource: {state} ({asked})")
    for resource in status.resources:
        ports = f" {','.join(resource.ports)}" if resource.ports else ""
        reachable = "reachable" if resource.reachable else "not reachable"
        lines.append(
            f"  resource {resource.name}: {resource.kind} {resource.target}{ports}, {reachable}"
        )
    for peer in status.peers:
        lines += ["", f"peer: {peer.public_key}"]
        lines.append(f"  endpoint: {peer.endpoint or '(none)'}")
        lines.append(f"  allowed ips: {', '.join(peer.allowed_ips) or '(none)'}")
        lines.append(f"  latest handshake: {_age(peer.latest_handshake, now)}")
        lines.append(f"  transfer: {_bytes(peer.rx_bytes)} received, {_bytes(peer.tx_bytes)} sent")
        if peer.persistent_keepalive:
            lines.append(f"  persistent keepalive: every {peer.persistent_keepalive} seconds")
    return "\n".join(lines)


def format_event(event: p.Reply) -> str:
    """One line per event for ``ctl watch``."""
    if isinstance(event, p.TunnelReady):
        return f"tunnel ready: {event.interface} {', '.join(event.addresses)}"
    if isinstance(event, p.StatsUpdate):
        peers = "; ".join(
            f"{peer.public_key[:8]}... rx {peer.rx_bytes} tx {peer.tx_bytes} handshake "
            f"{_age(peer.latest_handshake, time.time())}"
            for peer in event.peers
        )
        return f"stats: {event.interface}: {peers or 'no peers'}"
    if isinstance(event, p.Disconnected):
        if event.error is None:
            return "disconnected"
        return f"disconnected: {event.error}" + (
            " (a new token is needed)" if event.needs_new_token else ""
        )
    if isinstance(event, p.TerminatingGracefully):
        return "the service is stopping"
    return event.model_dump_json()


# -- commands ----------------------------------------------------------------------------------
def _fail(prog: str, exc: ServiceError) -> int:
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return EXIT_FAILURE


def read_token(token_file: Path | None, stdin: TextIO | None = None) -> str:
    """The token from ``--token-file`` (private file) or standard input (hidden on a terminal).

    :raises ConfigError: the file is open to others, or nothing was given.
    """
    if token_file is not None:
        return read_private_file(token_file, "--token-file").strip()
    stdin = stdin or sys.stdin
    text = getpass.getpass("token: ") if stdin.isatty() else stdin.read()
    if not text.strip():
        raise ConfigError("stdin", "no token: pass --token-file FILE or pipe the token in")
    return text.strip()


def ctl_connect(
    path: Path, token_file: Path | None, *, wait: float = CONNECT_TIMEOUT, prog: str = "tunplug"
) -> int:
    """Connect with a token and wait for ``TunnelReady`` (or the reason it failed)."""
    secret = read_token(token_file)
    try:
        with ServiceClient(path) as client:
            client.request(p.Subscribe())
            client.request(p.Connect(token=secret))
            deadline = time.monotonic() + wait
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServiceError(f"no TunnelReady within {wait:g} s", "timeout")
                try:
                    event = client.next_event(remaining)
                except TimeoutError:
                    continue
                if isinstance(event, p.TunnelReady):
                    print(f"connected: {format_event(event)}")
                    return EXIT_OK
                if isinstance(event, p.Disconnected | p.TerminatingGracefully):
                    raise ServiceError(format_event(event), "disconnected")
    except ServiceError as exc:
        if exc.code == p.ErrorCode.INVALID_TOKEN:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        return _fail(prog, exc)


def ctl_disconnect(path: Path, *, prog: str = "tunplug") -> int:
    try:
        with ServiceClient(path) as client:
            client.request(p.Disconnect())
    except ServiceError as exc:
        return _fail(prog, exc)
    print("disconnected")
    return EXIT_OK


def ctl_status(path: Path, *, as_json: bool = False, prog: str = "tunplug") -> int:
    try:
        with ServiceClient(path) as client:
            status = client.status()
            welcome = client.welcome
    except ServiceError as exc:
        return _fail(prog, exc)
    if as_json:
        data = {
            "service": {
                "socket": str(path),
                "service_version": welcome.service_version,
                "protocol_version": welcome.protocol_version,
                "device_id": welcome.device_id,
            },
            **status.model_dump(mode="json"),
        }
        print(json.dumps(data, indent=2))
    else:
        print(format_status(status))
    return EXIT_OK


def ctl_watch(path: Path, *, as_json: bool = False, prog: str = "tunplug") -> int:
    """Print the status, then one line (or JSON object) per event until the service stops."""
    try:
        with ServiceClient(path) as client:
            client.request(p.Subscribe())
            status = client.status()
            print(status.model_dump_json() if as_json else format_status(status), flush=True)
            while True:
                try:
                    event = client.next_event(timeout=3600)
                except TimeoutError:
                    continue
                print(event.model_dump_json() if as_json else format_event(event), flush=True)
                if isinstance(event, p.TerminatingGracefully):
                    return EXIT_OK
    except ServiceError as exc:
        if exc.code == "closed":
            return EXIT_OK
        return _fail(prog, exc)
    except KeyboardInterrupt:
        return EXIT_OK


def status_command(
    path: Path | None,
    *,
    as_json: bool = False,
    gateway_state: Path | None = None,
    status_file: Path | None = None,
) -> int:
    """``tunplug status``: the tunnel service's tunnel, a gateway's (``--gateway-state``), or
    a tunnel that writes a status file (a headless client with one).
    """
    if gateway_state is not None:
        from tunplug.cli.gateway import main as gateway_main

        return gateway_main(
            ["status", "--state-dir", str(gateway_state), *(["--json"] if as_json else [])]
        )
    path = path or default_socket()
    if status_file is None and path.exists():
        return ctl_status(path, as_json=as_json)
    file = status_file or DEFAULT_STATUS_FILE
    try:
        status, age = read_status_file(file)
    except FileNotFoundError:
        print(
            f"tunplug: error: no tunnel service at {path} and no status file at {file}. For "
            "a gateway: tunplug status --gateway-state DIR (or tunplug-gateway status); a "
            "headless client reports in its log (journalctl -u tunplug-headless-client).",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except (OSError, ValueError) as exc:
        print(f"tunplug: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if as_json:
        data = {"source": {"status_file": str(file), "age": round(age, 1)}}
        print(json.dumps({**data, **status.model_dump(mode="json")}, indent=2))
        return EXIT_OK
    print(format_status(status))
    if age > STALE_AFTER:
        print(f"(written {int(age)} s ago: the tunnel is probably not running)")
    return EXIT_OK
