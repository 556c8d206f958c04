"""``tunplug-gateway run``: serve every registered client, forward and NAT to the resources.

Who calls it: :mod:`tunplug.cli.gateway` (``run`` and ``status``) and the live demo. The
gateway is one WireGuard interface (the registry's key, listen port and the first address of
each tunnel subnet) with one peer per client. Around it:

- nftables and forwarding (:mod:`.firewall`): each client reaches its resources (masqueraded),
  and nothing else; dropped packets are counted. Who may reach what is
  :class:`~tunplug.gateway.access.AccessState`'s, written into the firewall's sets live;
- a registry poll every :data:`POLL_INTERVAL` seconds: a client added or revoked with
  ``tunplug-gateway client add/revoke`` (another process) is added to or removed from the
  running device within a second, the other clients' sessions untouched; a resource or group
  change updates the firewall's sets and wakes the control channel's long polls;
- the control channel (:mod:`.control`) and the DNS server for DNS resources
  (:mod:`.dns_server`) on the gateway's tunnel addresses;
- a stats writer: last handshake and bytes of each client go to the registry every
  :data:`STATS_INTERVAL` seconds (``client list`` and ``status`` read them);
- an HTTP endpoint (default 127.0.0.1:9586): ``/healthz``, ``/readyz``, ``/metrics``
  (Prometheus text format);
- SIGHUP: the interface read again from the state directory (:func:`reread_interface`, the
  private key file included) and applied as the headless client applies a reload.

Each of these tasks gets the running tunnel (:class:`~tunplug.live_tunnel.LiveTunnel`) and
reads its device each time it uses it: a new private key replaces the device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from ipaddress import IPv4Interface, IPv6Interface

import anyio
import anyio.abc

from tunplug import __version__
from tunplug.app import App
from tunplug.exceptions import ConfigError, TunplugError
from tunplug.gateway import firewall
from tunplug.gateway.access import AccessState, Snapshot
from tunplug.gateway.control import MAX_REQUEST as MAX_REQUEST
from tunplug.gateway.control import (
    http_response,
    parse_request_head,
    read_request_head,
    send_quietly,
    serve_control,
)
from tunplug.gateway.dns_server import DnsServer, Resolver, parse_upstreams, resolv_conf_servers
from tunplug.gateway.registry import ClientRecord, Registry
from tunplug.gateway.settings import GatewaySettings
from tunplug.gateway.validation import parse_port
from tunplug.live_tunnel import LiveTunnel
from tunplug.node import InterfaceHooks, RunningInterface, run_interface
from tunplug.resources import PROXY_V4, PROXY_V6, Resource
from tunplug.systemd import Notifier
from tunplug.wgquick import PeerSection, WgQuickConfig
from tunplug.wireguard import PeerConfig, WireGuardDevice
from tunplug.wireguard.keys import format_key

log = logging.getLogger(__name__)

#: How often the running gateway looks for added or revoked clients (seconds).
POLL_INTERVAL = 0.25
#: How often client statistics are written to the registry (seconds).
STATS_INTERVAL = 2.0


def client_peer(client: ClientRecord) -> PeerConfig:
    """The WireGuard peer of a registered client: its key, PSK and its two addresses."""
    return PeerConfig(
        public_key=client.public_key,
        preshared_key=client.preshared_key,
        endpoint=None,
        allowed_ips=(
            IPv4Interface(f"{client.address_v4}/32").network,
            IPv6Interface(f"{client.address_v6}/128").network,
        ),
        persistent_keepalive=None,
    )


def interface_config(
    registry: Registry, clients: Sequence[ClientRecord] | None = None
) -> WgQuickConfig:
    """The gateway interface: key, port, an address in each subnet, one peer per client (of
    ``clients``, default: the registry's)."""
    gateway = registry.gateway
    return WgQuickConfig(
        private_key=gateway.private_key,
        addresses=(
            IPv4Interface(f"{gateway.gateway_address_v4}/{gateway.subnet_v4.prefixlen}"),
            IPv6Interface(f"{gateway.gateway_address_v6}/{gateway.subnet_v6.prefixlen}"),
        ),
        listen_port=gateway.listen_port,
        peers=tuple(
            PeerSection(
                public_key=client.public_key,
                preshared_key=client.preshared_key,
                allowed_ips=client_peer(client).allowed_ips,
            )
            for client in (registry.clients() if clients is None else clients)
        ),
    )


def reread_interface(registry: Registry, clients: Sequence[ClientRecord]) -> WgQuickConfig:
    """SIGHUP: the interface as the state directory has it now (the private key file, port and
    subnets read again), with ``clients`` as its peers: the ones the gateway serves, which
    the registry poll keeps current (blocking, briefly)."""
    with Registry.open(registry.state_dir) as fresh:
        return interface_config(fresh, clients)


def read_snapshot(registry: Registry) -> Snapshot:
    """The registry's version, then its clients, resources and groups (blocking). A change
    between the reads shows as a newer version at the next poll, which reads them again."""
    return Snapshot(
        registry.version(), registry.clients(), registry.resources(), registry.client_groups()
    )


@dataclass
class GatewayState:
    """What the background tasks share: who is served and may reach what (:attr:`access`,
    as of a registry version), readiness."""

    registry: Registry
    interface: str
    access: AccessState
    ready: bool = False
    started: float = field(default_factory=time.time)

    @property
    def clients(self) -> dict[bytes, ClientRecord]:
        return self.access.clients

    def peer_name(self, address: str) -> str | None:
        client = self.access.client_at(address)
        return None if client is None else client.name


async def follow_registry(state: GatewayState, tunnel: LiveTunnel) -> None:
    """Apply what changed in the registry (by another process) to the running gateway: clients
    to the tunnel's device, resources and groups to the firewall's sets; then wake the long
    polls."""
    registry = state.registry
    while True:
        await anyio.sleep(POLL_INTERVAL)
        # In a thread: a busy database (another process writing) must not stall the loop.
        version = await anyio.to_thread.run_sync(registry.version)
        if version == state.access.version:
            continue
        snapshot = await anyio.to_thread.run_sync(read_snapshot, registry)
        wanted = {client.public_key: client for client in snapshot.clients}
        device = tunnel.device
        for key, client in state.clients.items():
            if key not in wanted:
                device.remove_peer(key)
                log.info("client %s revoked: removed, its sessions erased", client.name)
        for key, client in wanted.items():
            if key not in state.clients:
                device.add_peer(client_peer(client))
                log.info(
                    "client %s added: %s, %s", client.name, client.address_v4, client.address_v6
                )
        access = state.access
        before = describe_resources(access.resources)
        access.load(snapshot)
        await access.apply()
        after = describe_resources(access.resources)
        if after != before:
            log.info("resources now: %s", after)
        access.notify_changed()


def describe_resources(resources: Sequence[Resource]) -> str:
    """``db (10.10.0.0/16, tcp/5432, groups eng), *.corp.example (tcp/443)`` or ``none``."""
    parts = []
    for resource in resources:
        details = [str(resource.target)] if resource.name != str(resource.target) else []
        details += [str(rule) for rule in resource.ports]
        if resource.groups:
            details.append("groups " + "+".join(resource.groups))
        parts.append(f"{resource.name} ({', '.join(details)})" if details else resource.name)
    return ", ".join(parts) or "none"


def peer_records(
    device: WireGuardDevice, monotonic: Callable[[], float] = time.monotonic
) -> list[tuple[bytes, float | None, int, int]]:
    """(public key, last handshake as Unix time, rx, tx) of every peer."""
    offset = time.time() - monotonic()
    return [
        (
            peer.public_key,
            None if peer.last_handshake is None else peer.last_handshake + offset,
            peer.rx_bytes,
            peer.tx_bytes,
        )
        for peer in device.peer_stats()
    ]


class StatsWriter:
    """What :func:`write_stats` stored last, so that each write carries only the clients whose
    handshake or traffic changed: an idle gateway with 10,000 clients wrote 10,000 rows every
    :data:`STATS_INTERVAL` (65 ms a write, about 3% of a core) and now writes none."""

    def __init__(self) -> None:
        self._written: dict[bytes, tuple[float | None, int, int]] = {}

    def changed(
        self, records: list[tuple[bytes, float | None, int, int]]
    ) -> list[tuple[bytes, float | None, int, int]]:
        """The records that differ from what was written for the same key (and note them)."""
        written = self._written
        fresh = []
        for record in records:
            key, values = record[0], record[1:]
            if written.get(key) != values:
                written[key] = values
                fresh.append(record)
        if len(written) > 2 * len(records) + 64:  # revoked clients: forget them
            keys = {record[0] for record in records}
            self._written = {key: value for key, value in written.items() if key in keys}
        return fresh


async def write_stats(state: GatewayState, tunnel: LiveTunnel) -> None:
    """Client statistics into the registry, every few seconds and once more at the end."""
    writer = StatsWriter()
    try:
        interval = STATS_INTERVAL
        while True:
            await anyio.sleep(interval)
            started = time.perf_counter()
            records = writer.changed(peer_records(tunnel.device))
            # Reading every peer is O(clients), 40 ms for 10,000: at most 1% of a core.
            interval = max(STATS_INTERVAL, 100 * (time.perf_counter() - started))
            if records:
                await anyio.to_thread.run_sync(state.registry.record_stats, records)
    finally:
        # Synchronous on purpose: it must run even while the task is being cancelled.
        state.registry.record_stats(writer.changed(peer_records(tunnel.device)))


def metrics_text(state: GatewayState, device: WireGuardDevice) -> str:
    """Prometheus text exposition of the gateway's state; ``device`` is the one it runs now."""
    lines = [
        "# HELP tunplug_gateway_info The running gateway: version, interface and the "
        "interface's current public key.",
        "# TYPE tunplug_gateway_info gauge",
        f'tunplug_gateway_info{{version="{__version__}",interface="{state.interface}",'
        f'public_key="{format_key(device.public_key)}"}} 1',
        "# HELP tunplug_gateway_clients Registered clients being served.",
        "# TYPE tunplug_gateway_clients gauge",
        f"tunplug_gateway_clients {len(state.clients)}",
    ]
    peers = {peer.public_key: peer for peer in device.peer_stats()}
    connected = sum(1 for peer in peers.values() if peer.last_handshake is not None)
    lines += [
        "# HELP tunplug_gateway_clients_connected Clients with at least one handshake.",
        "# TYPE tunplug_gateway_clients_connected gauge",
        f"tunplug_gateway_clients_connected {connected}",
    ]
    offset = time.time() - time.monotonic()
    per_client = [
        ("rx_bytes_total", "counter", "Bytes received from the client.", "rx_bytes"),
        ("tx_bytes_total", "counter", "Bytes sent to the client.", "tx_bytes"),
    ]
    for metric, kind, help_text, attribute in per_client:
        lines += [
            f"# HELP tunplug_gateway_client_{metric} {help_text}",
            f"# TYPE tunplug_gateway_client_{metric} {kind}",
        ]
        for key, client in state.clients.items():
            peer = peers.get(key)
            value = getattr(peer, attribute) if peer is not None else 0
            lines.append(f'tunplug_gateway_client_{metric}{{client="{client.name}"}} {value}')
    lines += [
        "# HELP tunplug_gateway_client_last_handshake_seconds Unix time of the last handshake.",
        "# TYPE tunplug_gateway_client_last_handshake_seconds gauge",
    ]
    for key, client in state.clients.items():
        peer = peers.get(key)
        if peer is not None and peer.last_handshake is not None:
            value = peer.last_handshake + offset
            lines.append(
                f'tunplug_gateway_client_last_handshake_seconds{{client="{client.name}"}} '
                f"{value:.3f}"
            )
    dropped = firewall.dropped_packets(state.interface)
    if dropped is not None:
        lines += [
            "# HELP tunplug_gateway_dropped_not_resource_packets_total Packets from clients "
            "to destinations that are not resources.",
            "# TYPE tunplug_gateway_dropped_not_resource_packets_total counter",
            f"tunplug_gateway_dropped_not_resource_packets_total {dropped}",
        ]
    for reason, count in sorted(device.drops.items()):
        lines.append(f'tunplug_gateway_wireguard_drops_total{{reason="{reason}"}} {count}')
    # What must shrink back after a burst of handshakes (idle sources are forgotten within
    # about a second).
    lines += [
        "# HELP tunplug_gateway_handshake_sources Source addresses the handshake rate "
        "limiter tracks.",
        "# TYPE tunplug_gateway_handshake_sources gauge",
        f"tunplug_gateway_handshake_sources {device.handshake_sources}",
    ]
    return "\n".join(lines) + "\n"


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) of the metrics endpoint. :raises ConfigError:"""
    host, sep, port_text = text.rpartition(":")
    port = parse_port(port_text) if sep else None
    if port is None:
        raise ConfigError("--metrics-address", f"expected host:port or 'off', got {text!r}")
    return host.strip("[]") or "127.0.0.1", port


async def serve_http(
    state: GatewayState,
    tunnel: LiveTunnel,
    address: tuple[str, int],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """``/healthz``, ``/readyz`` and ``/metrics`` over plain HTTP/1.0, one request a connection."""
    listener = await anyio.create_tcp_listener(local_host=address[0], local_port=address[1])
    log.info("health and metrics on http://%s:%d/metrics", *address)
    task_status.started()

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            method, path = parse_request_head(await read_request_head(stream))
            if method != b"GET":
                status, body = "405 Method Not Allowed", "only GET\n"
            elif path == "/healthz":
                status, body = "200 OK", "ok\n"
            elif path == "/readyz":
                status, body = (
                    ("200 OK", "ready\n")
                    if state.ready
                    else ("503 Service Unavailable", "starting\n")
                )
            elif path == "/metrics":
                status, body = "200 OK", metrics_text(state, tunnel.device)
            else:
                status, body = "404 Not Found", "try /healthz, /readyz or /metrics\n"
            response = http_response(
                status, body.encode(), "text/plain; version=0.0.4", version="1.0"
            )
            await send_quietly(stream, response)

    async with listener:
        await listener.serve(handle)


def run_gateway(app: App, registry: Registry, settings: GatewaySettings) -> None:
    """Serve until SIGINT/SIGTERM (blocking). :raises TunplugError: one line on failure."""
    gateway = registry.gateway
    snapshot = read_snapshot(registry)
    config = interface_config(registry, snapshot.clients)
    tunnel_addresses = (gateway.gateway_address_v4, gateway.gateway_address_v6)
    access = AccessState(tunnel_addresses, gateway.dns)
    access.load(snapshot)
    state = GatewayState(registry, settings.interface, access)
    metrics = None if settings.metrics_address == "off" else parse_address(settings.metrics_address)
    upstreams = (
        parse_upstreams(settings.dns_upstream) if settings.dns_upstream else resolv_conf_servers()
    )
    dns_server = DnsServer(
        access,
        Resolver(upstreams),
        forbidden=(gateway.subnet_v4, gateway.subnet_v6, PROXY_V4, PROXY_V6),
    )
    if not upstreams and any(r.kind == "dns" for r in access.resources):
        log.warning("no upstream DNS server (--dns-upstream, /etc/resolv.conf): DNS resources fail")
    notifier = Notifier()

    async def start_metrics(tunnel: LiveTunnel) -> None:
        if metrics is not None:
            await serve_http(state, tunnel, metrics)
        else:
            await anyio.sleep_forever()

    async def start_control(tunnel: LiveTunnel) -> None:
        await serve_control(access, tunnel_addresses)

    async def start_dns(tunnel: LiveTunnel) -> None:
        # Not fatal: a host whose own DNS server holds port 53 on every address still serves
        # its clients everything but DNS resources (and says so).
        try:
            await dns_server.serve(tunnel_addresses)
        except TunplugError as exc:
            log.error(
                "%s: DNS resources will not resolve (is another DNS server listening on all "
                "addresses? bind it to its own addresses)",
                exc,
            )
            await anyio.sleep_forever()

    def on_ready(running: RunningInterface) -> None:
        state.ready = True
        log.info(
            "tunnel is up on %s (UDP port %d): gateway %s, %d client(s), resources %s",
            running.interface,
            running.listen_port,
            format_key(gateway.public_key),
            len(state.clients),
            describe_resources(access.resources),
        )
        notifier.status(f"serving {len(state.clients)} client(s) on {running.interface}")

    hooks = InterfaceHooks(
        on_ready=on_ready,
        reload=lambda: reread_interface(registry, list(state.clients.values())),
        notifier=notifier,
        background=(
            partial(follow_registry, state),
            partial(write_stats, state),
            start_metrics,
            start_control,
            start_dns,
        ),
        peer_name=state.peer_name,
    )
    with (
        firewall.forwarding(registry.state_dir),
        firewall.firewall(
            settings.interface,
            gateway.subnet_v4,
            gateway.subnet_v6,
            gateway.gateway_address_v4,
            gateway.gateway_address_v6,
            access.contents(),
        ) as installed,
    ):
        access.firewall = installed
        anyio.run(
            partial(
                run_interface, app, config, name=settings.interface, role="gateway", hooks=hooks
            )
        )
