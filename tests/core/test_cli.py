"""``tunplug`` as a user runs it: a real subprocess of the installed console script."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TUNPLUG = shutil.which("tunplug", path=str(Path(sys.executable).parent)) or "tunplug"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TUNPLUG, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_plugins_lists_builtin_backends_with_distribution():
    result = run("plugins")
    assert result.returncode == 0, result.stderr
    for expected in (
        "tun:linux-mq",
        "tun:wintun",
        "tun:darwin",
        "tun:fake",
        "dns:disabled",
        "crypto:cryptography",
        "crypto:sodium",
        "tunplug 0.1.0",
    ):
        assert expected in result.stdout
    assert "runs on Windows only" in result.stdout
    # Backends that were never run on their platform say so, in the listing itself.
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "never run on real Windows: CI runs it over a fake wintun.dll" in lines["tun-wintun"]
    assert "never run on real macOS" in lines["tun-darwin"]
    assert "never run on real Windows" in lines["dns"]
    assert "never run" not in lines["tun-linux-mq"]


@pytest.mark.parametrize("choice", ["python", "native"])
def test_plugins_says_which_data_path_a_tunnel_would_use(choice):
    if choice == "native" and importlib.util.find_spec("tunplug_fastpath") is None:
        pytest.skip("the native core is not built")
    result = run("plugins", env={"TUNPLUG_DATA_PATH": choice})
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("data path:")]
    assert line.startswith(f"data path: {choice} (")
    assert f"datapath:{choice}" in result.stdout


def test_plugins_names_an_unknown_data_path():
    result = run("plugins", env={"TUNPLUG_DATA_PATH": "warp"})
    assert "data path: - (TUNPLUG_DATA_PATH: unknown data path 'warp'" in result.stdout


def test_plugins_json_shows_blocked_plugins():
    result = run("plugins", "--json", env={"TUNPLUG_DISABLE_PLUGINS": "tun-fake"})
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["tun-fake"]["status"] == "blocked"
    assert rows["tun-fake"]["provides"] == {}
    assert rows["tun-darwin"]["provides"]["tun"][0]["available"] is False
    assert "never run on real macOS" in rows["tun-darwin"]["provides"]["tun"][0]["caveat"]
    assert rows["tun-linux-mq"]["provides"]["tun"][0]["caveat"] is None
    assert rows["crypto-cryptography"]["distribution"] == "tunplug"


def test_plugins_lists_each_plugins_settings_with_flag_and_variable():
    result = run("plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    flow = {item["name"]: item for item in rows["flow-log"]["settings"]}
    assert flow["flow_logs_max_bytes"] == {
        "name": "flow_logs_max_bytes",
        "flag": "--flow-logs-max-bytes",
        "env": "TUNPLUG_FLOW_LOGS_MAX_BYTES",
        "type": "int",
        "default": 50 * 1024 * 1024,
        "description": "size at which the flow log file is rotated",
    }
    assert flow["flow_logs"]["default"] is None
    assert rows["tun-fake"]["settings"] == []
    table = run("plugins").stdout
    assert "setting:--flow-logs; setting:--flow-logs-max-bytes" in table


def test_bad_setting_is_one_line_and_exit_code_2():
    result = run("plugins", env={"TUNPLUG_TUN_THREADS": "lots"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("tunplug: error: TUNPLUG_TUN_THREADS:")


def test_help_explains_the_commands():
    result = run("--help")
    assert result.returncode == 0
    assert "plugins" in result.stdout and "demo" in result.stdout
    assert "TUNPLUG_DISABLE_PLUGINS" in result.stdout


@pytest.mark.parametrize("args", [["nonsense"], ["plugins", "--bogus"]])
def test_usage_errors_exit_2(args):
    assert run(*args).returncode == 2


def test_keygen_and_pubkey_round_trip():
    private = run("keygen").stdout.strip()
    assert len(private) == 44 and private.endswith("=")
    public = subprocess.run(
        [TUNPLUG, "pubkey"],
        input=private + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    assert len(public) == 44 and public != private


@pytest.mark.root  # wireguard-tools comes with the root setup; in CI a skip fails
@pytest.mark.skipif(shutil.which("wg") is None, reason="needs wireguard-tools' wg")
def test_keys_match_wg():
    private = run("keygen").stdout.strip()
    ours = subprocess.run(
        [TUNPLUG, "pubkey"], input=private, capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    theirs = subprocess.run(
        ["wg", "pubkey"], input=private, capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    assert ours == theirs
    wg_private = subprocess.run(
        ["wg", "genkey"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert (
        subprocess.run(
            [TUNPLUG, "pubkey"], input=wg_private, capture_output=True, text=True, check=True
        ).stdout.strip()
        == subprocess.run(
            ["wg", "pubkey"], input=wg_private, capture_output=True, text=True, check=True
        ).stdout.strip()
    )


def test_pubkey_rejects_garbage_with_exit_2():
    result = subprocess.run(
        [TUNPLUG, "pubkey"],
        input="not a key\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("tunplug: error: stdin: private key must be 44 characters")


@pytest.mark.parametrize(
    "argv",
    [
        ["ctl", "--socket", "/run/x.sock", "status"],
        ["ctl", "status", "--socket", "/run/x.sock"],
        ["ctl", "connect", "--socket", "/run/x.sock", "--token-file", "t"],
    ],
)
def test_ctl_takes_socket_before_or_after_the_action(argv):
    from tunplug.cli.main import build_parser

    assert build_parser().parse_args(argv).socket == Path("/run/x.sock")
    assert build_parser().parse_args(["ctl", "status"]).socket is None
