"""``systemd-resolved`` against a fake ``resolvectl`` on ``PATH`` that records its arguments.

systemd-resolved does not run on the test machines, and these tests must never change the
host's resolver, so the fake stands in for it: each call appends its argv (tab-separated) to
a log, and a file ``fail-<verb>`` next to it makes that verb fail with the file's text on
stderr.
"""

from __future__ import annotations

import logging
import stat
from ipaddress import ip_address
from pathlib import Path

import pytest

from tunplug.dns import DnsSettings
from tunplug_dns._common import DnsError
from tunplug_dns.resolved import STATE_FILE, ResolvectlError, SystemdResolved

pytestmark = pytest.mark.anyio

FAKE = """#!/bin/sh
for arg in "$@"; do printf '%s\\t' "$arg"; done >> "{dir}/argv.log"
printf '\\n' >> "{dir}/argv.log"
if [ -f "{dir}/fail-$1" ]; then cat "{dir}/fail-$1" >&2; exit 1; fi
exit 0
"""


class FakeResolvectl:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        script = directory / "resolvectl"
        script.write_text(FAKE.format(dir=directory))
        script.chmod(script.stat().st_mode | stat.S_IXUSR)

    def calls(self) -> list[list[str]]:
        log = self.dir / "argv.log"
        if not log.exists():
            return []
        return [line.split("\t")[:-1] for line in log.read_text().splitlines()]

    def fail(self, verb: str, stderr: str) -> None:
        (self.dir / f"fail-{verb}").write_text(stderr)

    def heal(self, verb: str) -> None:
        (self.dir / f"fail-{verb}").unlink()


@pytest.fixture
def fake(tmp_path, monkeypatch) -> FakeResolvectl:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return FakeResolvectl(bin_dir)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


def settings(
    *servers: str, domains: tuple[str, ...] = (), full: bool = False, iface: str = "tun0"
) -> DnsSettings:
    return DnsSettings(iface, tuple(ip_address(s) for s in servers), domains, full)


async def test_split_dns_sets_servers_domains_and_no_default_route(fake, state_dir):
    manager = SystemdResolved(state_dir)
    await manager.activate(settings("10.0.0.53", "fd00::53", domains=("corp.example", "lab.test")))
    assert fake.calls() == [
        ["dns", "tun0", "10.0.0.53", "fd00::53"],
        ["domain", "tun0", "corp.example", "lab.test"],
        ["default-route", "tun0", "no"],
    ]
    assert (state_dir / STATE_FILE).exists()

    await manager.deactivate()
    assert fake.calls()[-1] == ["revert", "tun0"]
    assert not (state_dir / STATE_FILE).exists()


async def test_full_tunnel_adds_the_catch_all_routing_domain_and_default_route(fake, state_dir):
    manager = SystemdResolved(state_dir)
    await manager.activate(settings("10.0.0.53", domains=("corp.example",), full=True))
    assert fake.calls() == [
        ["dns", "tun0", "10.0.0.53"],
        ["domain", "tun0", "corp.example", "~."],
        ["default-route", "tun0", "yes"],
    ]
    await manager.deactivate()


async def test_servers_without_domains_become_the_default_route(fake, state_dir):
    await SystemdResolved(state_dir).activate(settings("10.0.0.53"))
    assert fake.calls() == [["dns", "tun0", "10.0.0.53"], ["default-route", "tun0", "yes"]]


async def test_deactivate_is_idempotent(fake, state_dir):
    manager = SystemdResolved(state_dir)
    await manager.deactivate()
    assert fake.calls() == []
    await manager.activate(settings("10.0.0.53"))
    await manager.deactivate()
    await manager.deactivate()
    assert [call[0] for call in fake.calls()].count("revert") == 1


async def test_a_link_that_is_already_gone_counts_as_reverted(fake, state_dir):
    manager = SystemdResolved(state_dir)
    await manager.activate(settings("10.0.0.53"))
    fake.fail("revert", 'Failed to resolve interface "tun0": No such device\n')
    await manager.deactivate()
    assert not (state_dir / STATE_FILE).exists()


