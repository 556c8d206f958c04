"""Two tunnel endpoints joined over a :class:`MemoryNetwork`, in one process, without root.

Who uses it: the ``tunnel_pair`` fixture, ``tunplug demo --in-process`` and plugin authors who
want a whole WireGuard tunnel under test. Each side is a :class:`FakeTun`, a real
:class:`~tunplug.wireguard.WireGuardDevice` and a :class:`~tunplug.engine.TunnelEngine`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from ipaddress import ip_interface, ip_network

import anyio

from tunplug.crypto import CryptoBackend
from tunplug.engine import TunnelEngine
from tunplug.pipeline import Pipeline
from tunplug.testing.fake import FakeTun
from tunplug.testing.network import MemoryNetwork
from tunplug.testing.packets import icmp_echo
from tunplug.tun import TunOptions

#: How long :meth:`TunnelPair.connect` may take.
CONNECT_TIMEOUT = 5.0


@dataclass(slots=True)
class Side:
    """One endpoint: its device, engine, keys and tunnel address."""

    name: str
    tun: FakeTun
    engine: TunnelEngine
    address: str
    public_key: bytes


@dataclass(slots=True)
class TunnelPair:
    """A client and a gateway with a WireGuard tunnel between them."""

    network: MemoryNetwork
    client: Side
    gateway: Side

    async def connect(self) -> None:
        """Complete the handshake (one ping, client to gateway, taken off the gateway's device).

        Until then WireGuard holds only a bounded number of packets per peer, so a test that
        floods the tunnel connects first.
        """
        with anyio.fail_after(CONNECT_TIMEOUT):
            await self.client.tun.inject(
                [icmp_echo(self.client.address, self.gateway.address, 0, 0)]
            )
            await self.gateway.tun.delivered(1)


@asynccontextmanager
async def open_tunnel_pair(
    crypto: CryptoBackend,
    *,
    client_pipeline: Pipeline | None = None,
    gateway_pipeline: Pipeline | None = None,
    preshared_key: bytes | None = None,
    network: MemoryNetwork | None = None,
    tun_capacity: int = 1024,
) -> AsyncIterator[TunnelPair]:
    """Start both engines; yield once they run; stop them and close everything on exit
    (the pipelines last, as when a tunnel goes down).

    ``tun_capacity`` bounds each fake device's queues (small values make backpressure easy to
    see). The client is ``10.99.0.2`` / ``fd99::2``, the gateway ``10.99.0.1`` / ``fd99::1``; each
    routes the whole tunnel subnet to the other.
    """
    from tunplug.wireguard import PeerConfig, WireGuardDevice

    network = network or MemoryNetwork()
    keys = {side: crypto.generate_private_key() for side in ("client", "gateway")}
    public = {side: crypto.public_key(key) for side, key in keys.items()}
    endpoints = {"client": ("192.0.2.2", 40000), "gateway": ("192.0.2.1", 51820)}
    addresses = {"client": ("10.99.0.2", "fd99::2"), "gateway": ("10.99.0.1", "fd99::1")}
    pipelines = {"client": client_pipeline, "gateway": gateway_pipeline}

    sides: dict[str, Side] = {}
    try:
        async with anyio.create_task_group() as tasks:
            try:
                for side, other in (("client", "gateway"), ("gateway", "client")):
                    device = WireGuardDevice(keys[side], crypto)
                    device.add_peer(
                        PeerConfig(
                            public_key=public[other],
                            preshared_key=preshared_key,
                            endpoint=endpoints[other] if side == "client" else None,
                            allowed_ips=(
                                ip_network(addresses[other][0] + "/32"),
                                ip_network(addresses[other][1] + "/128"),
                            ),
                        )
                    )
                    tun = FakeTun(
                        TunOptions(
                            name=f"{side}-fake",
                            addresses=(
                                ip_interface(addresses[side][0] + "/24"),
                                ip_interface(addresses[side][1] + "/64"),
                            ),
                        ),
                        capacity=tun_capacity,
                    )
                    transport = network.bind(endpoints[side])
                    engine = TunnelEngine(tun, transport, device, pipelines[side])
                    sides[side] = Side(side, tun, engine, addresses[side][0], public[side])
                    tasks.start_soon(engine.run, name=f"{side}-engine")
                yield TunnelPair(network, sides["client"], sides["gateway"])
            finally:
                tasks.cancel_scope.cancel()
                for entry in sides.values():
                    await entry.tun.aclose()
                    await entry.engine.transport.aclose()
    finally:
        # As a tunnel going down does: the stages close once their engine has stopped.
        for pipeline in pipelines.values():
            if pipeline is not None:
                pipeline.close()
