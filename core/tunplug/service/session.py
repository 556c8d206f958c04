"""The tunnel service's one tunnel: starting it, taking it down, retrying, reporting its state.

Who calls it: :class:`tunplug.service.server.TunnelService` creates one :class:`TunnelSession`
and runs it in its task group (starting the token file's tunnel, reloading on SIGHUP, taking the
tunnel down at shutdown); :class:`tunplug.service.requests.RequestHandler` calls it for
``Connect``, ``Disconnect``, ``Status``, ``SetDnsControl`` and ``SetInternetResource``. Events
(``TunnelReady``, ``StatsUpdate``, ``Disconnected``) go out through the ``broadcast`` callable
the service hands over.

The tunnel is one task running :func:`~tunplug.node.run_interface` inside its own cancel scope:
:meth:`TunnelSession.start` starts it, :meth:`TunnelSession.take_down` cancels it and waits
until routes, DNS and the device are gone. A tunnel that came from the token file and failed
for a reason other than its configuration is started again after :data:`RETRY_DELAYS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import anyio
import anyio.abc

from tunplug.app import App
from tunplug.control import ControlChannel, control_channel
from tunplug.endpoints import failover_tasks
from tunplug.exceptions import ConfigError, TunplugError, single_leaf
from tunplug.headless.sources import ConfigSource, Source
from tunplug.live_tunnel import LiveTunnel
from tunplug.node import InterfaceHooks, RunningInterface, run_interface
from tunplug.service import protocol as p
from tunplug.service.settings import TunnelServiceSettings
from tunplug.service.status_file import control_statuses, peer_statuses
from tunplug.systemd import Notifier

#: The service logs under one name, as before it was split into modules (operators filter on it).
log = logging.getLogger("tunplug.service.server")

#: Seconds between ``StatsUpdate`` events while connected.
STATS_INTERVAL = 1.0
#: Seconds before each new attempt when the token file's tunnel failed for a reason other than
#: its configuration (a taken interface name, a device error); the last one repeats.
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)

ManagedBy = Literal["token_file", "gui"]


@dataclass(eq=False)
class Tunnel:
    """The running (or starting) tunnel."""

    source: Source
    managed_by: ManagedBy
    dns_control: str
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)
    ready: RunningInterface | None = None
    #: The running tunnel, once up (its device is read from it each time: one owner).
    live: LiveTunnel | None = None
    #: The gateway's control channel, when the token has one.
    control: ControlChannel | None = None


class TunnelSession:
    """The one tunnel (or none), and what the next one will use (DNS control, Internet
    resource). Call :meth:`run` in a task group before starting a tunnel."""

    def __init__(
        self,
        app: App,
        settings: TunnelServiceSettings,
        *,
        source: ConfigSource,
        interface: str,
        token_from_environment: bool,
        notifier: Notifier,
        broadcast: Callable[[p.Message], None],
        stats_interval: float = STATS_INTERVAL,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
    ) -> None:
        self.app = app
        self.settings = settings
        self.source = source
        self.interface = interface
        self.token_from_environment = token_from_environment
        self.notifier = notifier
        self.broadcast = broadcast
        self.stats_interval = stats_interval
        self.retry_delays = retry_delays
        self.dns_control = settings.dns_control
        #: ``SetInternetResource``: use the gateway's Internet resource (this and later tunnels).
        self.internet_resource = False
        self.tunnel: Tunnel | None = None
        self.last_error: str | None = None
        self.stopping = False
        self._failures = 0  # token-file tunnel failures in a row (reset once it is up)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Host the tunnel's tasks (the tunnel, a pending retry) until cancelled."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            task_status.started()
            await anyio.sleep_forever()

    # -- the token file ------------------------------------------------------------------------
    def managed_by_token_file(self) -> bool:
        """Whether a token file (or ``TUNPLUG_TOKEN``) decides the tunnel, not GUIs."""
        return self.token_from_environment or self.source.token_path.exists()

    def start_from_token_file(self) -> None:
        """Connect with the token file; a failure is logged and kept as :attr:`last_error`."""
        try:
            loaded = self.source.load()
            self.start(loaded, "token_file")
        except TunplugError as exc:
            self.last_error = str(exc)
            log.error("cannot connect with the token file: %s", exc)

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
        await self.take_down()
        log.info("reload: reconnecting with the token file")
        self._failures = 0
        self.start_from_token_file()

    async def _retry_token_file(self, delay: float) -> None:
        """The token file's tunnel failed: start it again after ``delay``, unless that no
        longer makes sense (stopping, already running, the token file gone)."""
        await anyio.sleep(delay)
        if not self.stopping and self.tunnel is None and self.managed_by_token_file():
            self.start_from_token_file()

    # -- changes from clients ------------------------------------------------------------------
    def set_dns_control(self, mode: str) -> str | None:
        """Use ``mode`` from the next tunnel on; or why it cannot be used (nothing changes)."""
        managers = self.app.plugins.dns_managers()
        if mode != "auto":
            manager = managers.get(mode)
            reason = (
                f"unknown (installed: {', '.join(sorted(managers))})"
                if manager is None
                else manager.unavailable_reason()
            )
            if reason:
                return f"DNS control {mode!r}: {reason}"
        self.dns_control = mode
        log.info("DNS control set to %s", mode)
        return None

    async def set_internet_resource(self, active: bool) -> str | None:
        """Use the gateway's Internet resource (or not), now if the tunnel can; a note for the
        client on what happened."""
        self.internet_resource = active
        log.info("Internet resource %s by a client", "requested" if active else "off")
        control = self.tunnel.control if self.tunnel is not None else None
        if control is None:
            note = "applies from the next Connect" if self.tunnel is not None else None
            if self.tunnel is not None and self.tunnel.source.control is None:
                note = "this tunnel's token has no control channel: no Internet resource"
            return note
        await control.set_internet(active)
        internet = control.internet_status()
        if active and not internet.offered:
            return "the gateway does not offer it (yet)"
        return "active" if internet.active else "off"

    # -- the tunnel ----------------------------------------------------------------------------
    def start(self, loaded: Source, managed_by: ManagedBy) -> None:
        """Start the tunnel task. :raises ConfigError: the DNS control cannot serve this config."""
        from tunplug.headless.dns_control import choose_dns_manager, dns_manager

        dns_name = choose_dns_manager(self.app, self.dns_control, loaded)
        dns = dns_manager(self.app, dns_name, self.settings.state_dir)
        tunnel = Tunnel(loaded, managed_by, dns_name)
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
        self._tasks.start_soon(self._run, tunnel, hooks, name="tunnel")

    async def take_down(self) -> None:
        """Cancel the tunnel, if any, and wait until it is gone."""
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.scope.cancel()
            await tunnel.done.wait()

    async def close(self) -> None:
        """The service is stopping: take the tunnel down and start no other."""
        self.stopping = True
        await self.take_down()

    async def _run(self, tunnel: Tunnel, hooks: InterfaceHooks) -> None:
        error: BaseException | None = None
        try:
            with tunnel.scope:
                await run_interface(
                    self.app,
                    tunnel.source.config,
                    name=self.interface,
                    role="service",
                    stop_on_signals=False,
                    hooks=hooks,
                )
        except Exception as exc:  # ends this tunnel, never the service
            error = single_leaf(exc)
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

    def _on_ready(self, tunnel: Tunnel, running: RunningInterface) -> None:
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

    async def _stats(self, tunnel: Tunnel, live: LiveTunnel) -> None:
        tunnel.live = live
        while True:
            await anyio.sleep(self.stats_interval)
            if tunnel.ready is not None:
                self.broadcast(
                    p.StatsUpdate(
                        interface=tunnel.ready.interface,
                        peers=peer_statuses(live.device),
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
            peers=peer_statuses(tunnel.live.device) if tunnel.live is not None else [],
            **control_statuses(tunnel.control),
        )