async def test_a_crashed_run_is_reverted_at_the_next_activate(fake, state_dir, caplog):
    await SystemdResolved(state_dir).activate(settings("10.0.0.53", iface="tun-old"))
    # No deactivate: the process died. The next run uses another device name.
    with caplog.at_level(logging.WARNING):
        await SystemdResolved(state_dir).activate(settings("10.0.0.54", iface="tun-new"))
    assert "tun-old left by a previous run that did not exit cleanly" in caplog.text
    calls = fake.calls()
    assert calls[2:4] == [["revert", "tun-old"], ["dns", "tun-new", "10.0.0.54"]]


async def test_a_failing_command_reverts_what_was_applied_and_raises_with_stderr(fake, state_dir):
    fake.fail("domain", "Failed to set domain configuration: Access denied\n")
    manager = SystemdResolved(state_dir)
    with pytest.raises(ResolvectlError) as caught:
        await manager.activate(settings("10.0.0.53", domains=("corp.example",)))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("resolvectl domain tun0 corp.example failed (exit status 1)")
    assert message.endswith("Failed to set domain configuration: Access denied")
    assert fake.calls() == [
        ["dns", "tun0", "10.0.0.53"],
        ["domain", "tun0", "corp.example"],
        ["revert", "tun0"],
    ]
    assert not (state_dir / STATE_FILE).exists()


async def test_when_undoing_a_failure_fails_the_state_is_kept_for_the_next_run(
    fake, state_dir, caplog
):
    fake.fail("default-route", "Unknown command verb default-route.\n")
    fake.fail("revert", "Failed to revert interface configuration: Connection timed out\n")
    manager = SystemdResolved(state_dir)
    with caplog.at_level(logging.WARNING), pytest.raises(ResolvectlError, match="Unknown command"):
        await manager.activate(settings("10.0.0.53"))
    assert "could not undo the partial DNS settings of tun0" in caplog.text
    assert (state_dir / STATE_FILE).exists()

    fake.heal("revert")
    await SystemdResolved(state_dir).deactivate()
    assert fake.calls()[-1] == ["revert", "tun0"]
    assert not (state_dir / STATE_FILE).exists()


async def test_no_servers_runs_no_command(fake, state_dir):
    await SystemdResolved(state_dir).activate(settings(domains=("corp.example",)))
    assert fake.calls() == []


async def test_an_interface_name_that_reads_as_an_option_is_refused(fake, state_dir):
    with pytest.raises(DnsError, match="invalid interface name '--help'"):
        await SystemdResolved(state_dir).activate(settings("10.0.0.53", iface="--help"))
    assert fake.calls() == []


async def test_the_executable_can_be_given_to_the_constructor(fake, state_dir, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    manager = SystemdResolved(state_dir, resolvectl=str(fake.dir / "resolvectl"))
    await manager.activate(settings("10.0.0.53"))
    assert fake.calls()[0] == ["dns", "tun0", "10.0.0.53"]


async def test_a_missing_executable_is_one_line_error(state_dir, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ResolvectlError, match=r"^cannot run resolvectl: command not found$"):
        await SystemdResolved(state_dir).activate(settings("10.0.0.53"))
    assert not (state_dir / STATE_FILE).exists()


def test_unavailable_reason_names_what_is_missing(fake, monkeypatch, tmp_path):
    monkeypatch.setattr(SystemdResolved, "runtime_dir", tmp_path / "missing")
    assert SystemdResolved.unavailable_reason() == (
        f"systemd-resolved is not running ({tmp_path / 'missing'} does not exist)"
    )
    monkeypatch.setattr(SystemdResolved, "runtime_dir", tmp_path)
    assert SystemdResolved.unavailable_reason() is None
    monkeypatch.setenv("PATH", "/nonexistent")
    assert SystemdResolved.unavailable_reason() == "resolvectl not found on PATH"
