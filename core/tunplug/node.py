"""Run one WireGuard interface from a wg-quick configuration until told to stop.

Who calls it: the headless client, the gateway (:mod:`tunplug.gateway.server`) and the tunnel
service (:mod:`tunplug.service.server`). It builds everything from the config, runs the
:class:`~tunplug.engine.TunnelEngine`, and on any exit (SIGINT, SIGTERM, error) takes it all
down again: DNS settings, policy rules, routes, addresses and the device (which the kernel
deletes once tunplug's descriptors close, also after SIGKILL). :class:`InterfaceHooks` holds the
optional parts: reload on SIGHUP, DNS, systemd notifications, ``--exit``, background tasks,
and controllers (:class:`LiveTunnel`: the control channel changes routes and DNS of the running
tunnel through the same operation as a reload).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, fields, replace
from dataclasses import field as dc_field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Protocol

import anyio
import anyio.abc

from tunplug.app import App
from tunplug.datapath import DataPath, PythonDataPath, TunnelRunner
from tunplug.dns import DnsManager, DnsSettings
from tunplug.engine import TunnelEngine
from tunplug.events import TunnelInfo
from tunplug.exceptions import ConfigError, TunplugError
from tunplug.systemd import Notifier
from tunplug.transport import UdpTransport
from tunplug.tun import DEFAULT_MTU, Tun, TunOptions
from tunplug.wgquick import WgQuickConfig
from tunplug.wireguard import PeerConfig, Timing, WireGuardDevice
from tunplug.wireguard.keys import format_key

log = logging.getLogger(__name__)

Network = IPv4Network | IPv6Network


@dataclass(frozen=True, slots=True)
class RunningInterface:
    """Handed to ``on_ready`` once traffic can flow."""

    interface: str
    listen_port: int
    public_key: str
    queues: int
    full_tunnel: bool = False


def parse_test_timers(text: str) -> Timing:
    """``"rekey_after_time=5,keepalive_timeout=2"`` -> :class:`Timing` (test-only setting)."""
    defaults = Timing()
    names = [field.name for field in fields(Timing)]
    timing = defaults
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name not in names:
            raise ConfigError("TUNPLUG_TEST_TIMERS", f"unknown timer {name!r} ({', '.join(names)})")
        try:
            # Each value takes the type of the whitepaper default (seconds float, counts int).
            timing = replace(timing, **{name: type(getattr(defaults, name))(value)})
        except ValueError:
            raise ConfigError("TUNPLUG_TEST_TIMERS", f"{name}: not a number: {value!r}") from None
    return timing


def peer_configs(config: WgQuickConfig) -> list[PeerConfig]:
    """The protocol's view of each ``[Peer]`` section."""
    return [
        PeerConfig(
            public_key=peer.public_key,
            preshared_key=peer.preshared_key,
            endpoint=peer.endpoint,
            allowed_ips=peer.allowed_ips,
            persistent_keepalive=peer.persistent_keepalive,
        )
        for peer in config.peers
    ]


def build_device(
    app: App, config: WgQuickConfig, data_path: DataPath | None = None
) -> WireGuardDevice:
    """The sans-IO WireGuard device with every peer of ``config``; its sessions' AEADs come
    from ``data_path`` (default: the pure-Python one)."""
    timing = parse_test_timers(app.settings.test_timers)
    crypto = app.crypto()
    data_path = data_path or PythonDataPath()
    # The engine sends each batch's output before it encrypts the next: encrypt() may reuse
    # one buffer for the messages.
    device = WireGuardDevice(
        config.private_key,
        crypto,
        timing=timing,
        mtu=config.mtu or DEFAULT_MTU,
        reuse_send_buffer=True,
        transport_aead=lambda key: data_path.transport_aead(key, crypto),
        replay_window=data_path.replay_windows(),
    )
    for peer in peer_configs(config):
        device.add_peer(peer)
    return device


def allowed_networks(config: WgQuickConfig) -> list[Network]:
    """Every peer's AllowedIPs, each once, in order."""
    return list(dict.fromkeys(network for peer in config.peers for network in peer.allowed_ips))


def is_full_tunnel(config: WgQuickConfig) -> bool:
    """Whether a peer takes a whole address family (``0.0.0.0/0`` or ``::/0``)."""
    return any(network.prefixlen == 0 for network in allowed_networks(config))


