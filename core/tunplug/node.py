"""Run one WireGuard interface from a wg-quick configuration until told to stop.

Who calls it: ``tunplug-headless-client standalone --config`` (and the gateway, later). It
builds everything from the config, runs the :class:`~tunplug.engine.TunnelEngine`, and on any
exit (SIGINT, SIGTERM, error) takes it all down again: routes, addresses and the device (which
the kernel deletes once tunplug's descriptors close, also after SIGKILL).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import anyio
import anyio.abc

from tunplug.app import App
from tunplug.engine import TunnelEngine
from tunplug.events import TunnelInfo
from tunplug.exceptions import ConfigError
from tunplug.transport import UdpTransport
from tunplug.tun import DEFAULT_MTU, TunOptions
from tunplug.wgquick import WgQuickConfig
from tunplug.wireguard import PeerConfig, Timing, WireGuardDevice
from tunplug.wireguard.keys import format_key

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunningInterface:
    """Handed to ``on_ready`` once traffic can flow."""

    interface: str
    listen_port: int
    public_key: str
    queues: int


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


def build_device(app: App, config: WgQuickConfig) -> WireGuardDevice:
    """The sans-IO WireGuard device with every peer of ``config``."""
    timing = parse_test_timers(app.settings.test_timers)
    device = WireGuardDevice(
        config.private_key, app.crypto(), timing=timing, mtu=config.mtu or DEFAULT_MTU
    )
    for peer in config.peers:
        device.add_peer(
            PeerConfig(
                public_key=peer.public_key,
                preshared_key=peer.preshared_key,
                endpoint=peer.endpoint,
                allowed_ips=peer.allowed_ips,
                persistent_keepalive=peer.persistent_keepalive,
            )
        )
    return device


async def run_interface(
    app: App,
    config: WgQuickConfig,
    *,
    name: str | None,
    role: str = "client",
    on_ready: Callable[[RunningInterface], None] | None = None,
    stop_on_signals: bool = True,
) -> None:
    """Bring the interface up, carry traffic until SIGINT/SIGTERM, then take it all down."""
    device = build_device(app, config)
    settings = app.settings
    options = TunOptions(
        name=name,
        mtu=config.mtu or DEFAULT_MTU,
        queues=settings.tun_threads,
        batch_size=settings.batch_size,
        offloads=settings.offloads,
        addresses=config.addresses,
    )
    app.configure()
    async with await app.open_tun(options) as tun:
        routes = [network for peer in config.peers for network in peer.allowed_ips]
        await tun.add_routes(routes)
        async with UdpTransport.bind(
            config.listen_port or 0, offloads=settings.offloads
        ) as transport:
            info = TunnelInfo(
                interface=tun.name,
                tun_backend=tun.backend_name,
                role=role,  # type: ignore[arg-type]
                queues=tun.queues,
                addresses=config.addresses,
                peers=len(config.peers),
            )
            engine = TunnelEngine(tun, transport, device, app.pipeline(info))
            error: BaseException | None = None
            ready = RunningInterface(
                tun.name,
                transport.local_endpoint[1],
                format_key(app.crypto().public_key(config.private_key)),
                tun.queues,
            )
            udp = transport.stats()
            log.info(
                "interface %s up: %d queue(s), TUN offloads %s, UDP GSO %s / GRO %s, "
                "UDP port %d, %d peer(s), public key %s",
                tun.name,
                tun.queues,
                "on" if tun.offloads else "off",
                "on" if udp.gso_enabled else "off",
                "on" if udp.gro_enabled else "off",
                ready.listen_port,
                len(config.peers),
                ready.public_key,
            )
            app.plugins.notify_tunnel_up(info)
            try:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(engine.run, name="engine")
                    tasks.start_soon(_log_handshakes, device, name="handshake-log")
                    if stop_on_signals:
                        # start(), not start_soon(): the handlers must be in place before
                        # "tunnel is up" is announced, or an early SIGINT is a bare
                        # KeyboardInterrupt.
                        await tasks.start(_stop_on_signal, tasks.cancel_scope, name="signals")
                    if on_ready is not None:
                        on_ready(ready)
            except BaseException as exc:
                error = exc
                raise
            finally:
                app.plugins.notify_tunnel_down(info, error)
                _log_summary(device, engine)
                log.info("interface %s going down", tun.name)


def _log_summary(device: WireGuardDevice, engine: TunnelEngine) -> None:
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


async def _log_handshakes(device: WireGuardDevice) -> None:
    """Log each completed handshake once, from a timer (never from the packet path)."""
    seen: dict[bytes, float | None] = {}
    while True:
        for peer in device.peer_stats():
            if peer.last_handshake is not None and seen.get(peer.public_key) != peer.last_handshake:
                seen[peer.public_key] = peer.last_handshake
                endpoint = f"{peer.endpoint[0]}:{peer.endpoint[1]}" if peer.endpoint else "?"
                log.info(
                    "handshake complete with peer %s at %s",
                    format_key(peer.public_key)[:8] + "...",
                    endpoint,
                )
        await anyio.sleep(HANDSHAKE_LOG_INTERVAL)


async def _stop_on_signal(
    scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            scope.cancel()
            return
