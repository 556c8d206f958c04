"""``tunplug demo``: a WireGuard client and gateway, and traffic crossing between them.

Who calls it: ``tunplug demo`` (the README's first command).

- As root on Linux (the default there): a **live demo** in three fresh network namespaces
  (client, gateway, resource; see :mod:`tunplug.gateway_demo`). A real ``tunplug-gateway``
  issues a token, a real ``tunplug-headless-client`` uses it, and traffic to a TCP service in
  the resource namespace flows through the tunnel; everything is removed at the end.
- ``--in-process`` (the default without root): both ends in this process on fake devices over
  an in-memory network; the gateway side answers ICMP echo requests the way a kernel would.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time

import anyio

from tunplug.app import App
from tunplug.events import TunnelInfo
from tunplug.testing.fake import FakeTun
from tunplug.testing.packets import icmp_echo, parse
from tunplug.testing.tunnel import open_tunnel_pair

#: How long one ping may take before the demo reports it lost.
PING_TIMEOUT = 2.0


async def _answer_pings(tun: FakeTun) -> None:
    """Act as the gateway's kernel: reply to every echo request the tunnel delivers."""
    while True:
        for packet in await tun.delivered(1):
            await tun.inject([parse(packet).echo_reply()])


async def _demo(app: App, count: int) -> int:
    crypto = app.crypto()
    info = TunnelInfo(interface="client-fake", tun_backend="fake", role="demo", peers=1)
    pipeline = app.pipeline(info)
    print(
        f"tunplug demo (in-process): crypto backend {crypto.name!r}, "
        f"pipeline stages {pipeline.names or 'none'}"
    )
    received = 0
    async with open_tunnel_pair(crypto, client_pipeline=pipeline) as pair:
        client, gateway = pair.client, pair.gateway
        app.plugins.notify_tunnel_up(info)
        print(
            f"client {client.address} <-> gateway {gateway.address}: "
            "WireGuard over an in-memory network, fake TUN devices"
        )
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_answer_pings, gateway.tun)
            for seq in range(1, count + 1):
                started = time.perf_counter()
                await client.tun.inject([icmp_echo(client.address, gateway.address, 7, seq)])
                with anyio.move_on_after(PING_TIMEOUT):
                    reply = parse((await client.tun.delivered(1))[0])
                    elapsed = (time.perf_counter() - started) * 1000
                    received += 1
                    note = " (includes the handshake)" if seq == 1 else ""
                    print(f"reply from {reply.src}: icmp_seq={seq} time={elapsed:.1f} ms{note}")
                if received < seq:
                    print(f"no reply to icmp_seq={seq} within {PING_TIMEOUT:.0f} s")
            tasks.cancel_scope.cancel()
        stats = client.engine.stats
        print(
            f"{count} pings sent, {received} replies; client engine sent "
            f"{stats.datagrams_sent} and received {stats.datagrams_received} "
            f"WireGuard datagrams ({pair.network.delivered} delivered in all)"
        )
        app.plugins.notify_tunnel_down(info, None)
    return 0 if received == count else 1


def run_in_process_demo(app: App, *, count: int = 5) -> int:
    """Run the in-process demo; exit status 0 when every ping was answered."""
    app.configure()
    return anyio.run(_demo, app, count)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def live_demo_unavailable_reason() -> str | None:
    """Why the namespace demo cannot run here, or ``None``."""
    if not sys.platform.startswith("linux"):
        return "the live demo needs Linux"
    if os.geteuid() != 0:
        return "the live demo needs root (network namespaces and TUN devices)"
    if shutil.which("ip") is None:
        return "the live demo needs iproute2's 'ip' command"
    return None


def run_live_demo(*, count: int = 3, seconds: float = 5.0) -> int:
    """Client, gateway and resource in three namespaces; traffic to the resource's service."""
    from tunplug.gateway_demo import GatewayDemo

    # SIGTERM unwinds like Ctrl-C, so the namespaces are removed either way.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with GatewayDemo() as demo:
        return demo.run(count=count, seconds=seconds)