def restart_needed(
    old: WgQuickConfig, new: WgQuickConfig, *, full_tunnel_switchable: bool = False
) -> list[str]:
    """The settings a reload cannot apply to a running device (a restart is needed).

    ``full_tunnel_switchable``: the UDP socket carries the full-tunnel mark from the start, so
    the full tunnel can be turned on and off while running.
    """
    changed = []
    if old.addresses != new.addresses:
        changed.append("Address")
    if (old.mtu or DEFAULT_MTU) != (new.mtu or DEFAULT_MTU):
        changed.append("MTU")
    if old.listen_port != new.listen_port:
        changed.append("ListenPort")
    if not full_tunnel_switchable and is_full_tunnel(old) != is_full_tunnel(new):
        changed.append("full tunnel (0.0.0.0/0 or ::/0 in AllowedIPs)")
    return changed


@dataclass(frozen=True, slots=True)
class RoutingDns:
    """DNS servers for the names under ``domains`` only (routing domains: the gateway's DNS
    resources); every other name resolves as it did before the tunnel."""

    servers: tuple[IPv4Address | IPv6Address, ...] = ()
    domains: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Applied:
    """What :meth:`LiveTunnel.update` changed on the running tunnel."""

    routes_added: tuple[Network, ...] = ()
    routes_removed: tuple[Network, ...] = ()
    dns_changed: bool = False
    #: The full tunnel's new state when it was turned on or off, else ``None``.
    full_tunnel: bool | None = None


class LiveTunnel(Protocol):
    """The running tunnel as a controller (:attr:`InterfaceHooks.controllers`) sees it.

    The runner owns the configuration: a controller reads it and hands a changed copy to
    :meth:`update`, the operation SIGHUP uses, which keeps the device and its sessions.
    """

    @property
    def interface(self) -> str:
        """The interface name."""

    @property
    def config(self) -> WgQuickConfig:
        """The configuration the tunnel runs now."""

    @property
    def routing_dns(self) -> RoutingDns:
        """The routing-only DNS applied now."""

    @property
    def device(self) -> WireGuardDevice:
        """The sans-IO device (for handshake times)."""

    async def update(self, config: WgQuickConfig, routing_dns: RoutingDns | None = None) -> Applied:
        """Apply ``config`` (peers, routes, DNS, the full tunnel when the socket allows it)
        and ``routing_dns`` (``None``: unchanged) without recreating the device.

        :raises ConfigError: a setting that needs a restart changed (addresses, MTU, port).
        :raises TunplugError: the system refused a route or the DNS change.
        """


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
    #: Tasks that run beside the engine once the tunnel is up (the gateway's registry poll,
    #: stats writer and metrics server); each gets the running device. One failing ends the run.
    background: Sequence[Callable[[WireGuardDevice], Coroutine[Any, Any, None]]] = ()
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
    role: str = "client",
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


