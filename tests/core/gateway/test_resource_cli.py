"""``tunplug-gateway resource ...`` and ``group ...`` as an operator types them: live changes
(each bumps the registry version a running gateway polls), listings, and bad input as one line
with status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunplug.cli import gateway as cli
from tunplug.gateway.registry import Registry
from tunplug.resources import PortRule
from tunplug_crypto_cryptography.backend import CryptographyBackend

ENDPOINT = "203.0.113.7:51820"  # documentation address: parsed, never contacted


@pytest.fixture
def state_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "state"
    monkeypatch.setenv("TUNPLUG_GATEWAY_STATE_DIR", str(path))
    with Registry.init(path, endpoint=ENDPOINT, crypto=CryptographyBackend()) as registry:
        registry.add_client("laptop")
        registry.add_client("phone")
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def version(state_dir: Path) -> int:
    with Registry.open(state_dir) as registry:
        return registry.version()


def test_resources_are_added_listed_and_removed_live(state_dir, capsys):
    before = version(state_dir)
    assert run(capsys, "group", "add", "eng")[0] == 0
    status, out, err = run(
        capsys, "resource", "add", "*.corp.example", "--port", "tcp/443", "--group", "eng"
    )
    assert status == 0, err
    assert "added resource '*.corp.example' (dns *.corp.example, ports tcp/443)" in out
    assert run(capsys, "resource", "add", "10.10.0.7", "--name", "db", "--port", "tcp/5432")[0] == 0
    assert run(capsys, "resource", "add", "internet")[0] == 0
    assert version(state_dir) == before + 4  # each change once
    status, out, _ = run(capsys, "resource", "list")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "TARGET", "PORTS", "GROUPS"]
    assert lines[1].split() == ["*.corp.example", "dns", "*.corp.example", "tcp/443", "eng"]
    assert lines[2].split() == ["db", "cidr", "10.10.0.7/32", "tcp/5432", "everyone"]
    assert lines[3].split() == ["internet", "internet", "internet", "all", "everyone"]
    status, out, _ = run(capsys, "resource", "list", "--json")
    listed = json.loads(out)
    assert listed[0] == {
        "name": "*.corp.example",
        "kind": "dns",
        "target": "*.corp.example",
        "ports": ["tcp/443"],
        "groups": ["eng"],
    }
    status, out, _ = run(capsys, "resource", "remove", "db")
    assert status == 0 and "removed resource 'db'" in out
    with Registry.open(state_dir) as registry:
        assert [r.name for r in registry.resources()] == ["*.corp.example", "internet"]
        assert registry.resources()[0].ports == (PortRule("tcp", 443, 443),)
    assert version(state_dir) == before + 5


def test_a_resource_is_removed_by_its_name_or_its_target_as_typed(state_dir, capsys):
    assert run(capsys, "resource", "add", "10.10.0.7")[0] == 0
    assert run(capsys, "resource", "add", "DB.Internal.")[0] == 0
    _, out, _ = run(capsys, "resource", "list")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["10.10.0.7/32", "db.internal"]
    assert run(capsys, "resource", "remove", "10.10.0.7")[0] == 0
    assert run(capsys, "resource", "remove", "DB.internal")[0] == 0
    with Registry.open(state_dir) as registry:
        assert registry.resources() == []


def test_groups_and_members(state_dir, capsys):
    assert run(capsys, "group", "add", "eng")[0] == 0
    assert run(capsys, "group", "join", "eng", "laptop", "phone")[0] == 0
    assert run(capsys, "group", "leave", "eng", "phone")[0] == 0
    status, out, err = run(capsys, "client", "add", "tablet", "--group", "eng")
    assert status == 0, err
    status, out, _ = run(capsys, "group", "list", "--json")
    assert json.loads(out) == {"eng": ["laptop", "tablet"]}
    with Registry.open(state_dir) as registry:
        assert registry.client_groups() == {"laptop": ("eng",), "tablet": ("eng",)}
        registry.revoke("tablet")  # revoked clients are no members
        assert registry.groups() == {"eng": ("laptop",)}
    status, out, _ = run(capsys, "group", "list")
    assert out.splitlines()[1].split() == ["eng", "laptop"]
    assert run(capsys, "group", "remove", "eng")[0] == 0
    with Registry.open(state_dir) as registry:
        assert registry.groups() == {} and registry.client_groups() == {}


@pytest.mark.parametrize(
    ("argv", "flag", "fragment"),
    [
        (["resource", "remove", "nothing"], "NAME", "no resource named 'nothing'"),
        (["resource", "add", "10.0.0.0/33"], "TARGET", "not a network"),
        (["resource", "add", "10.0.0.1/8"], "TARGET", "host bits set"),
        (["resource", "add", "corp"], "TARGET", "not a DNS name or wildcard"),
        (["resource", "add", "a.*.corp.example"], "TARGET", "not a DNS name or wildcard"),
        (["resource", "add", "0.0.0.0/0"], "TARGET", "'internet'"),
        (["resource", "add", "100.64.0.0/24"], "TARGET", "overlaps the clients' subnet"),
        (["resource", "add", "10.0.0.0/8", "--group", "nope"], "--group", "no group named"),
        (["resource", "add", "10.0.0.0/8", "--port", "tcp/0"], "--port", "1-65535"),
        (["resource", "add", "10.0.0.0/8", "--port", "http"], "--port", "not a port rule"),
        (["resource", "add", "internet", "--port", "tcp/443"], "--port", "cannot be limited"),
        (["group", "add", "bad name"], "GROUP", "not a group name"),
        (["group", "remove", "nope"], "GROUP", "no group named"),
        (["group", "join", "nope", "laptop"], "GROUP", "no group named"),
        (["client", "add", "tablet", "--group", "nope"], "--group", "no group named"),
    ],
)
def test_bad_input_is_one_line_with_status_2_and_changes_nothing(
    state_dir, capsys, argv, flag, fragment
):
    before = version(state_dir)
    status, out, err = run(capsys, *argv)
    assert status == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"tunplug-gateway: error: {flag}: ")
    assert fragment in line
    assert version(state_dir) == before
    with Registry.open(state_dir) as registry:
        assert [c.name for c in registry.clients()] == ["laptop", "phone"]


def test_a_taken_name_an_unknown_client_and_a_group_in_use_are_refused(state_dir, capsys):
    assert run(capsys, "resource", "add", "db.internal")[0] == 0
    status, _, err = run(capsys, "resource", "add", "10.1.0.0/16", "--name", "db.internal")
    assert status == 2 and "already exists" in err
    assert run(capsys, "resource", "add", "internet")[0] == 0
    status, _, err = run(capsys, "resource", "add", "internet", "--name", "exit")
    assert status == 2 and "the Internet resource already exists" in err
    assert run(capsys, "group", "add", "eng")[0] == 0
    status, _, err = run(capsys, "group", "join", "eng", "ghost")
    assert status == 2 and "no active client named 'ghost'" in err
    assert run(capsys, "resource", "add", "10.1.0.0/16", "--group", "eng")[0] == 0
    status, _, err = run(capsys, "group", "remove", "eng")
    assert status == 2 and "limits resource(s) 10.1.0.0/16" in err


def test_tokens_need_no_resources_and_carry_the_control_channel(state_dir, capsys):
    from tunplug import token

    status, out, _ = run(capsys, "client", "add", "tablet")
    decoded = token.decode(out.strip())
    assert decoded.routes == ["100.64.0.1/32", "fd7a:7470:6c67::1/128"]
    assert decoded.control == "100.64.0.1:51820"
    # A stock WireGuard client has no control channel: its file routes what it may reach now.
    assert run(capsys, "resource", "add", "10.9.0.0/16")[0] == 0
    assert run(capsys, "resource", "add", "internet")[0] == 0
    status, out, _ = run(capsys, "client", "add", "phone2", "--wg-quick")
    assert status == 0
    (allowed,) = [line for line in out.splitlines() if line.startswith("AllowedIPs")]
    assert allowed == (
        "AllowedIPs = 100.64.0.1/32, fd7a:7470:6c67::1/128, 10.9.0.0/16, 0.0.0.0/0, ::/0"
    )


def test_help_explains_the_targets(capsys):
    with pytest.raises(SystemExit):
        cli.main(["resource", "add", "--help"])
    out = capsys.readouterr().out
    for text in ("*.corp.example", "internet", "tcp/443", "--group"):
        assert text in out
