"""A new private key applied with SIGHUP, as an operator rotates keys: the headless client's
``tunplug status`` and status file, and the gateway's ``/metrics``, show the new public key, the
interface stays, and the tunnel carries traffic with the new key.

On the data path ``TUNPLUG_DATA_PATH`` names (default ``auto``: the native engine when it is
built), handed to each process as ``--data-path``."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.test_gateway import Net, net, wait_for
from tests.e2e.test_headless_service import Client, server, write_private
from tunplug.testing.interop import TUNNEL, UNDERLAY, Keys, PeerSpec, Topology
from tunplug.testing.netns import NetNS

__all__ = ["net", "server"]  # the fixtures, shared with test_gateway and test_headless_service

pytestmark = pytest.mark.root

TUNPLUG = str(Path(sys.executable).with_name("tunplug"))
DATA_PATH = os.environ.get("TUNPLUG_DATA_PATH", "auto")


def expected_data_path() -> str:
    native = importlib.util.find_spec("tunplug_fastpath") is not None
    return "native" if DATA_PATH == "native" or (DATA_PATH == "auto" and native) else "python"


def ifindex(ns: NetNS, interface: str) -> str:
    return ns.run("cat", f"/sys/class/net/{interface}/ifindex").stdout


def tunplug_status(status_file: Path, *args: str) -> str:
    return subprocess.run(
        [TUNPLUG, "status", "--status-file", str(status_file), *args],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip


def shown_public_key(status_file: Path) -> str | None:
    if not status_file.exists():
        return None
    return json.loads(tunplug_status(status_file, "--json")).get("public_key")


def wait_until(check, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def client_config(private: str, server: Topology) -> str:
    return (
        f"[Interface]\nPrivateKey = {private}\nAddress = {TUNNEL['a'][0]}/24\n\n"
        f"[Peer]\nPublicKey = {server.b.keys.public}\nEndpoint = {UNDERLAY['b'][0]}:51820\n"
        f"AllowedIPs = {TUNNEL['b'][0]}/32\n"
    )


def test_the_headless_client_shows_and_uses_its_new_public_key_after_sighup(server, tmp_path):
    client = Client(server, tmp_path)
    first, second = server.a.keys, Keys.generate()
    config = write_private(tmp_path / "wg.conf", client_config(first.private, server))
    status_file = tmp_path / "status.json"
    client.start("--config", str(config), "--status-file", str(status_file),
                 "--data-path", DATA_PATH)  # fmt: skip
    assert f"up: {expected_data_path()} data path" in client.text()
    index = ifindex(client.ns, "tpclient0")
    assert server.ping("a", TUNNEL["b"][0]).returncode == 0
    wait_until(lambda: shown_public_key(status_file) == first.public, "the first key shown")

    write_private(config, client_config(second.private, server))
    assert client.process is not None
    client.process.send_signal(signal.SIGHUP)
    client.wait_for("configuration reloaded (1 peer(s), new private key)")
    # The status file is written every second, from the device the tunnel runs now.
    wait_until(lambda: shown_public_key(status_file) == second.public, "the new key shown")
    assert f"  public key: {second.public}\n" in tunplug_status(status_file)
    assert ifindex(client.ns, "tpclient0") == index  # the same interface, a new identity

    # The server is told the client's new key (as an operator would), and traffic flows with it.
    server.b.stop()
    server.b.start(
        PeerSpec(
            public_key=second.public,
            allowed_ips=(f"{TUNNEL['a'][0]}/32", f"{TUNNEL['a'][1]}/128"),
        )
    )
    assert server.ping("a", TUNNEL["b"][0]).returncode == 0, client.text()
    assert client.stop() == 0
    assert not status_file.exists()


def metrics_public_key(net: Net) -> str:
    for line in net.http("/metrics")[1].splitlines():
        if line.startswith("tunplug_gateway_info{"):
            return line.partition('public_key="')[2].partition('"')[0]
    raise AssertionError("no tunplug_gateway_info in /metrics")


def test_the_gateway_metrics_show_its_new_public_key_after_rotate_key_and_sighup(net):
    first = json.loads(net.tool("status", "--json").stdout)["public_key"]
    net.start("--data-path", DATA_PATH)
    assert f"up: {expected_data_path()} data path" in net.log.read_text()
    index = ifindex(net.gateway, "tpgw0")
    assert metrics_public_key(net) == first

    # The operator's two steps: a new key pair in the state directory, then SIGHUP (systemctl
    # reload tunplug-gateway).
    rotated = net.tool("rotate-key")
    new = rotated.stdout.split("new gateway public key ")[1].split(";")[0]
    assert new != first
    assert metrics_public_key(net) == first  # nothing changes before the reload
    assert net.process is not None
    net.process.send_signal(signal.SIGHUP)
    wait_for(net.log, "configuration reloaded (0 peer(s), new private key)", net.process)
    assert metrics_public_key(net) == new
    assert json.loads(net.tool("status", "--json").stdout)["public_key"] == new
    assert ifindex(net.gateway, "tpgw0") == index
    assert net.stop() == 0
