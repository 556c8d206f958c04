"""``tunplug-gateway`` as an operator types it: init, client add/list/revoke, errors as one line
with status 2, the settings ``run`` and ``status`` hand to the server, and ``--help``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from tunplug import token
from tunplug.cli import gateway as cli
from tunplug.gateway.registry import Registry
from tunplug.gateway.settings import GatewaySettings
from tunplug.wgquick import parse_wg_quick
from tunplug.wireguard.keys import format_key
from tunplug_crypto_cryptography.backend import CryptographyBackend
from tunplug_flowlog.plugin import FlowLogSettings

GATEWAY = str(Path(sys.executable).with_name("tunplug-gateway"))
ENDPOINT = "203.0.113.7:51820"  # documentation address: parsed, never contacted


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in (
        "TUNPLUG_GATEWAY_STATE_DIR",
        "TUNPLUG_INTERFACE",
        "TUNPLUG_METRICS_ADDRESS",
        "TUNPLUG_TUN_THREADS",
        "TUNPLUG_FLOW_LOGS",
        "TUNPLUG_LOG",
        "LOG_DIR",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def state_dir(tmp_path, monkeypatch) -> Path:
    """An initialised state directory, also in TUNPLUG_GATEWAY_STATE_DIR."""
    path = tmp_path / "state"
    monkeypatch.setenv("TUNPLUG_GATEWAY_STATE_DIR", str(path))
    with Registry.init(
        path,
        endpoint=ENDPOINT,
        resources=["10.20.0.0/16", "fd10::/64"],
        dns=["10.20.0.53"],
        crypto=CryptographyBackend(),
    ):
        pass
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tunplug-gateway: error: ")
    return lines[0]


# -- init -------------------------------------------------------------------------------------
def test_init_prints_the_public_key_and_what_it_created(tmp_path, capsys):
    state_dir = tmp_path / "gw"
    status, out, err = run(
        capsys,
        "init",
        "--state-dir",
        str(state_dir),
        "--endpoint",
        ENDPOINT,
        "--listen-port",
        "51999",
        "--subnet-v4",
        "10.77.0.0/24",
        "--subnet-v6",
        "fd77::/64",
        "--resource",
        "10.1.0.0/16",
        "--resource",
        "10.2.0.0/16",
        "--dns",
        "10.1.0.53",
    )
    assert status == 0, err
    with Registry.open(state_dir) as registry:
        gateway = registry.gateway
        resources = [resource.name for resource in registry.resources()]
    assert f"public key: {format_key(gateway.public_key)}" in out.splitlines()
    assert format_key(gateway.private_key) not in out + err
    assert "10.77.0.0/24, fd77::/64 (gateway 10.77.0.1, fd77::1)" in out
    assert "resources: 10.1.0.0/16, 10.2.0.0/16" in out
    assert "DNS: 10.1.0.53" in out
    assert "UDP port 51999" in out
    assert "client add NAME" in err
    assert (gateway.listen_port, resources) == (51999, ["10.1.0.0/16", "10.2.0.0/16"])


def test_init_twice_is_refused_with_status_2_and_force_replaces(state_dir, capsys):
    with Registry.open(state_dir) as registry:
        before = registry.gateway.public_key
    args = ["init", "--endpoint", ENDPOINT, "--resource", "10.0.0.0/8"]
    status, out, err = run(capsys, *args)
    assert status == 2 and out == ""
    assert "already initialised" in one_error_line(err)
    status, out, err = run(capsys, *args, "--force")
    assert status == 0, err
    assert "tokens issued before no longer work" in err
    with Registry.open(state_dir) as registry:
        assert registry.gateway.public_key != before
        assert f"public key: {format_key(registry.gateway.public_key)}" in out


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--endpoint", "no-port", "--resource", "10.0.0.0/8"], "--endpoint"),
        (["--endpoint", ENDPOINT, "--resource", "10.0.0.0/33"], "--resource"),
        (["--endpoint", ENDPOINT, "--resource", "10.0.0.0/8", "--dns", "x"], "--dns"),
        (["--endpoint", ENDPOINT, "--resource", "::/0", "--subnet-v4", "1.2.3.4/8"], "--subnet"),
        (["--endpoint", ENDPOINT, "--resource", "::/0", "--listen-port", "0"], "--listen-port"),
    ],
)
def test_init_with_a_bad_option_is_one_line_naming_the_flag(tmp_path, capsys, extra, flag):
    status, out, err = run(capsys, "init", "--state-dir", str(tmp_path / "s"), *extra)
    assert status == 2 and out == ""
    assert f"error: {flag}" in one_error_line(err)
    assert not (tmp_path / "s").exists()


def test_init_without_a_resource_is_fine_and_says_so(tmp_path, capsys):
    status, out, err = run(capsys, "init", "--state-dir", str(tmp_path), "--endpoint", ENDPOINT)
    assert status == 0, err
    assert "resources: none yet" in out


# -- clients ----------------------------------------------------------------------------------
def test_client_add_prints_only_the_token_on_stdout(state_dir, capsys):
    status, out, err = run(capsys, "client", "add", "laptop")
    assert status == 0, err
    assert out.count("\n") == 1
    issued = token.decode(out)
    assert issued.name == "laptop" and issued.addresses[0] == "100.64.0.2/32"
    # The gateway's tunnel addresses (the control channel) and the resources.
    assert issued.routes == ["100.64.0.1/32", "fd7a:7470:6c67::1/128", "10.20.0.0/16", "fd10::/64"]
    assert "added client 'laptop'" in err and "shown only once" in err
    assert issued.private_key not in err
    with Registry.open(state_dir) as registry:
        (client,) = registry.clients()
        assert issued.gateway_key == format_key(registry.gateway.public_key)
    assert issued.to_config().peers[0].preshared_key == client.preshared_key


def test_client_add_with_wg_quick_prints_a_standard_config(state_dir, capsys):
    status, out, err = run(capsys, "client", "add", "phone", "--wg-quick")
    assert status == 0, err
    config = parse_wg_quick(out, "stdout")
    assert [str(a) for a in config.addresses] == ["100.64.0.2/32", "fd7a:7470:6c67::2/128"]
    assert [str(n) for n in config.peers[0].allowed_ips][2:] == ["10.20.0.0/16", "fd10::/64"]
    assert out.startswith("[Interface]\n") and "wg-quick configuration" in err


def test_client_add_redirected_to_a_file_by_the_installed_script(state_dir, tmp_path):
    with Registry.open(state_dir) as registry:
        seen = registry.version()
        token_file = tmp_path / "ci.token"
        with token_file.open("w") as output:
            result = subprocess.run(
                [GATEWAY, "client", "add", "ci", "--state-dir", str(state_dir)],
                stdout=output,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
                check=False,
            )
        assert result.returncode == 0, result.stderr
        assert token.decode(token_file.read_text()).name == "ci"
        assert "added client 'ci'" in result.stderr
        assert registry.version() != seen  # the change by another process is seen
        assert [client.name for client in registry.clients()] == ["ci"]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["client", "add", "bad name"], "NAME: 'bad name' is not a client name"),
        (["client", "add", "dup"], "NAME: a client named 'dup' already exists"),
        (["client", "revoke", "ghost"], "NAME: no client named 'ghost'"),
    ],
)
def test_client_errors_are_one_line_with_status_2(state_dir, capsys, argv, fragment):
    assert run(capsys, "client", "add", "dup")[0] == 0
    status, out, err = run(capsys, *argv)
    assert status == 2 and out == ""
    assert fragment in one_error_line(err)


def test_commands_on_an_uninitialised_directory_say_to_run_init(tmp_path, capsys):
    for argv in (["client", "add", "x"], ["client", "list"], ["client", "revoke", "x"]):
        status, out, err = run(capsys, *argv, "--state-dir", str(tmp_path / "none"))
        assert status == 2 and out == ""
        assert "not initialised: run tunplug-gateway init" in one_error_line(err)


def test_client_list_shows_addresses_handshakes_and_traffic(state_dir, capsys):
    for name in ("laptop", "phone", "old"):
        run(capsys, "client", "add", name)
    with Registry.open(state_dir) as registry:
        keys = {client.name: client.public_key for client in registry.clients()}
        registry.record_stats([(keys["laptop"], time.time() - 12, 1536, 3 * 1024**3)])
    assert run(capsys, "client", "revoke", "old")[0] == 0
    status, out, err = run(capsys, "client", "list")
    assert status == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "IPV4", "IPV6", "LAST", "HANDSHAKE", "RX", "TX"]
    assert len(rows) == 2
    assert rows[0].split()[:3] == ["laptop", "100.64.0.2", "fd7a:7470:6c67::2"]
    assert rows[0].split()[3:] in (
        ["12", "s", "ago", "1.5", "KiB", "3.0", "GiB"],
        ["13", "s", "ago", "1.5", "KiB", "3.0", "GiB"],
    )
    assert rows[1].split()[0] == "phone" and "never" in rows[1] and rows[1].endswith("0 B")
    status, out, _ = run(capsys, "client", "list", "--all")
    assert out.splitlines()[0].split()[-1] == "STATUS"
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["laptop", "phone", "old"]
    assert " revoked 0 s ago" in out.splitlines()[3] and out.splitlines()[1].endswith("active")


def test_client_list_json_is_machine_readable_without_secrets(state_dir, capsys):
    run(capsys, "client", "add", "laptop")
    run(capsys, "client", "add", "gone")
    run(capsys, "client", "revoke", "gone")
    status, out, _ = run(capsys, "client", "list", "--json")
    assert status == 0
    (laptop,) = json.loads(out)
    with Registry.open(state_dir) as registry:
        (record,) = registry.clients()
    assert laptop == {
        "name": "laptop",
        "public_key": format_key(record.public_key),
        "address_v4": "100.64.0.2",
        "address_v6": "fd7a:7470:6c67::2",
        "created_at": record.created_at,
        "revoked_at": None,
        "last_handshake": None,
        "rx_bytes": 0,
        "tx_bytes": 0,
    }
    status, out, _ = run(capsys, "client", "list", "--json", "--all")
    assert [(item["name"], item["revoked_at"] is None) for item in json.loads(out)] == [
        ("laptop", True),
        ("gone", False),
    ]


def test_client_list_without_clients_says_how_to_add_one(state_dir, capsys):
    status, out, err = run(capsys, "client", "list")
    assert (status, out) == (0, "")
    assert "client add NAME" in err
    assert run(capsys, "client", "list", "--json")[1].strip() == "[]"


def test_client_revoke_hides_the_client_and_a_second_revoke_fails(state_dir, capsys):
    run(capsys, "client", "add", "laptop")
    status, out, _ = run(capsys, "client", "revoke", "laptop")
    assert status == 0 and "revoked client 'laptop' (100.64.0.2" in out
    assert run(capsys, "client", "list", "--json")[1].strip() == "[]"
    status, _, err = run(capsys, "client", "revoke", "laptop")
    assert status == 2 and "already revoked" in one_error_line(err)


def test_listing_200_clients_takes_less_than_a_second(state_dir, capsys):
    with Registry.open(state_dir, crypto=CryptographyBackend()) as registry:
        clients = [registry.add_client(f"client-{number:03d}").client for number in range(200)]
        registry.record_stats(
            (client.public_key, time.time() - number, number * 1000, number * 2000)
            for number, client in enumerate(clients)
        )
    started = time.perf_counter()
    status, out, _ = run(capsys, "client", "list")
    table_seconds = time.perf_counter() - started
    assert status == 0 and len(out.splitlines()) == 201
    started = time.perf_counter()
    status, out, _ = run(capsys, "client", "list", "--json")
    json_seconds = time.perf_counter() - started
    assert status == 0 and len(json.loads(out)) == 200
    assert table_seconds < 1.0 and json_seconds < 1.0, (table_seconds, json_seconds)


# -- run and status ---------------------------------------------------------------------------
@pytest.fixture
def fake_server(monkeypatch):
    """A stand-in for tunplug.gateway.server that records what the CLI hands it."""
    calls: dict[str, object] = {}
    module = types.ModuleType("tunplug.gateway.server")

    def run_gateway(app, registry, settings):
        calls["run"] = (app, registry.gateway, registry.clients(), settings)

    module.run_gateway = run_gateway  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tunplug.gateway.server", module)
    monkeypatch.setattr(
        cli, "setup_logging", lambda *args, **kwargs: calls.setdefault("logging", (args, kwargs))
    )
    return calls


def test_run_hands_the_settings_and_open_registry_to_the_server(
    state_dir, capsys, monkeypatch, fake_server, tmp_path
):
    run(capsys, "client", "add", "laptop")
    monkeypatch.setenv("TUNPLUG_INTERFACE", "gw-from-env")
    monkeypatch.setenv("TUNPLUG_METRICS_ADDRESS", "127.0.0.1:1")
    status, _, err = run(
        capsys,
        "run",
        "--metrics-address",
        "off",
        "--tun-threads",
        "2",
        "--flow-logs",
        str(tmp_path / "flows"),
        "--log-level",
        "debug",
        "--log-dir",
        str(tmp_path / "logs"),
    )
    assert status == 0, err
    app, gateway, clients, settings = fake_server["run"]  # type: ignore[misc]
    assert isinstance(settings, GatewaySettings) and app.settings is settings
    assert settings.state_dir == state_dir
    assert settings.interface == "gw-from-env"
    assert settings.metrics_address == "off"  # the flag wins over the variable
    assert settings.tun_threads == 2
    # The flow-log plugin's own setting, from its flag (tunplug_add_settings).
    assert settings.plugin(FlowLogSettings).flow_logs == tmp_path / "flows"
    assert (settings.log_level, settings.log_dir) == ("debug", tmp_path / "logs")
    assert fake_server["logging"][0] == ("debug", tmp_path / "logs")  # type: ignore[index]
    with Registry.open(state_dir) as registry:
        assert gateway == registry.gateway
        assert clients == registry.clients()


def test_run_defaults(state_dir, capsys, fake_server):
    assert run(capsys, "run")[0] == 0
    settings = fake_server["run"][3]  # type: ignore[index]
    assert (settings.interface, settings.metrics_address) == ("tunplug-gw0", "127.0.0.1:9586")


def test_run_with_a_bad_setting_is_one_line_with_status_2(state_dir, capsys, fake_server):
    status, _, err = run(capsys, "run", "--tun-threads", "0")
    assert status == 2 and "--tun-threads" in one_error_line(err)
    status, _, err = run(capsys, "run", "--interface", "a-name-far-too-long")
    assert status == 2 and "--interface" in one_error_line(err)
    assert "run" not in fake_server


def test_run_on_an_uninitialised_directory_says_to_run_init(tmp_path, capsys, fake_server):
    status, _, err = run(capsys, "run", "--state-dir", str(tmp_path / "none"))
    assert status == 2 and "run tunplug-gateway init" in one_error_line(err)


def test_status_shows_the_gateway_its_resources_and_clients(state_dir, capsys, monkeypatch):
    from tunplug.gateway import firewall

    run(capsys, "client", "add", "laptop")
    with Registry.open(state_dir) as registry:
        gateway_key = format_key(registry.gateway.public_key)
    # The firewall's drop counter is there only while the gateway runs.
    monkeypatch.setattr(firewall, "dropped_packets", lambda interface: 7)
    status, out, _ = run(capsys, "status", "--json")
    shown = json.loads(out)
    assert status == 0 and shown["running"] and shown["dropped_not_resource"] == 7
    assert (shown["interface"], shown["public_key"]) == ("tunplug-gw0", gateway_key)
    assert [resource["target"] for resource in shown["resources"]] == ["10.20.0.0/16", "fd10::/64"]
    assert [peer["name"] for peer in shown["peers"]] == ["laptop"]
    monkeypatch.setattr(firewall, "dropped_packets", lambda interface: None)
    status, out, _ = run(capsys, "status")
    assert status == 0 and out.startswith("interface: tunplug-gw0 (not running)\n")
    assert f"  public key: {gateway_key}\n" in out
    assert "  latest handshake: never\n  transfer: 0 B received, 0 B sent\n" in out


# -- help and formatting ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([], "tunplug-gateway init --endpoint"),
        (["init"], "--subnet-v4"),
        (["client"], "revoke"),
        (["client", "add"], "shown only once"),
        (["client", "list"], "--json"),
        (["client", "revoke"], "within a second"),
        (["run"], "TUNPLUG_METRICS_ADDRESS"),
        (["status"], "--json"),
    ],
)
def test_every_command_explains_itself(capsys, argv, fragment):
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert fragment in " ".join(out.split())
    if argv and argv != ["client"]:
        assert "--state-dir" in out and "TUNPLUG_GATEWAY_STATE_DIR" in out


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "never"),
        (0, "0 s ago"),
        (12.7, "12 s ago"),
        (119, "119 s ago"),
        (600, "10 min ago"),
        (7199, "119 min ago"),
        (7200, "2 h ago"),
        (172800, "2 d ago"),
        (-5, "0 s ago"),
    ],
)
def test_format_age(seconds, text):
    now = 1_000_000.0
    assert cli.format_age(None if seconds is None else now - seconds, now) == text


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (5 * 1024**2, "5.0 MiB"),
        (3 * 1024**3, "3.0 GiB"),
        (2 * 1024**4, "2.0 TiB"),
        (4096 * 1024**4, "4096.0 TiB"),
    ],
)
def test_format_bytes(count, text):
    assert cli.format_bytes(count) == text


def test_rotate_key_prints_the_new_public_key_that_status_then_shows(state_dir, capsys):
    before = json.loads(run(capsys, "status", "--json")[1])["public_key"]
    status, out, err = run(capsys, "rotate-key")
    assert status == 0, err
    new = out.split("new gateway public key ")[1].split(";")[0]
    assert new != before
    assert "client add" in out and "SIGHUP" in out
    assert json.loads(run(capsys, "status", "--json")[1])["public_key"] == new


def test_rotate_key_on_a_directory_never_initialised_is_one_line(tmp_path, capsys):
    status, _, err = run(capsys, "rotate-key", "--state-dir", str(tmp_path / "none"))
    assert status == 2
    assert "is not initialised" in one_error_line(err)
