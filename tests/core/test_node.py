"""A whole node in one process (the fake TUN backend, UDP on loopback): what a reload with a new
private key changes for the engine, the background tasks and the status file."""

from __future__ import annotations

import logging
import os
import signal
from ipaddress import ip_interface, ip_network
from pathlib import Path

import anyio
import pytest

from tunplug.app import App
from tunplug.config import TunplugSettings, load_settings
from tunplug.engine import TunnelEngine
from tunplug.live_tunnel import LiveTunnel
from tunplug.node import InterfaceHooks, run_interface
from tunplug.service.status_file import read_status_file, status_file_task
from tunplug.testing.fake import FakeTun
from tunplug.testing.interop import Keys
from tunplug.testing.packets import icmp_echo
from tunplug.transport import UdpTransport
from tunplug.tun import TunOptions
from tunplug.wgquick import parse_wg_quick
from tunplug.wireguard import PeerConfig, WireGuardDevice
from tunplug.wireguard.keys import format_key, parse_key
from tunplug_crypto_cryptography.backend import CryptographyBackend

pytestmark = pytest.mark.anyio

CLIENT, GATEWAY = "10.99.0.2", "10.99.0.1"


def client_config(private: str, gateway: Keys, port: int) -> str:
    return (
        f"[Interface]\nPrivateKey = {private}\nAddress = {CLIENT}/24\n\n"
        f"[Peer]\nPublicKey = {gateway.public}\nEndpoint = 127.0.0.1:{port}\n"
        f"AllowedIPs = {GATEWAY}/32\n"
    )


async def wait_until(check, limit: float = 5.0) -> None:
    with anyio.fail_after(limit):
        while not check():  # noqa: ASYNC110 (polling another task's state is the test)
            await anyio.sleep(0.02)


def status_key(path: Path) -> str | None:
    try:
        return read_status_file(path)[0].public_key
    except (FileNotFoundError, ValueError):
        return None  # not written yet


async def test_after_sighup_with_a_new_private_key_traffic_and_background_tasks_use_the_new_key(
    tmp_path, caplog
):
    caplog.set_level(logging.INFO, "tunplug.node")
    crypto = CryptographyBackend()
    first, second, gateway = Keys.generate(), Keys.generate(), Keys.generate()
    # The gateway knows only the client's new key: a packet reaches it only once the client's
    # engine encrypts with the new device.
    gateway_device = WireGuardDevice(parse_key(gateway.private), crypto)
    gateway_device.add_peer(
        PeerConfig(public_key=parse_key(second.public), allowed_ips=(ip_network(f"{CLIENT}/32"),))
    )
    gateway_tun = FakeTun(TunOptions(name="gw-fake", addresses=(ip_interface(f"{GATEWAY}/24"),)))
    gateway_transport = UdpTransport.bind(0, "127.0.0.1")
    port = gateway_transport.local_endpoint[1]
    config = parse_wg_quick(client_config(first.private, gateway, port), "first")
    reloaded = parse_wg_quick(client_config(second.private, gateway, port), "second")

    seen: list[tuple[LiveTunnel, bytes]] = []  # what a background task reads, each time

    async def watch_device(tunnel: LiveTunnel) -> None:
        while True:
            seen.append((tunnel, tunnel.device.public_key))
            await anyio.sleep(0.02)

    status_file = tmp_path / "status.json"
    ready = anyio.Event()
    hooks = InterfaceHooks(
        on_ready=lambda running: ready.set(),
        reload=lambda: reloaded,
        background=[watch_device, status_file_task(status_file)],
    )
    settings = load_settings(
        {"tun_backend": "fake", "data_path": "python", "disable_plugin_autoload": True},
        model=TunplugSettings,
    )
    async with gateway_transport, anyio.create_task_group() as tasks:
        tasks.start_soon(TunnelEngine(gateway_tun, gateway_transport, gateway_device).run)
        tasks.start_soon(
            lambda: run_interface(App(settings), config, name="node-fake", hooks=hooks)
        )
        with anyio.fail_after(10):
            await ready.wait()
        await wait_until(lambda: status_key(status_file) == first.public)
        tunnel = seen[-1][0]
        assert tunnel.engine.processor is tunnel.device  # type: ignore[attr-defined]

        os.kill(os.getpid(), signal.SIGHUP)  # the runner's handler is in place once ready
        await wait_until(
            lambda: "configuration reloaded (1 peer(s), new private key)" in caplog.text
        )
        assert format_key(tunnel.device.public_key) == second.public
        assert tunnel.engine.processor is tunnel.device  # type: ignore[attr-defined]
        await wait_until(lambda: seen[-1][1] == tunnel.device.public_key)
        await wait_until(lambda: status_key(status_file) == second.public)

        client_tun = FakeTun.opened["node-fake"]
        ping = icmp_echo(CLIENT, GATEWAY, 1, 1)
        with anyio.fail_after(10):
            await client_tun.inject([ping])
            assert await gateway_tun.delivered(1) == [ping]
        tasks.cancel_scope.cancel()
    assert not status_file.exists()