class _Runner:
    """One interface from start to finish; keeps what a reload must compare and change."""

    def __init__(
        self, app: App, config: WgQuickConfig, name: str | None, role: str, hooks: InterfaceHooks
    ) -> None:
        self.app = app
        self.config = config
        self.name = name
        self.role = role
        self.hooks = hooks
        self.data_path = app.data_path()
        self.device = build_device(app, config, self.data_path)
        self.full_tunnel = is_full_tunnel(config)
        self.mark = hooks.full_tunnel_mark if self.full_tunnel or hooks.mark_socket else None
        self.dns_active = False
        self.routing_dns = RoutingDns()

    @property
    def interface(self) -> str:
        return self.tun.name

    def _dns_settings(self, interface: str, config: WgQuickConfig) -> DnsSettings:
        return DnsSettings(
            interface=interface,
            servers=config.dns_servers,
            domains=config.dns_domains,
            # Every query to the tunnel only when it has servers for every query.
            full_tunnel=self.full_tunnel and bool(config.dns_servers),
            routing_servers=self.routing_dns.servers,
            routing_domains=self.routing_dns.domains,
        )

    def _wants_dns(self, config: WgQuickConfig) -> bool:
        return self.hooks.dns is not None and bool(
            config.dns_servers or (self.routing_dns.servers and self.routing_dns.domains)
        )

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
            role=self.role,  # type: ignore[arg-type]
            queues=tun.queues,
            addresses=config.addresses,
            peers=len(config.peers),
            peer_name=hooks.peer_name,
        )
        pipeline = app.pipeline(info)
        engine = self.engine = self.data_path.engine(
            tun, transport, self.device, pipeline
        ) or TunnelEngine(tun, transport, self.device, pipeline)
        error: BaseException | None = None
        ready = RunningInterface(
            tun.name,
            transport.local_endpoint[1],
            format_key(self.device.public_key),
            tun.queues,
            self.full_tunnel,
        )
        udp = transport.stats()
        log.info(
            "interface %s up: %s data path%s, %d queue(s), TUN offloads %s, UDP GSO %s / GRO %s, "
            "UDP port %d, %d peer(s), public key %s%s",
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
        if hooks.dns is not None and self._wants_dns(config):
            await hooks.dns.activate(self._dns_settings(tun.name, config))
            self.dns_active = True
        app.plugins.notify_tunnel_up(info)
        if hooks.exit_after_handshake is not None:
            # --exit: handshake at once rather than at the first packet. Not by default: an
            # initiation sent before the peer listens delays the first packets' handshake by
            # REKEY_TIMEOUT (5 s), as in any WireGuard implementation.
            self.device.connect()
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(engine.run, name="engine")
                engine.wake_timers()
                tasks.start_soon(self._watch_handshakes, tasks.cancel_scope, name="handshakes")
                if stop_on_signals:
                    # start(), not start_soon(): the handlers must be in place before "tunnel
                    # is up" is announced, or an early SIGINT is a bare KeyboardInterrupt.
                    await tasks.start(self._signals, tasks.cancel_scope, name="signals")
                for task in hooks.background:
                    tasks.start_soon(task, self.device, name=getattr(task, "__name__", "task"))
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
            hooks.notifier.stopping()
            app.plugins.notify_tunnel_down(info, error)
            _log_summary(self.device, engine)
            log.info("interface %s going down", tun.name)

    async def _dns_off(self) -> None:
        if self.hooks.dns is not None and self.dns_active:
            try:
                await self.hooks.dns.deactivate()
            except TunplugError as exc:
                log.error("could not restore DNS settings: %s", exc)
            self.dns_active = False

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
        """SIGHUP: re-read the configuration and apply it without recreating the device."""
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
            hooks.notifier.status(f"{self.tun.name} up")

    async def update(self, config: WgQuickConfig, routing_dns: RoutingDns | None = None) -> Applied:
        """:meth:`LiveTunnel.update`: a controller's change, applied as a reload is."""
        changed = restart_needed(self.config, config, full_tunnel_switchable=self.mark is not None)
        if changed:
            raise ConfigError("control", f"{', '.join(changed)} cannot change while running")
        return await self._apply(config, routing_dns)

    async def _apply(self, new: WgQuickConfig, routing_dns: RoutingDns | None = None) -> Applied:
        """The one operation that changes the running tunnel's configuration (SIGHUP and the
        controllers): peers updated in place, routes diffed, the full tunnel switched, DNS
        re-applied only when it changed."""
        old = self.config
        old_routing = self.routing_dns
        routing_dns = old_routing if routing_dns is None else routing_dns
        if new.private_key != old.private_key:
            # A new identity: a new device (sessions start over); the interface stays.
            self.device = build_device(self.app, new, self.data_path)
            self.engine.processor = self.device
        else:
            wanted = peer_configs(new)
            keep = {peer.public_key for peer in wanted}
            configured = {peer.public_key: peer.endpoint for peer in old.peers}
            for peer in self.device.peer_stats():
                if peer.public_key not in keep:
                    self.device.remove_peer(peer.public_key)
            for peer_config in wanted:
                if configured.get(peer_config.public_key, False) == peer_config.endpoint:
                    # An endpoint the configuration did not change keeps the device's current
                    # one (roaming, endpoint failover).
                    peer_config = replace(peer_config, endpoint=None)
                self.device.add_peer(peer_config)  # updates in place, sessions kept
        old_routes = [n for n in allowed_networks(old) if n.prefixlen]
        new_routes = [n for n in allowed_networks(new) if n.prefixlen]
        removed = tuple(n for n in old_routes if n not in set(new_routes))
        added = tuple(n for n in new_routes if n not in set(old_routes))
        await self.tun.remove_routes(removed)
        await self.tun.add_routes(added)
        full = is_full_tunnel(new)
        switched = None
        if full != self.full_tunnel:
            assert self.mark is not None  # restart_needed refuses it otherwise
            if full:
                defaults = [n for n in allowed_networks(new) if not n.prefixlen]
                await self.tun.route_all_traffic(defaults, self.mark)
            else:
                # The default routes of the mark's table go; its two rules stay until the
                # device closes, and without routes in the table they send nothing there.
                await self.tun.remove_routes([n for n in allowed_networks(old) if not n.prefixlen])
            self.full_tunnel = switched = full
        self.config = new
        self.routing_dns = routing_dns
        dns_changed = (old.dns_servers, old.dns_domains, old_routing) != (
            new.dns_servers,
            new.dns_domains,
            routing_dns,
        ) or (switched is not None and bool(new.dns_servers))
        if dns_changed:
            await self._dns_off()
            if self.hooks.dns is not None and self._wants_dns(new):
                await self.hooks.dns.activate(self._dns_settings(self.tun.name, new))
                self.dns_active = True
        return Applied(added, removed, dns_changed, switched)

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
