"""Run one WireGuard interface from a wg-quick configuration until told to stop.

Who calls it: the headless client, the gateway (:mod:`tunplug.gateway.server`) and the tunnel
service (:mod:`tunplug.service.server`). It builds everything from the config, runs the
:class:`~tunplug.engine.TunnelEngine`, and on any exit (SIGINT, SIGTERM, error) takes it all
down again: DNS settings, policy rules, routes, addresses and the device (which the kernel
deletes once tunplug's descriptors close, also after SIGKILL). :class:`InterfaceHooks` holds the
optional parts: reload on SIGHUP, DNS, systemd notifications, ``--exit``, background tasks,
and controllers. The running tunnel they all get, and the one operation that changes it (a
reload, the control channel's routes and DNS), are :mod:`tunplug.live_tunnel`'s.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import anyio
import anyio.abc

from tunplug.app import App
from tunplug.datapath import TunnelRunner
from tunplug.dns import DnsManager
from tunplug.engine import TunnelEngine
from tunplug.events import Role, TunnelInfo
from tunplug.exceptions import TunplugError
from tunplug.live_tunnel import (
    LiveTunnel,
    RunningTunnel,
    allowed_networks,
    is_full_tunnel,
    restart_needed,
)
from tunplug.systemd import Notifier
from tunplug.transport import UdpTransport
from tunplug.tun import DEFAULT_MTU, Tun, TunOptions
from tunplug.wgquick import WgQuickConfig
from tunplug.wireguard import WireGuardDevice
from tunplug.wireguard.keys import format_key

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunningInterface:
    """Handed to ``on_ready`` once traffic can flow."""

    interface: str
    listen_port: int
    public_key: str
    queues: int
    full_tunnel: bool = False


@dataclass(slots=True)
class InterfaceHooks:
    """Optional parts of a run: what a service adds around the tunnel.

    ``reload`` re-reads the configuration on SIGHUP (``None``: SIGHUP is ignored).
    ``dns`` points the resolver at the config's DNS servers while the tunnel runs.
    ``exit_after_handshake``: seconds to wait for a handshake with every peer, then stop with
    success (``--exit``); failing to connect in time is an error.
    """

    on_ready: Callable[[RunningInterface], None] | None = None
    reload: Callable[[], WgQuickConfig] | None = None
    dns: DnsManager | None = None
    notifier: Notifier = dc_field(default_factory=lambda: Notifier(""))
    full_tunnel_mark: int = 51820
    exit_after_handshake: float | None = None
    #: Tasks that run beside the engine once the tunnel is up (the status file, the gateway's
    #: registry poll, stats writer and metrics server); each gets the running tunnel and reads
    #: its :attr:`~LiveTunnel.device` each time (a reload with a new private key replaces it).
    #: One failing ends the run.
    background: Sequence[Callable[[LiveTunnel], Coroutine[Any, Any, None]]] = ()
    #: Tunnel address -> peer name, for plugins (:attr:`TunnelInfo.peer_name`).
    peer_name: Callable[[str], str | None] | None = None
    #: Tasks that run beside the engine and change the running tunnel through
    #: :meth:`LiveTunnel.update` (the control channel, :mod:`tunplug.control`).
    controllers: Sequence[Callable[[LiveTunnel], Coroutine[Any, Any, None]]] = ()
    #: Bind the UDP socket with ``full_tunnel_mark`` even when the configuration is not a full
    #: tunnel, so that a controller can turn the full tunnel on later (a mark no rule looks at
    #: changes nothing).
    mark_socket: bool = False


async def run_interface(
    app: App,
    config: WgQuickConfig,
    *,
    name: str | None,
    role: Role = "client",
    on_ready: Callable[[RunningInterface], None] | None = None,
    stop_on_signals: bool = True,
    hooks: InterfaceHooks | None = None,
) -> None:
    """Bring the interface up, carry traffic until SIGINT/SIGTERM, then take it all down.

    :raises ConnectTimeout: ``exit_after_handshake`` ran out before every peer connected.
    """
    hooks = hooks or InterfaceHooks()
    if on_ready is not None:
        hooks.on_ready = on_ready
    await _Runner(app, config, name, role, hooks).run(stop_on_signals)


class ConnectTimeout(TunplugError):
    """``--exit``: the peers did not complete a handshake in time."""


class _Runner(RunningTunnel):
    """One interface from start to finish: the :class:`RunningTunnel` (configuration, device,
    the one operation that changes them) brought up, served, reloaded on SIGHUP and taken
    down."""

    def __init__(
        self, app: App, config: WgQuickConfig, name: str | None, role: Role, hooks: InterfaceHooks
    ) -> None:
        marked = is_full_tunnel(config) or hooks.mark_socket
        super().__init__(
            app, config, dns=hooks.dns, mark=hooks.full_tunnel_mark if marked else None
        )
        self.name = name
        self.role = role
        self.hooks = hooks

    async def run(self, stop_on_signals: bool) -> None:
        app, config = self.app, self.config
        settings = app.settings
        options = TunOptions(
            name=self.name,
            mtu=config.mtu or DEFAULT_MTU,
            queues=settings.tun_threads,
            batch_size=settings.batch_size,
            offloads=settings.offloads,
            addresses=config.addresses,
            packet_ops=self.data_path.packet_ops(),
        )
        app.configure()
        mark = self.mark
        async with await app.open_tun(options) as tun:
            self.tun = tun
            networks = allowed_networks(config)
            await tun.add_routes([network for network in networks if network.prefixlen])
            if self.full_tunnel:
                assert mark is not None
                await tun.route_all_traffic(networks, mark)
            async with UdpTransport.bind(
                config.listen_port or 0, offloads=settings.offloads, fwmark=mark
            ) as transport:
                try:
                    await self._serve(tun, transport, stop_on_signals)
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._dns_off()

    async def _serve(self, tun: Tun, transport: UdpTransport, stop_on_signals: bool) -> None:
        app, config, hooks = self.app, self.config, self.hooks
        info = TunnelInfo(
            interface=tun.name,
            tun_backend=tun.backend_name,
            role=self.role,
            queues=tun.queues,
            addresses=config.addresses,
            peers=len(config.peers),
            peer_name=hooks.peer_name,
        )
        pipeline = app.pipeline(info)
        error: BaseException | None = None
        up = False  # announced: tunplug_tunnel_up was called
        try:
            # The engines take the runner itself: it tells them when a reload replaces the
            # device (a new private key).
            engine = self.engine = self.data_path.engine(
                tun, transport, self, pipeline
            ) or TunnelEngine(tun, transport, self, pipeline)
            ready = RunningInterface(
                tun.name,
                transport.local_endpoint[1],
                format_key(self.device.public_key),
                tun.queues,
                self.full_tunnel,
            )
            udp = transport.stats()
            log.info(
                "interface %s up: %s data path%s, %d queue(s), TUN offloads %s, "
                "UDP GSO %s / GRO %s, UDP port %d, %d peer(s), public key %s%s",
                tun.name,
                self.data_path.name,
                f" ({app.data_path_note})" if app.data_path_note else "",
                tun.queues,
                "on" if tun.offloads else "off",
                "on" if udp.gso_enabled else "off",
                "on" if udp.gro_enabled else "off",
                ready.listen_port,
                len(config.peers),
                ready.public_key,
                ", full tunnel" if self.full_tunnel else "",
            )
            await self._dns_on(config)
            app.plugins.notify_tunnel_up(info)
            up = True
            if hooks.exit_after_handshake is not None:
                # --exit: handshake at once rather than at the first packet. Not by default: an
                # initiation sent before the peer listens delays the first packets' handshake
                # by REKEY_TIMEOUT (5 s), as in any WireGuard implementation.
                self.device.connect()
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(engine.run, name="engine")
                engine.wake_timers()
                tasks.start_soon(self._watch_handshakes, tasks.cancel_scope, name="handshakes")
                if stop_on_signals:
                    # start(), not start_soon(): the handlers must be in place before "tunnel
                    # is up" is announced, or an early SIGINT is a bare KeyboardInterrupt.
                    await tasks.start(self._signals, tasks.cancel_scope, name="signals")
                for task in hooks.background:
                    tasks.start_soon(task, self, name=getattr(task, "__name__", "task"))
                for controller in hooks.controllers:
                    name = getattr(controller, "__name__", "controller")
                    tasks.start_soon(controller, self, name=name)
                hooks.notifier.ready(f"{tun.name} up, waiting for a handshake")
                if hooks.on_ready is not None:
                    hooks.on_ready(ready)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if up:
                hooks.notifier.stopping()
            # The engine has stopped (its task group is done): no batch reaches a stage after
            # this, and the plugins' tunnel-down hook sees the stages closed.
            pipeline.close()
            if up:
                app.plugins.notify_tunnel_down(info, error)
                _log_summary(self.device, engine)
                log.info("interface %s going down", tun.name)

    async def _signals(
        self,
        scope: anyio.CancelScope,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self._reload()
                    continue
                log.info("received %s: shutting down", signal.Signals(signum).name)
                scope.cancel()
                return

    async def _reload(self) -> None:
        """SIGHUP: re-read the configuration and apply it; the device stays unless the private
        key changed."""
        hooks = self.hooks
        if hooks.reload is None:
            log.info("received SIGHUP: nothing to reload")
            return
        hooks.notifier.reloading()
        try:
            new = hooks.reload()
            changed = restart_needed(self.config, new, full_tunnel_switchable=self.mark is not None)
            if changed:
                log.error(
                    "received SIGHUP: %s changed, which needs a restart; "
                    "still running the previous configuration",
                    ", ".join(changed),
                )
                return
            old = self.config
            await self._apply(new)
            log.info(
                "received SIGHUP: configuration reloaded (%d peer(s)%s)",
                len(new.peers),
                ", new private key" if new.private_key != old.private_key else "",
            )
        except TunplugError as exc:
            log.error("received SIGHUP: reload failed, still running the previous one: %s", exc)
        finally:
            # READY=1 ends the reload systemd was told of (RELOADING=1), whatever its outcome.
            hooks.notifier.ready(f"{self.tun.name} up")

    async def _watch_handshakes(self, scope: anyio.CancelScope) -> None:
        """Log each completed handshake once, from a timer (never from the packet path).

        Also keeps systemd's STATUS= current, and ends the run for ``--exit``.
        """
        seen: dict[bytes, float | None] = {}
        deadline = None
        if self.hooks.exit_after_handshake is not None:
            deadline = anyio.current_time() + self.hooks.exit_after_handshake
        while True:
            looked = time.perf_counter()
            peers = self.device.peer_stats()
            for peer in peers:
                if (
                    peer.last_handshake is not None
                    and seen.get(peer.public_key) != peer.last_handshake
                ):
                    first = peer.public_key not in seen
                    seen[peer.public_key] = peer.last_handshake
                    endpoint = f"{peer.endpoint[0]}:{peer.endpoint[1]}" if peer.endpoint else "?"
                    log.log(
                        logging.INFO if first else logging.DEBUG,
                        "handshake complete with peer %s at %s",
                        format_key(peer.public_key)[:8] + "...",
                        endpoint,
                    )
                    connected = sum(1 for p in peers if p.last_handshake is not None)
                    self.hooks.notifier.status(
                        f"{self.tun.name} up, {connected} of {len(peers)} peer(s) connected"
                    )
            if deadline is not None:
                if peers and all(peer.last_handshake is not None for peer in peers):
                    log.info("connected to every peer: exiting as asked (--exit)")
                    scope.cancel()
                    return
                if anyio.current_time() > deadline:
                    raise ConnectTimeout(
                        f"no handshake with every peer within {self.hooks.exit_after_handshake:g} s"
                        " (is the peer's endpoint reachable and its key right?)"
                    )
            # A look costs O(peers), 37 ms for a gateway's 10,000: at most 1% of a core.
            await anyio.sleep(max(HANDSHAKE_LOG_INTERVAL, 100 * (time.perf_counter() - looked)))


def _log_summary(device: WireGuardDevice, engine: TunnelRunner) -> None:
    """One line per peer and one for drops, at shutdown: what an operator asks first."""
    for peer in device.peer_stats():
        log.info(
            "peer %s: %d bytes received, %d bytes sent",
            format_key(peer.public_key)[:8] + "...",
            peer.rx_bytes,
            peer.tx_bytes,
        )
    stats = engine.stats
    drops = ", ".join(f"{reason} {count}" for reason, count in device.drops.most_common())
    log.info(
        "%d packets read from the device in %d batches, %d written from %d datagram batches; "
        "dropped: %s",
        stats.tun_packets_read,
        stats.batches_out,
        stats.tun_packets_written,
        stats.batches_in,
        drops or "none",
    )


#: How often the handshake log looks at the peers (not per packet: a timer).
HANDSHAKE_LOG_INTERVAL = 0.5
