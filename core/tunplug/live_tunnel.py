"""The running tunnel: its configuration, its current device, and the one operation that
changes them.

Who calls it: :mod:`tunplug.node`, whose runner is a :class:`RunningTunnel` (and adds bringing
the interface up and down); the engines, which subscribe to it as the
:class:`~tunplug.engine.DeviceOwner`; and, as a :class:`LiveTunnel`, the background tasks and
controllers of :class:`~tunplug.node.InterfaceHooks` (the status file, the gateway's registry
poll, stats and metrics, the endpoint failover; the control channel of :mod:`tunplug.control`).

One owner: the configuration, routes, DNS and device change only through
:meth:`RunningTunnel.update` and SIGHUP's reload, which share one operation. A new private key
replaces the device there, and the engines are told at once; everyone else reads
:attr:`LiveTunnel.device` each time they use it, so nobody keeps a discarded device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Protocol

from tunplug.app import App
from tunplug.datapath import DataPath, PythonDataPath
from tunplug.dns import DnsManager, DnsSettings
from tunplug.exceptions import ConfigError, TunplugError
from tunplug.tun import DEFAULT_MTU, Tun
from tunplug.wgquick import WgQuickConfig
from tunplug.wireguard import PeerConfig, Timing, WireGuardDevice

log = logging.getLogger(__name__)

Network = IPv4Network | IPv6Network


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
    """The running tunnel as a background task or controller sees it
    (:class:`~tunplug.node.InterfaceHooks`).

    The tunnel owns its configuration and device: read them here each time they are used (a
    reload may replace the device), and hand a changed configuration to :meth:`update`, the
    operation SIGHUP uses.
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
        """The sans-IO device the tunnel runs now (peers, handshake times, counters, its
        public key); a reload with a new private key replaces it."""

    async def update(self, config: WgQuickConfig, routing_dns: RoutingDns | None = None) -> Applied:
        """Apply ``config`` (peers, routes, DNS, the full tunnel when the socket allows it)
        and ``routing_dns`` (``None``: unchanged); the device and its sessions stay unless the
        private key changed.

        :raises ConfigError: a setting that needs a restart changed (addresses, MTU, port).
        :raises TunplugError: the system refused a route or the DNS change.
        """


class RunningTunnel:
    """A tunnel's configuration and device while it runs, and the one operation that changes
    them (:meth:`_apply`, behind :meth:`update` and SIGHUP). It is the :class:`LiveTunnel` and
    the engines' :class:`~tunplug.engine.DeviceOwner`.

    ``mark``: the full-tunnel firewall mark the UDP socket carries (``None``: no mark, the full
    tunnel cannot be switched on while running). :attr:`tun` is set by whoever opens the
    interface, before anything is applied.
    """

    tun: Tun

    def __init__(
        self, app: App, config: WgQuickConfig, *, dns: DnsManager | None, mark: int | None
    ) -> None:
        self.app = app
        self.config = config
        self.dns = dns
        self.mark = mark
        self.data_path = app.data_path()
        self._device = build_device(app, config, self.data_path)
        self._on_replaced: list[Callable[[WireGuardDevice], None]] = []
        self.full_tunnel = is_full_tunnel(config)
        self.dns_active = False
        self.routing_dns = RoutingDns()

    @property
    def interface(self) -> str:
        return self.tun.name

    @property
    def device(self) -> WireGuardDevice:
        return self._device

    def subscribe(self, on_replaced: Callable[[WireGuardDevice], None]) -> None:
        """:meth:`~tunplug.engine.DeviceOwner.subscribe`: the engines."""
        self._on_replaced.append(on_replaced)

    def _replace_device(self, device: WireGuardDevice) -> None:
        """The one place the device changes: whoever reads :attr:`device` from now on gets
        ``device``, and the engines switch to it before their next batch."""
        self._device = device
        for on_replaced in self._on_replaced:
            on_replaced(device)

    async def update(self, config: WgQuickConfig, routing_dns: RoutingDns | None = None) -> Applied:
        """:meth:`LiveTunnel.update`: a controller's change, applied as a reload is."""
        changed = restart_needed(self.config, config, full_tunnel_switchable=self.mark is not None)
        if changed:
            raise ConfigError("control", f"{', '.join(changed)} cannot change while running")
        return await self._apply(config, routing_dns)

    async def _apply(self, new: WgQuickConfig, routing_dns: RoutingDns | None = None) -> Applied:
        """The one operation that changes the running tunnel's configuration (SIGHUP and the
        controllers): a new device for a new private key, else peers updated in place; routes
        diffed, the full tunnel switched, DNS re-applied only when it changed."""
        old = self.config
        old_routing = self.routing_dns
        routing_dns = old_routing if routing_dns is None else routing_dns
        if new.private_key != old.private_key:
            # A new identity: a new device (sessions start over); the interface stays.
            self._replace_device(build_device(self.app, new, self.data_path))
        else:
            device = self._device
            wanted = peer_configs(new)
            keep = {peer.public_key for peer in wanted}
            configured = {peer.public_key: peer.endpoint for peer in old.peers}
            for peer in device.peer_stats():
                if peer.public_key not in keep:
                    device.remove_peer(peer.public_key)
            for peer_config in wanted:
                if configured.get(peer_config.public_key, False) == peer_config.endpoint:
                    # An endpoint the configuration did not change keeps the device's current
                    # one (roaming, endpoint failover).
                    peer_config = replace(peer_config, endpoint=None)
                device.add_peer(peer_config)  # updates in place, sessions kept
        old_routes = [n for n in allowed_networks(old) if n.prefixlen]
        new_routes = [n for n in allowed_networks(new) if n.prefixlen]
        old_set, new_set = set(old_routes), set(new_routes)
        removed = tuple(n for n in old_routes if n not in new_set)
        added = tuple(n for n in new_routes if n not in old_set)
        # Only when there is something to change: a backend that manages no routes (the fake
        # one, WinTun and utun cannot remove any) still reloads everything else.
        if removed:
            await self.tun.remove_routes(removed)
        if added:
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
            await self._dns_on(new)
        return Applied(added, removed, dns_changed, switched)

    # -- DNS ----------------------------------------------------------------------------------
    def _dns_settings(self, config: WgQuickConfig) -> DnsSettings:
        return DnsSettings(
            interface=self.interface,
            servers=config.dns_servers,
            domains=config.dns_domains,
            # Every query to the tunnel only when it has servers for every query.
            full_tunnel=self.full_tunnel and bool(config.dns_servers),
            routing_servers=self.routing_dns.servers,
            routing_domains=self.routing_dns.domains,
        )

    def _wants_dns(self, config: WgQuickConfig) -> bool:
        return self.dns is not None and bool(
            config.dns_servers or (self.routing_dns.servers and self.routing_dns.domains)
        )

    async def _dns_on(self, config: WgQuickConfig) -> None:
        """Point the resolver at ``config``'s DNS (and the routing DNS), when there is any."""
        if self.dns is not None and self._wants_dns(config):
            await self.dns.activate(self._dns_settings(config))
            self.dns_active = True

    async def _dns_off(self) -> None:
        if self.dns is not None and self.dns_active:
            try:
                await self.dns.deactivate()
            except TunplugError as exc:
                log.error("could not restore DNS settings: %s", exc)
            self.dns_active = False
