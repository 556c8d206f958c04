"""``tunplug-headless-client standalone --config`` as an operator runs it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tunplug.testing.interop import Keys, PeerSpec, TunplugEndpoint
from tunplug.testing.netns import NetNS

CLIENT = str(Path(sys.executable).with_name("tunplug-headless-client"))


def links(ns: NetNS) -> str:
    return ns.run("ip", "-o", "link", "show").stdout


def run_with_config(tmp_path: Path, text: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Run ``standalone`` with a config file holding ``text``."""
    config = tmp_path / "wg0.conf"
    config.write_text(text)
    config.chmod(0o600)
    result = subprocess.run(
        [CLIENT, "standalone", "--config", str(config), "--state-dir", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return config, result


def test_a_malformed_config_is_one_line_and_exit_2(tmp_path):
    config, result = run_with_config(tmp_path, "[Interface]\nPrivateKey = nope\n")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"tunplug-headless-client: error: {config}:2: PrivateKey must be 44 characters of "
        "base64 (as 'wg genkey' prints), got 4 characters"
    ]


def test_a_config_without_peers_is_refused(tmp_path):
    _, result = run_with_config(tmp_path, f"[Interface]\nPrivateKey = {Keys.generate().private}\n")
    assert result.returncode == 2
    assert "has no [Peer] section" in result.stderr


@pytest.fixture
def endpoint(tmp_path):
    with NetNS() as ns:
        yield TunplugEndpoint(ns, "a", tmp_path)


PEER = PeerSpec(
    public_key=Keys.generate().public,
    # 10.202.0.2/32 is inside the interface's own /24; 10.203.0.0/24 needs a route.
    allowed_ips=("10.202.0.2/32", "10.203.0.0/24", "fd03::/64"),
    endpoint="10.201.0.2:51820",
)


@pytest.mark.root
def test_sigterm_removes_device_and_routes(endpoint):
    endpoint.start(PEER)
    ns = endpoint.ns
    assert endpoint.ifname in links(ns)
    routes = ns.run("ip", "route", "show", "dev", endpoint.ifname).stdout
    assert "10.203.0.0/24" in routes
    assert "fd03::/64" in ns.run("ip", "-6", "route", "show", "dev", endpoint.ifname).stdout
    assert endpoint.stop(signal.SIGTERM) == 0
    assert endpoint.ifname not in links(ns)
    assert "10.203.0.0" not in ns.run("ip", "route", "show").stdout
    assert "going down" in endpoint.log()


@pytest.mark.root
def test_sigint_also_exits_cleanly(endpoint):
    endpoint.start(PEER)
    assert endpoint.stop(signal.SIGINT) == 0
    assert endpoint.ifname not in links(endpoint.ns)


@pytest.mark.root
def test_device_disappears_after_sigkill(endpoint):
    endpoint.start(PEER)
    endpoint.stop(signal.SIGKILL)
    assert endpoint.ifname not in links(endpoint.ns)


@pytest.mark.root
def test_a_taken_interface_name_is_refused_with_exit_2(endpoint, tmp_path):
    endpoint.start(PEER)
    second = TunplugEndpoint(endpoint.ns, "a", tmp_path / "second", ifname=endpoint.ifname)
    (tmp_path / "second").mkdir()
    with pytest.raises(RuntimeError, match="exited with 2") as caught:
        second.start(PEER)
    assert f"interface '{endpoint.ifname}' already exists" in str(caught.value)
    # The first instance is unharmed: it still owns the device.
    assert endpoint.process is not None and endpoint.process.poll() is None
    assert endpoint.stop() == 0
