"""``tunplug ctl`` and ``tunplug status`` against the in-process service, and their output."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.core.service.conftest import OUTSIDER, make_token
from tunplug.cli import ctl
from tunplug.cli.main import main
from tunplug.exceptions import ConfigError
from tunplug.service import client
from tunplug.service import protocol as p

NOW = 1_767_225_600.0
STATUS = p.TunnelStatus(
    state="connected",
    managed_by="gui",
    client_name="laptop",
    interface="tunplug0",
    listen_port=40312,
    public_key="PUBLICKEY=",
    addresses=["100.64.0.2/32"],
    dns_servers=["100.64.0.1"],
    dns_control="systemd-resolved",
    peers=[
        p.PeerStatus(public_key="PEERKEY=", endpoint="198.51.100.7:51820",
                     allowed_ips=["10.10.0.0/16", "fd10::/64"], latest_handshake=NOW - 125,
                     rx_bytes=18236, tx_bytes=512, persistent_keepalive=25)
    ],
)  # fmt: skip


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    """``main`` sets up logging on the captured stderr: keep it quiet, and put it back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def run(*args: str) -> int:
    return main(["--log-level", "error", *args])


def test_status_reads_like_wg_show():
    assert ctl.format_status(STATUS, now=NOW).splitlines() == [
        "interface: tunplug0",
        "  state: connected (GUI)",
        "  client: laptop",
        "  public key: PUBLICKEY=",
        "  listening port: 40312",
        "  addresses: 100.64.0.2/32",
        "  dns: 100.64.0.1 (via systemd-resolved)",
        "",
        "peer: PEERKEY=",
        "  endpoint: 198.51.100.7:51820",
        "  allowed ips: 10.10.0.0/16, fd10::/64",
        "  latest handshake: 2 minutes, 5 seconds ago",
        "  transfer: 17.81 KiB received, 512 B sent",
        "  persistent keepalive: every 25 seconds",
    ]
    down = p.TunnelStatus(state="disconnected", last_error="boom")
    assert ctl.format_status(down, now=NOW).splitlines() == [
        "interface: (none)", "  state: disconnected", "  last error: boom",
    ]  # fmt: skip


def test_ctl_connect_status_and_disconnect(harness, tmp_path, capsys):
    socket_args = ["ctl", "--socket", str(harness.path)]
    token_file = tmp_path / "gui-token"
    secret = make_token(name="laptop")
    token_file.write_text(secret + "\n")
    token_file.chmod(0o600)
    assert run(*socket_args, "connect", "--token-file", str(token_file)) == 0
    assert capsys.readouterr().out == "connected: tunnel ready: tpsvc0 10.99.0.2/32\n"
    assert run(*socket_args, "status", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "connected" and shown["interface"] == "tpsvc0"
    assert shown["service"]["device_id"] == "test-device"
    assert shown["service"]["protocol_version"] == p.PROTOCOL_VERSION
    assert run("status", "--socket", str(harness.path)) == 0
    text = capsys.readouterr().out
    assert text.startswith("interface: tpsvc0\n  state: connected (GUI)\n  client: laptop\n")
    assert "peer: " in text and "  endpoint: 127.0.0.1:9" in text
    assert run(*socket_args, "connect", "--token-file", str(token_file)) == 1
    assert "already connected" in capsys.readouterr().err
    assert run(*socket_args, "disconnect") == 0
    assert capsys.readouterr().out == "disconnected\n"
    assert run(*socket_args, "disconnect") == 1
    assert "no tunnel is running" in capsys.readouterr().err
    assert secret not in capsys.readouterr().out


def test_a_token_from_stdin_and_a_bad_one_is_a_usage_error(harness, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("tp1.garbage.check\n"))
    assert run("ctl", "--socket", str(harness.path), "connect") == 2
    err = capsys.readouterr().err
    assert err.startswith("tunplug: error: token: token is damaged") and "garbage" not in err
    with pytest.raises(ConfigError, match="no token"):
        ctl.read_token(None, io.StringIO(""))


def test_an_outsider_is_told_why(harness, capsys):
    harness.credentials["next"] = OUTSIDER
    assert run("ctl", "--socket", str(harness.path), "status") == 1
    err = capsys.readouterr().err
    assert "uid 123456" in err and "may not use the tunnel service" in err


def test_status_without_a_service_says_where_to_look(tmp_path, capsys):
    absent = ["--socket", str(tmp_path / "absent.sock"), "--status-file", str(tmp_path / "no")]
    assert run("status", *absent) == 1
    err = capsys.readouterr().err
    assert f"no tunnel service at {tmp_path / 'absent.sock'}" in err
    assert "--gateway-state" in err
    assert run("ctl", "--socket", str(tmp_path / "absent.sock"), "status") == 1
    assert "is tunplug-tunnel-service running?" in capsys.readouterr().err


def test_ctl_watch_prints_events_until_the_service_stops(harness, capsys):
    results: list[int] = []
    watcher = threading.Thread(
        target=lambda: results.append(run("ctl", "--socket", str(harness.path), "watch"))
    )
    watcher.start()
    printed = ""
    deadline = time.monotonic() + 10
    while "state: disconnected" not in printed:  # watch has subscribed and shown the status
        assert time.monotonic() < deadline, printed
        time.sleep(0.02)
        printed += capsys.readouterr().out
    with client.ServiceClient(harness.path) as gui:
        gui.request(p.Subscribe())
        gui.request(p.Connect(token=make_token()))
        while not isinstance(gui.next_event(10), p.StatsUpdate):
            pass
    harness.stop()
    watcher.join(20)
    assert results == [0]
    lines = (printed + capsys.readouterr().out).splitlines()
    assert lines[:2] == ["interface: (none)", "  state: disconnected"]
    events = [line for line in lines[2:] if not line.startswith("stats: ")]
    assert events == ["tunnel ready: tpsvc0 10.99.0.2/32", "the service is stopping"]
    assert any(line.startswith("stats: tpsvc0: ") for line in lines)


def test_status_of_a_gateway_is_what_tunplug_gateway_status_prints(tmp_path):
    bin_dir = Path(sys.executable).parent
    state = tmp_path / "gateway"
    init = subprocess.run(
        [str(bin_dir / "tunplug-gateway"), "init", "--state-dir", str(state),
         "--endpoint", "192.0.2.1:51820", "--resource", "10.50.0.0/24"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    for extra in ([], ["--json"]):
        ours = subprocess.run(
            [str(bin_dir / "tunplug"), "status", "--gateway-state", str(state), *extra],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        theirs = subprocess.run(
            [str(bin_dir / "tunplug-gateway"), "status", "--state-dir", str(state), *extra],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert ours.returncode == theirs.returncode == 0, ours.stderr
        assert ours.stdout == theirs.stdout and "10.50.0.0/24" in ours.stdout
