"""The status file: written by a tunnel's background task, read by ``tunplug status``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import pytest

from tunplug.cli.main import main
from tunplug.service import protocol as p
from tunplug.service.status_file import read_status_file, status_file_task, write_status_file
from tunplug.testing.interop import Keys
from tunplug.wgquick import WgQuickConfig, parse_wg_quick
from tunplug.wireguard import PeerConfig, WireGuardDevice
from tunplug.wireguard.keys import format_key, parse_key


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@dataclass
class Tunnel:
    """What the task reads of the running tunnel (a :class:`~tunplug.live_tunnel.LiveTunnel`)."""

    interface: str
    config: WgQuickConfig
    device: WireGuardDevice


def device_and_config() -> tuple[WireGuardDevice, WgQuickConfig, str]:
    from tunplug_crypto_cryptography.backend import CryptographyBackend

    me, peer = Keys.generate(), Keys.generate()
    config = parse_wg_quick(
        f"[Interface]\nPrivateKey = {me.private}\nAddress = 10.9.0.2/32\nDNS = 10.9.0.1\n\n"
        f"[Peer]\nPublicKey = {peer.public}\nEndpoint = 192.0.2.1:51820\n"
        "AllowedIPs = 10.9.0.0/24\n",
        "test",
    )
    device = WireGuardDevice(parse_key(me.private), CryptographyBackend())
    device.add_peer(PeerConfig(public_key=parse_key(peer.public), endpoint=("192.0.2.1", 51820),
                               allowed_ips=config.peers[0].allowed_ips))  # fmt: skip
    return device, config, peer.public


@pytest.mark.anyio
async def test_the_task_writes_the_status_while_it_runs_and_removes_it(tmp_path):
    device, config, peer_key = device_and_config()
    path = tmp_path / "run" / "status.json"
    task = status_file_task(path, "ci-runner")
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(task, Tunnel("tunplug0", config, device))
        for _ in range(500):  # the first write comes at once
            if await anyio.Path(path).exists():
                break
            await anyio.sleep(0.01)
        status, age = read_status_file(path)
        assert oct(path.stat().st_mode & 0o777) == oct(0o640)
        tasks.cancel_scope.cancel()
    assert 0 <= age < 5
    assert status.interface == "tunplug0" and status.client_name == "ci-runner"
    assert status.public_key == format_key(device.public_key)
    assert status.addresses == ["10.9.0.2/32"] and status.dns_servers == ["10.9.0.1"]
    assert status.peers[0].public_key == peer_key
    assert status.peers[0].endpoint == "192.0.2.1:51820"
    assert status.peers[0].latest_handshake is None
    assert not path.exists()


def test_tunplug_status_reads_the_file_and_says_when_it_is_stale(tmp_path, capsys):
    path = tmp_path / "status.json"
    status = p.TunnelStatus(state="connected", interface="tunplug0", peers=[
        p.PeerStatus(public_key="PEER=", rx_bytes=2048, tx_bytes=10)])  # fmt: skip
    write_status_file(path, status)
    absent = str(tmp_path / "absent.sock")
    assert main(["--log-level", "error", "status", "--socket", absent, "--status-file",
                 str(path)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("interface: tunplug0\n  state: connected\n")
    assert "transfer: 2.00 KiB received, 10 B sent" in out and "probably not" not in out
    os.utime(path, (0, 0))
    assert main(["--log-level", "error", "status", "--json", "--status-file", str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["source"]["status_file"] == str(path) and shown["source"]["age"] > 1e6
    assert shown["peers"][0]["rx_bytes"] == 2048
    assert main(["--log-level", "error", "status", "--status-file", str(path)]) == 0
    assert "the tunnel is probably not running" in capsys.readouterr().out
    path.write_text("[]")
    assert main(["--log-level", "error", "status", "--status-file", str(path)]) == 1
    assert "is not a tunplug status file" in capsys.readouterr().err
