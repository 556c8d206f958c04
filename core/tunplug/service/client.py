"""The tunnel service's client library: one connection, the Hello exchange, requests.

Who calls it: the ``tunplug ctl`` and ``tunplug status`` commands (:mod:`tunplug.cli.ctl`),
GUIs written in Python, and tests. Blocking sockets, one connection per command: a command-line
client has nothing else to do while it waits. Nothing here prints or logs a token.
"""

from __future__ import annotations

import collections
import os
import socket
from pathlib import Path

from tunplug import __version__
from tunplug.exceptions import TunplugError
from tunplug.service import protocol as p
from tunplug.service.settings import DEFAULT_GROUP, DEFAULT_SOCKET, SOCKET_VARIABLE

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
