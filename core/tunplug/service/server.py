"""The tunnel service: one tunnel, driven by GUIs over a local Unix socket.

Who calls it: ``tunplug-tunnel-service run`` (:mod:`tunplug.cli.tunnel_service`), and tests,
which build a :class:`TunnelService` directly (with the fake TUN backend and injected peer
credentials). The protocol is :mod:`tunplug.service.protocol`; ``docs/ipc.md`` is its manual.

Shape: one task accepts connections; each connection has a reader (requests, handled one at a
time, in order) and a writer draining a bounded outbox, so a GUI that stops reading never
blocks the tunnel or other GUIs (it is dropped when its outbox fills). The tunnel is one task
running :func:`~tunplug.node.run_interface` inside its own cancel scope: ``Connect`` starts it,
``Disconnect`` cancels it and waits until routes, DNS and the device are gone. A token file
(or ``TUNPLUG_TOKEN``) takes precedence: the service connects with it on start and refuses
``Connect``/``Disconnect`` from GUIs while it is there. SIGTERM/SIGINT: every client gets
``TerminatingGracefully``, the tunnel is taken down, subscribers get ``Disconnected``, and the
connections and the socket are closed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from tunplug import __version__, token
from tunplug.app import App
from tunplug.control import ControlChannel, control_channel
from tunplug.endpoints import failover_tasks
from tunplug.exceptions import ConfigError, TunplugError
from tunplug.headless.sources import ConfigSource, Source
from tunplug.node import InterfaceHooks, RunningInterface, run_interface
from tunplug.service import protocol as p
from tunplug.service.access import PeerCredentials, bind_socket, is_authorized, peer_credentials
from tunplug.service.settings import TunnelServiceSettings
from tunplug.service.status_file import control_statuses, peer_statuses
from tunplug.systemd import Notifier
from tunplug.wireguard import WireGuardDevice

log = logging.getLogger(__name__)

#: Seconds between ``StatsUpdate`` events while connected.
STATS_INTERVAL = 1.0
#: Frames (replies and events) queued for one client before it counts as stuck and is dropped.
OUTBOX_SIZE = 256
#: Once a frame's header has arrived, its payload must follow within this many seconds.
FRAME_TIMEOUT = 10.0
#: At shutdown, how long clients get to read their last frames.
DRAIN_TIMEOUT = 2.0
#: How long a closing connection waits for the client to close its end.
CLOSE_TIMEOUT = 1.0
#: Seconds before each new attempt when the token file's tunnel failed for a reason other than
#: its configuration (a taken interface name, a device error); the last one repeats.
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)

CredentialsReader = Callable[[anyio.abc.SocketStream], PeerCredentials]


def _stream_credentials(stream: anyio.abc.SocketStream) -> PeerCredentials:
    return peer_credentials(stream.extra(anyio.abc.SocketAttribute.raw_socket))


@dataclass(eq=False)
class _Tunnel:
    """The running (or starting) tunnel."""

    source: Source
    managed_by: Literal["token_file", "gui"]
    dns_control: str
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)
    ready: RunningInterface | None = None
    device: WireGuardDevice | None = None
    #: The gateway's control channel, when the token has one.
    control: ControlChannel | None = None


class _Connection:
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

    async def write_all(self) -> None:
        async with self._pending:
            async for frame in self._pending:
                await self.stream.send(frame)


class TunnelService:
    """The service: socket, connections, and the one tunnel."""

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
        credentials: CredentialsReader = _stream_credentials,
        notifier: Notifier | None = None,
        handle_signals: bool = True,
        log_file: Path | None = None,
        stats_interval: float = STATS_INTERVAL,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
    ) -> None:
        self.app = app
        self.settings = settings
        self.device_id = device_id
        self.source = source
        self.group_gid = group_gid
        self.interface = interface
        self.token_from_environment = token_from_environment
        self.credentials = credentials
        self.notifier = notifier or Notifier("")
        self.handle_signals = handle_signals
        self.log_file = log_file
        self.stats_interval = stats_interval
        self.dns_control = settings.dns_control
        #: ``SetInternetResource``: use the gateway's Internet resource (this and later tunnels).
        self.internet_resource = False
        self.socket_path = settings.service_socket
        self.connections: set[_Connection] = set()
        self.tunnel: _Tunnel | None = None
        self.last_error: str | None = None
        self.stopping = False
        self.retry_delays = retry_delays
        self._failures = 0  # token-file tunnel failures in a row (reset once it is up)
        self._stop = anyio.Event()

    # -- life cycle ----------------------------------------------------------------------------
    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until :meth:`stop` (or SIGTERM/SIGINT), then shut down gracefully."""
        sock = bind_socket(self.socket_path, self.group_gid)
        try:
            listener = await anyio.abc.SocketListener.from_socket(sock)
            async with listener, anyio.create_task_group() as tasks:
                self._tasks = tasks
                accepting = anyio.CancelScope()
                tasks.start_soon(self._accept, listener, accepting, name="accept")
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
                if self.managed_by_token_file():
                    self._start_from_token_file()
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

    async def reload(self) -> None:
        """SIGHUP: with a token file, read it again and restart the tunnel with it (the
        interface is recreated); a GUI's tunnel is left alone."""
        if self.stopping or not self.managed_by_token_file():
            log.info("reload: no token file, nothing to read again")
            return
        try:
            self.source.load()  # a broken file: keep the running tunnel
        except TunplugError as exc:
            log.error("reload: the token file is not usable, keeping the tunnel: %s", exc)
            return
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.scope.cancel()
            await tunnel.done.wait()
        log.info("reload: reconnecting with the token file")
        self._failures = 0
        self._start_from_token_file()

    async def _shutdown(self) -> None:
        self.stopping = True
        self.notifier.stopping()
        for connection in list(self.connections):
            if connection.greeted:
                connection.post(p.TerminatingGracefully())
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.scope.cancel()
            await tunnel.done.wait()
        for connection in list(self.connections):
            connection.outbox.close()  # the writer sends what is queued, then ends
        with anyio.move_on_after(DRAIN_TIMEOUT):
            for connection in list(self.connections):
                await connection.finished.wait()

    def managed_by_token_file(self) -> bool:
        """Whether a token file (or ``TUNPLUG_TOKEN``) decides the tunnel, not GUIs."""
        return self.token_from_environment or self.source.token_path.exists()

    def _start_from_token_file(self) -> None:
        try:
            loaded = self.source.load()
            self._start_tunnel(loaded, "token_file")
        except TunplugError as exc:
            self.last_error = str(exc)
            log.error("cannot connect with the token file: %s", exc)

    # -- connections ---------------------------------------------------------------------------
    async def _accept(self, listener: anyio.abc.SocketListener, scope: anyio.CancelScope) -> None:
        with scope:
            await listener.serve(self._handle, self._tasks)

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
                await _close_gracefully(stream)
                return
            connection = _Connection(stream, credentials)
            self.connections.add(connection)
            log.debug("client connected: %s", credentials.describe())
            try:
                with connection.scope:
                    async with anyio.create_task_group() as tasks:
                        tasks.start_soon(self._write, connection, tasks.cancel_scope)
                        await self._read(connection)
                        connection.outbox.close()
                    await _close_gracefully(stream)
            except Exception:
                log.exception("client %s: unexpected error", credentials.describe())
            finally:
                self.connections.discard(connection)
                connection.finished.set()
                log.debug("client disconnected: %s", credentials.describe())

    async def _write(self, connection: _Connection, scope: anyio.CancelScope) -> None:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await connection.write_all()
        scope.cancel()  # the outbox is closed and sent (or the client is gone): end the reader

    async def _read(self, connection: _Connection) -> None:
        """Requests until the client closes; framing errors are answered, not fatal."""
        reader = BufferedByteReceiveStream(connection.stream)
        while True:
            try:
                header = await reader.receive_exactly(p.HEADER.size)
            except anyio.IncompleteRead:
                if reader.buffer:
                    connection.post(_truncated("the connection ended inside a message header"))
                return
            except (anyio.BrokenResourceError, OSError):
                return
            try:
                length = p.frame_length(header)
            except p.ProtocolError as exc:
                connection.post(exc.reply())
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
                    connection.post(_truncated(f"the connection ended in a {length}-byte message"))
                    return
            if payload is None:
                late = f"a {length}-byte message did not arrive within {FRAME_TIMEOUT:g} s"
                connection.post(_truncated(late))
                return
            try:
                request = p.decode_request(payload)
            except p.ProtocolError as exc:
                connection.post(exc.reply())
                continue
            if not await self._dispatch(connection, request):
                return

    async def _dispatch(self, connection: _Connection, request: p.Request) -> bool:
        """Handle one request; False when the connection must close after the reply."""
        log.debug("request %s from %s", request.type, connection.credentials.describe())
        if isinstance(request, p.Hello):
            if request.protocol_version != p.PROTOCOL_VERSION:
                connection.post(
                    p.Error(
                        id=request.id,
                        code=p.ErrorCode.UNSUPPORTED_VERSION,
                        message=f"this service speaks protocol version {p.PROTOCOL_VERSION}, "
                        f"not {request.protocol_version}",
                    )
                )
                return False
            connection.greeted = True
            log.info("client %r connected (%s)", request.client, connection.credentials.describe())
            connection.post(
                p.Welcome(
                    id=request.id,
                    protocol_version=p.PROTOCOL_VERSION,
                    service_version=__version__,
                    device_id=self.device_id,
                )
            )
            return True
        if not connection.greeted:
            connection.post(
                p.Error(id=request.id, code=p.ErrorCode.HELLO_REQUIRED, message="send Hello first")
            )
            return True
        try:
            reply = await self._answer(connection, request)
        except TunplugError as exc:
            reply = p.Error(id=request.id, code=p.ErrorCode.UNAVAILABLE, message=str(exc))
        except Exception as exc:  # a bug: answered and logged, the service goes on
            log.exception("%s request failed", request.type)
            reply = p.Error(
                id=request.id,
                code=p.ErrorCode.INTERNAL,
                message=f"{request.type} failed: {exc.__class__.__name__}",
            )
        connection.post(reply)
        return True

    async def _answer(self, connection: _Connection, request: p.Request) -> p.Message:
        if isinstance(request, p.Status):
            return p.StatusReply(id=request.id, status=self.status())
        if isinstance(request, p.Subscribe):
            connection.subscribed = True
            return p.Ok(id=request.id)
        if isinstance(request, p.Connect):
            return self._connect(request)
        if isinstance(request, p.Disconnect):
            return await self._disconnect(request)
        if isinstance(request, p.SetDnsControl):
            return self._set_dns_control(request)
        if isinstance(request, p.SetInternetResource):
            return await self._set_internet_resource(request)
        if isinstance(request, p.ClearLogs):
            return self._clear_logs(request)
        raise AssertionError(request)

    def broadcast(self, message: p.Message) -> None:
        """Send an event to every subscriber."""
        for connection in list(self.connections):
            if connection.subscribed:
                connection.post(message)

    # -- requests ------------------------------------------------------------------------------
    def _refusal(self, request_id: int, code: p.ErrorCode, message: str) -> p.Error:
        return p.Error(id=request_id, code=code, message=message)

    def _managed_refusal(self, request: p.Connect | p.Disconnect) -> p.Error | None:
        if not self.managed_by_token_file():
            return None
        where = (
            "the TUNPLUG_TOKEN variable"
            if self.token_from_environment
            else f"the token file {self.source.token_path}"
        )
        return self._refusal(
            request.id,
            p.ErrorCode.MANAGED_BY_TOKEN_FILE,
            f"{request.type} refused: this tunnel is managed by {where}, which takes "
            "precedence over GUIs; remove it and restart the service to connect from a GUI "
            "(Status and Subscribe still work)",
        )

    def _connect(self, request: p.Connect) -> p.Message:
        refusal = self._managed_refusal(request)
        if refusal:
            return refusal
        if self.stopping:
            return self._refusal(request.id, p.ErrorCode.SHUTTING_DOWN, "the service is stopping")
        if self.tunnel is not None:
            state = "connected" if self.tunnel.ready else "connecting"
            return self._refusal(
                request.id, p.ErrorCode.ALREADY_CONNECTED, f"already {state}: Disconnect first"
            )
        try:
            client = token.decode(request.token, "token")
            loaded = Source.from_token(client, "a GUI")
        except ConfigError as exc:
            return self._refusal(request.id, p.ErrorCode.INVALID_TOKEN, str(exc))
        self._start_tunnel(loaded, "gui")
        return p.Ok(id=request.id, message="connecting")

    async def _disconnect(self, request: p.Disconnect) -> p.Message:
        refusal = self._managed_refusal(request)
        if refusal:
            return refusal
        tunnel = self.tunnel
        if tunnel is None:
            return self._refusal(request.id, p.ErrorCode.NOT_CONNECTED, "no tunnel is running")
        tunnel.scope.cancel()
        await tunnel.done.wait()
        return p.Ok(id=request.id, message="disconnected")

    def _set_dns_control(self, request: p.SetDnsControl) -> p.Message:
        managers = self.app.plugins.dns_managers()
        if request.mode != "auto":
            manager = managers.get(request.mode)
            reason = (
                f"unknown (installed: {', '.join(sorted(managers))})"
                if manager is None
                else manager.unavailable_reason()
            )
            if reason:
                return self._refusal(
                    request.id, p.ErrorCode.UNAVAILABLE, f"DNS control {request.mode!r}: {reason}"
                )
        self.dns_control = request.mode
        log.info("DNS control set to %s", request.mode)
        note = "applies from the next Connect" if self.tunnel is not None else None
        return p.Ok(id=request.id, message=note)

    async def _set_internet_resource(self, request: p.SetInternetResource) -> p.Message:
        self.internet_resource = request.active
        log.info("Internet resource %s by a client", "requested" if request.active else "off")
        control = self.tunnel.control if self.tunnel is not None else None
        if control is None:
            note = "applies from the next Connect" if self.tunnel is not None else None
            if self.tunnel is not None and self.tunnel.source.control is None:
                note = "this tunnel's token has no control channel: no Internet resource"
            return p.Ok(id=request.id, message=note)
        await control.set_internet(request.active)
        internet = control.internet_status()
        if request.active and not internet.offered:
            return p.Ok(id=request.id, message="the gateway does not offer it (yet)")
        return p.Ok(id=request.id, message="active" if internet.active else "off")

    def _clear_logs(self, request: p.ClearLogs) -> p.Message:
        if self.log_file is None:
            return p.Ok(id=request.id, message="no log directory: logs go to stderr only")
        removed = 0
        for path in self.log_file.parent.glob(self.log_file.name + ".*"):
            if path.name.removeprefix(self.log_file.name + ".").isdigit():
                path.unlink(missing_ok=True)
                removed += 1
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self.log_file, 0)  # the handler appends: it goes on at the new end
        log.info("logs cleared by a client (%d rotated file(s) removed)", removed)
        return p.Ok(id=request.id, message=f"log file emptied, {removed} rotated file(s) removed")

    # -- the tunnel ----------------------------------------------------------------------------
    def _start_tunnel(self, loaded: Source, managed_by: Literal["token_file", "gui"]) -> None:
        """Start the tunnel task. :raises ConfigError: the DNS control cannot serve this config."""
        from tunplug.cli.headless import choose_dns_manager, dns_manager

        dns_name = choose_dns_manager(self.app, self.dns_control, loaded)
        dns = dns_manager(self.app, dns_name, self.settings.state_dir)
        tunnel = _Tunnel(loaded, managed_by, dns_name)
        tunnel.control = control_channel(loaded.control, self.internet_resource)
        self.tunnel = tunnel
        self.last_error = None
        log.info(
            "connecting with %s%s",
            loaded.origin,
            f" (client {loaded.client_name!r})" if loaded.client_name else "",
        )
        hooks = InterfaceHooks(
            on_ready=partial(self._on_ready, tunnel),
            dns=dns,
            notifier=Notifier(""),  # READY/STOPPING belong to the service, not the tunnel
            full_tunnel_mark=self.settings.full_tunnel_table,
            background=[
                partial(self._stats, tunnel),
                *failover_tasks(loaded.config, loaded.endpoints),
            ],
            # SetInternetResource may turn the full tunnel on at any time: the socket carries
            # its mark from the start whenever there is a control channel.
            controllers=[tunnel.control.run] if tunnel.control is not None else [],
            mark_socket=tunnel.control is not None,
        )
        self._tasks.start_soon(self._run_tunnel, tunnel, hooks, name="tunnel")

    async def _run_tunnel(self, tunnel: _Tunnel, hooks: InterfaceHooks) -> None:
        error: BaseException | None = None
        try:
            with tunnel.scope:
                await run_interface(
                    self.app,
                    tunnel.source.config,
                    name=self.interface,
                    stop_on_signals=False,
                    hooks=hooks,
                )
        except Exception as exc:  # ends this tunnel, never the service
            error = _leaf(exc)
            if not isinstance(error, TunplugError):
                log.error("tunnel failed", exc_info=error)
        finally:
            message = f"{error}" if error is not None else None
            if message:
                log.error("tunnel down: %s", message)
            else:
                log.info("tunnel down")
            self.tunnel = None
            self.last_error = message
            tunnel.done.set()
            self.broadcast(
                p.Disconnected(error=message, needs_new_token=isinstance(error, ConfigError))
            )
            self.notifier.status("disconnected")
            if (
                error is not None
                and not isinstance(error, ConfigError)
                and tunnel.managed_by == "token_file"
                and not self.stopping
            ):
                delay = self.retry_delays[min(self._failures, len(self.retry_delays) - 1)]
                self._failures += 1
                log.info("trying the token file again in %g s", delay)
                self._tasks.start_soon(self._retry_token_file, delay, name="retry")

    async def _retry_token_file(self, delay: float) -> None:
        """The token file's tunnel failed: start it again after ``delay``, unless that no
        longer makes sense (stopping, already running, the token file gone)."""
        await anyio.sleep(delay)
        if not self.stopping and self.tunnel is None and self.managed_by_token_file():
            self._start_from_token_file()

    def _on_ready(self, tunnel: _Tunnel, running: RunningInterface) -> None:
        tunnel.ready = running
        self._failures = 0
        config = tunnel.source.config
        log.info("tunnel is up on %s (UDP port %d)", running.interface, running.listen_port)
        self.notifier.status(f"connected on {running.interface}")
        self.broadcast(
            p.TunnelReady(
                interface=running.interface,
                addresses=[str(address) for address in config.addresses],
                dns_servers=[str(server) for server in config.dns_servers],
            )
        )

    async def _stats(self, tunnel: _Tunnel, device: WireGuardDevice) -> None:
        tunnel.device = device
        while True:
            await anyio.sleep(self.stats_interval)
            if tunnel.ready is not None:
                self.broadcast(
                    p.StatsUpdate(
                        interface=tunnel.ready.interface,
                        peers=peer_statuses(device),
                        **control_statuses(tunnel.control),
                    )
                )

    def status(self) -> p.TunnelStatus:
        """The tunnel's state for ``StatusReply`` (and ``tunplug status``)."""
        tunnel = self.tunnel
        managed: Literal["token_file"] | None = (
            "token_file" if self.managed_by_token_file() else None
        )
        if tunnel is None:
            return p.TunnelStatus(
                state="disconnected",
                managed_by=managed,
                dns_control=self.dns_control,
                last_error=self.last_error,
            )
        config = tunnel.source.config
        ready = tunnel.ready
        return p.TunnelStatus(
            state="connected" if ready else "connecting",
            managed_by=tunnel.managed_by,
            client_name=tunnel.source.client_name,
            interface=ready.interface if ready else self.interface,
            listen_port=ready.listen_port if ready else None,
            public_key=ready.public_key if ready else None,
            addresses=[str(address) for address in config.addresses],
            dns_servers=[str(server) for server in config.dns_servers],
            dns_control=tunnel.dns_control,
            peers=peer_statuses(tunnel.device) if tunnel.device is not None else [],
            **control_statuses(tunnel.control),
        )


async def _close_gracefully(stream: anyio.abc.SocketStream) -> None:
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


def _leaf(exc: BaseException) -> BaseException:
    """The one error inside nested single-member exception groups (else the group)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
