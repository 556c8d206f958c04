"""One GUI's connection to the tunnel service: framing in, a bounded outbox out.

Who calls it: :class:`tunplug.service.server.TunnelService`, which accepts the socket, checks
the peer's credentials, then runs a :class:`Connection` with the request handler
(:class:`tunplug.service.requests.RequestHandler`) as its dispatcher. The handler and the
tunnel answer and broadcast through :meth:`Connection.post`.

Shape: a reader (requests, handled one at a time, in order) and a writer draining a bounded
outbox, so a GUI that stops reading never blocks the tunnel or other GUIs: it is dropped when
its outbox fills. Framing errors are answered, not fatal; a truncated or late frame ends the
connection after its answer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from tunplug.service import protocol as p
from tunplug.service.access import PeerCredentials, peer_credentials

#: The service logs under one name, as before it was split into modules (operators filter on it).
log = logging.getLogger("tunplug.service.server")

#: Frames (replies and events) queued for one client before it counts as stuck and is dropped.
OUTBOX_SIZE = 256
#: Once a frame's header has arrived, its payload must follow within this many seconds.
FRAME_TIMEOUT = 10.0
#: How long a closing connection waits for the client to close its end.
CLOSE_TIMEOUT = 1.0

CredentialsReader = Callable[[anyio.abc.SocketStream], PeerCredentials]
#: Handles one request; False when the connection must close after the reply.
Dispatcher = Callable[["Connection", p.Request], Awaitable[bool]]


def stream_credentials(stream: anyio.abc.SocketStream) -> PeerCredentials:
    """The kernel's credentials of the process at the other end of ``stream``."""
    return peer_credentials(stream.extra(anyio.abc.SocketAttribute.raw_socket))


class Connection:
    """One client: its outbox, and what it has negotiated."""

    def __init__(self, stream: anyio.abc.SocketStream, credentials: PeerCredentials) -> None:
        self.stream = stream
        self.credentials = credentials
        self.outbox, self._pending = anyio.create_memory_object_stream[bytes](OUTBOX_SIZE)
        self.scope = anyio.CancelScope()
        self.greeted = False
        self.subscribed = False
        self.finished = anyio.Event()

    def post(self, message: p.Message) -> None:
        """Queue a frame without waiting; a client that let its outbox fill is dropped."""
        try:
            self.outbox.send_nowait(p.encode(message))
        except anyio.WouldBlock:
            log.warning("client %s does not read its messages: dropped", self.credentials.pid)
            self.scope.cancel()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    async def run(self, dispatch: Dispatcher) -> None:
        """Read requests into ``dispatch`` until the client closes (or is dropped), send what
        is queued, then close our end gracefully."""
        with self.scope:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._write, tasks.cancel_scope)
                await self._read(dispatch)
                self.outbox.close()
            await close_gracefully(self.stream)

    async def _write(self, scope: anyio.CancelScope) -> None:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            async with self._pending:
                async for frame in self._pending:
                    await self.stream.send(frame)
        scope.cancel()  # the outbox is closed and sent (or the client is gone): end the reader

    async def _read(self, dispatch: Dispatcher) -> None:
        """Requests until the client closes; framing errors are answered, not fatal."""
        reader = BufferedByteReceiveStream(self.stream)
        while True:
            try:
                header = await reader.receive_exactly(p.HEADER.size)
            except anyio.IncompleteRead:
                if reader.buffer:
                    self.post(_truncated("the connection ended inside a message header"))
                return
            except (anyio.BrokenResourceError, OSError):
                return
            try:
                length = p.frame_length(header)
            except p.ProtocolError as exc:
                self.post(exc.reply())
                if exc.code is p.ErrorCode.MESSAGE_TOO_LARGE:
                    (length,) = p.HEADER.unpack(header)
                    if not await _skip(reader, length):
                        return
                continue
            payload = None
            with anyio.move_on_after(FRAME_TIMEOUT):
                try:
                    payload = await reader.receive_exactly(length)
                except anyio.IncompleteRead:
                    self.post(_truncated(f"the connection ended in a {length}-byte message"))
                    return
            if payload is None:
                late = f"a {length}-byte message did not arrive within {FRAME_TIMEOUT:g} s"
                self.post(_truncated(late))
                return
            try:
                request = p.decode_request(payload)
            except p.ProtocolError as exc:
                self.post(exc.reply())
                continue
            if not await dispatch(self, request):
                return


async def close_gracefully(stream: anyio.abc.SocketStream) -> None:
    """End our side, then drop what the client still sends until it closes (briefly).

    Closing a Unix socket with unread data resets the connection, and the client may lose the
    last frames we sent (e.g. the refusal): so the unread data is read first.
    """
    with (
        anyio.move_on_after(CLOSE_TIMEOUT),
        contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError),
    ):
        await stream.send_eof()
        while await stream.receive():
            pass


def _truncated(message: str) -> p.Error:
    return p.Error(code=p.ErrorCode.TRUNCATED_MESSAGE, message=message)


async def _skip(reader: BufferedByteReceiveStream, length: int) -> bool:
    """Read and drop an oversized payload; False if the connection ended first."""
    while length:
        try:
            length -= len(await reader.receive(min(length, 65536)))
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return False
    return True
