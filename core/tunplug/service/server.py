"""The tunnel service: one tunnel, driven by GUIs over a local Unix socket.

Who calls it: ``tunplug-tunnel-service run`` (:mod:`tunplug.cli.tunnel_service`), and tests,
which build a :class:`TunnelService` directly (with the fake TUN backend and injected peer
credentials). The protocol is :mod:`tunplug.service.protocol`; ``docs/ipc.md`` is its manual.

Shape: this module owns the socket, the signals and the set of connections. One task accepts
connections; each one is a :class:`~tunplug.service.connection.Connection` (a reader and a
writer with a bounded outbox) whose requests :class:`~tunplug.service.requests.RequestHandler`
answers. The tunnel itself belongs to :class:`~tunplug.service.session.TunnelSession`. A token
file (or ``TUNPLUG_TOKEN``) takes precedence: the service connects with it on start and refuses
``Connect``/``Disconnect`` from GUIs while it is there. SIGTERM/SIGINT: every client gets
``TerminatingGracefully``, the tunnel is taken down, subscribers get ``Disconnected``, and the
connections and the socket are closed. SIGHUP reads the token file again.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from pathlib import Path

import anyio
import anyio.abc

from tunplug import __version__
from tunplug.app import App
from tunplug.headless.sources import ConfigSource
from tunplug.service import protocol as p
from tunplug.service.access import bind_socket, is_authorized
from tunplug.service.connection import (
    Connection,
    CredentialsReader,
    close_gracefully,
    stream_credentials,
)
from tunplug.service.requests import RequestHandler
from tunplug.service.session import RETRY_DELAYS, STATS_INTERVAL, TunnelSession
from tunplug.service.settings import TunnelServiceSettings
from tunplug.systemd import Notifier

log = logging.getLogger(__name__)

#: At shutdown, how long clients get to read their last frames.
DRAIN_TIMEOUT = 2.0


class TunnelService:
    """The service: socket, connections, and the one tunnel (:attr:`session`)."""

    def __init__(
        self,
        app: App,
        settings: TunnelServiceSettings,
        *,
        device_id: str,
        source: ConfigSource,
        group_gid: int,
        interface: str,
        token_from_environment: bool = False,
        credentials: CredentialsReader = stream_credentials,
        notifier: Notifier | None = None,
        handle_signals: bool = True,
        log_file: Path | None = None,
        stats_interval: float = STATS_INTERVAL,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
    ) -> None:
        self.settings = settings
        self.device_id = device_id
        self.group_gid = group_gid
        self.credentials = credentials
        self.notifier = notifier or Notifier("")
        self.handle_signals = handle_signals
        self.socket_path = settings.service_socket
        self.connections: set[Connection] = set()
        self.session = TunnelSession(
            app,
            settings,
            source=source,
            interface=interface,
            token_from_environment=token_from_environment,
            notifier=self.notifier,
            broadcast=self.broadcast,
            stats_interval=stats_interval,
            retry_delays=retry_delays,
        )
        self.requests = RequestHandler(self.session, device_id=device_id, log_file=log_file)
        self._stop = anyio.Event()

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until :meth:`stop` (or SIGTERM/SIGINT), then shut down gracefully."""
        sock = bind_socket(self.socket_path, self.group_gid)
        try:
            listener = await anyio.abc.SocketListener.from_socket(sock)
            async with listener, anyio.create_task_group() as tasks:
                await tasks.start(self.session.run, name="tunnel session")
                accepting = anyio.CancelScope()
                tasks.start_soon(self._accept, listener, tasks, accepting, name="accept")
                if self.handle_signals:
                    await tasks.start(self._signals, name="signals")
                log.info(
                    "tunnel service %s listening on %s (root and group %d), device id %s",
                    __version__,
                    self.socket_path,
                    self.group_gid,
                    self.device_id,
                )
                self.notifier.ready(f"listening on {self.socket_path}")
                if self.session.managed_by_token_file():
                    self.session.start_from_token_file()
                task_status.started()
                await self._stop.wait()
                accepting.cancel()
                await self._shutdown()
                tasks.cancel_scope.cancel()
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            log.info("tunnel service stopped")

    def stop(self) -> None:
        """Begin the graceful shutdown (what SIGTERM does)."""
        self._stop.set()

    async def reload(self) -> None:
        """SIGHUP: with a token file, read it again and restart the tunnel with it (the
        interface is recreated); a GUI's tunnel is left alone."""
        await self.session.reload()

    def broadcast(self, message: p.Message) -> None:
        """Send an event to every subscriber."""
        for connection in list(self.connections):
            if connection.subscribed:
                connection.post(message)

    async def _signals(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self.reload()
                    continue
                log.info("received %s: shutting down", signal.Signals(signum).name)
                self.stop()

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        for connection in list(self.connections):
            if connection.greeted:
                connection.post(p.TerminatingGracefully())
        await self.session.close()
        for connection in list(self.connections):
            connection.outbox.close()  # the writer sends what is queued, then ends
        with anyio.move_on_after(DRAIN_TIMEOUT):
            for connection in list(self.connections):
                await connection.finished.wait()

    # -- connections ---------------------------------------------------------------------------
    async def _accept(
        self,
        listener: anyio.abc.SocketListener,
        tasks: anyio.abc.TaskGroup,
        scope: anyio.CancelScope,
    ) -> None:
        with scope:
            await listener.serve(self._handle, tasks)

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                credentials = await anyio.to_thread.run_sync(self.credentials, stream)
            except OSError as exc:
                log.warning("cannot read a client's credentials: %s", exc)
                return
            if not is_authorized(credentials, self.group_gid):
                log.warning(
                    "refused a client: %s is not root or in group %d",
                    credentials.describe(),
                    self.group_gid,
                )
                refusal = p.Error(
                    code=p.ErrorCode.PERMISSION_DENIED,
                    message=f"{credentials.describe()} may not use the tunnel service: only "
                    f"root and members of group {self.settings.service_group!r} may",
                )
                with contextlib.suppress(anyio.BrokenResourceError, OSError):
                    await stream.send(p.encode(refusal))
                await close_gracefully(stream)
                return
            connection = Connection(stream, credentials)
            self.connections.add(connection)
            log.debug("client connected: %s", credentials.describe())
            try:
                await connection.run(self.requests.dispatch)
            except Exception:
                log.exception("client %s: unexpected error", credentials.describe())
            finally:
                self.connections.discard(connection)
                connection.finished.set()
                log.debug("client disconnected: %s", credentials.describe())
