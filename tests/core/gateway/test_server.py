"""The running gateway's pieces without a device: /metrics names the interface's current public
key, and SIGHUP reads the interface (its private key file) again."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunplug import __version__
from tunplug.gateway import firewall
from tunplug.gateway.access import AccessState
from tunplug.gateway.registry import KEY_NAME, Registry
from tunplug.gateway.server import GatewayState, metrics_text, read_snapshot, reread_interface
from tunplug.wireguard import WireGuardDevice
from tunplug.wireguard.keys import format_key
from tunplug_crypto_cryptography.backend import CryptographyBackend

CRYPTO = CryptographyBackend()


@pytest.fixture
def registry(tmp_path: Path):
    with Registry.init(
        tmp_path / "state", endpoint="203.0.113.7:51820", resources=["10.20.0.0/16"], crypto=CRYPTO
    ) as registry:
        registry.add_client("laptop")
        yield registry


def test_metrics_name_the_interface_and_the_public_key_of_the_device_it_runs_now(
    registry, monkeypatch
):
    monkeypatch.setattr(firewall, "dropped_packets", lambda interface: None)
    gateway = registry.gateway
    access = AccessState((gateway.gateway_address_v4, gateway.gateway_address_v6))
    access.load(read_snapshot(registry))
    state = GatewayState(registry, "tpgw0", access)
    for private in (gateway.private_key, CRYPTO.generate_private_key()):  # before and after
        device = WireGuardDevice(private, CRYPTO)
        public = format_key(CRYPTO.public_key(private))
        lines = metrics_text(state, device).splitlines()
        assert [line for line in lines if line.startswith("tunplug_gateway_info{")] == [
            f'tunplug_gateway_info{{version="{__version__}",interface="tpgw0",'
            f'public_key="{public}"}} 1'
        ]
        assert "tunplug_gateway_clients 1" in lines


def test_sighup_reads_the_private_key_file_again_and_keeps_the_served_clients(registry):
    served = registry.clients()
    before = reread_interface(registry, served)
    assert before.private_key == registry.gateway.private_key
    new_key = CRYPTO.generate_private_key()
    key_file = registry.state_dir / KEY_NAME
    key_file.write_text(format_key(new_key) + "\n")
    key_file.chmod(0o600)
    registry.add_client("phone")  # not served yet: the registry poll adds it, not the reload
    after = reread_interface(registry, served)
    assert after.private_key == new_key
    assert (after.addresses, after.listen_port) == (before.addresses, before.listen_port)
    assert [peer.public_key for peer in after.peers] == [client.public_key for client in served]
