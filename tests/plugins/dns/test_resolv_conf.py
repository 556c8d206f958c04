"""``etc-resolv-conf`` against temporary files: what it writes, what it restores, and when."""

from __future__ import annotations

import errno
import logging
import os
from ipaddress import ip_address
from pathlib import Path

import pytest

from tunplug.dns import DnsSettings
from tunplug_dns import resolv_conf
from tunplug_dns._common import DnsError
from tunplug_dns.resolv_conf import BACKUP_FILE, MARKER_PREFIX, EtcResolvConf

pytestmark = pytest.mark.anyio

ORIGINAL = b"# from DHCP\nnameserver 192.0.2.53\noptions edns0 trust-ad\n"


def settings(*servers: str, domains: tuple[str, ...] = (), full: bool = True) -> DnsSettings:
    return DnsSettings(
        interface="tun-test",
        servers=tuple(ip_address(s) for s in servers),
        domains=domains,
        full_tunnel=full,
    )


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def resolv(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    path = etc / "resolv.conf"
    path.write_bytes(ORIGINAL)
    path.chmod(0o640)
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


async def test_activate_writes_marker_servers_and_search_then_deactivate_restores_bytes_and_mode(
    resolv, state_dir
):
    manager = EtcResolvConf(state_dir, path=resolv)
    await manager.activate(settings("10.0.0.1", "fd00::53", domains=("corp.example", "lab.test")))

    written = lines(resolv)
    assert written[0] == f"{MARKER_PREFIX}tun-test: restored on exit (backup in {state_dir})"
    assert written[1:] == [
        "nameserver 10.0.0.1",
        "nameserver fd00::53",
        "search corp.example lab.test",
    ]
    assert (state_dir / BACKUP_FILE).exists()

    await manager.deactivate()
    assert resolv.read_bytes() == ORIGINAL
    assert resolv.stat().st_mode & 0o777 == 0o640
    assert not (state_dir / BACKUP_FILE).exists()
    assert sorted(p.name for p in resolv.parent.iterdir()) == ["resolv.conf"]  # no temp files


async def test_deactivate_is_idempotent_and_harmless_without_activate(resolv, state_dir):
    manager = EtcResolvConf(state_dir, path=resolv)
    await manager.deactivate()
    assert resolv.read_bytes() == ORIGINAL
    await manager.activate(settings("10.0.0.1"))
    await manager.deactivate()
    resolv.write_bytes(b"nameserver 198.51.100.1\n")  # a later change by someone else
    await manager.deactivate()
    assert resolv.read_bytes() == b"nameserver 198.51.100.1\n"


async def test_a_symlink_is_replaced_and_then_restored_as_the_same_symlink(tmp_path, state_dir):
    run = tmp_path / "run" / "systemd" / "resolve"
    run.mkdir(parents=True)
    stub = run / "stub-resolv.conf"
    stub.write_bytes(b"nameserver 127.0.0.53\n")
    etc = tmp_path / "etc"
    etc.mkdir()
    link = etc / "resolv.conf"
    link.symlink_to("../run/systemd/resolve/stub-resolv.conf")

    manager = EtcResolvConf(state_dir, path=link)
    await manager.activate(settings("10.0.0.1"))
    assert not link.is_symlink()
    assert "nameserver 10.0.0.1" in lines(link)
    assert stub.read_bytes() == b"nameserver 127.0.0.53\n"  # the link's target is untouched

    await manager.deactivate()
    assert link.is_symlink()
    assert os.readlink(link) == "../run/systemd/resolve/stub-resolv.conf"
    assert link.read_bytes() == b"nameserver 127.0.0.53\n"


async def test_a_missing_file_is_missing_again_after_deactivate(tmp_path, state_dir):
    path = tmp_path / "resolv.conf"
    manager = EtcResolvConf(state_dir, path=path)
    await manager.activate(settings("10.0.0.1"))
    assert path.exists()
    await manager.deactivate()
    assert not path.exists()


async def test_a_file_changed_by_someone_else_is_kept_with_a_warning(resolv, state_dir, caplog):
    manager = EtcResolvConf(state_dir, path=resolv)
    await manager.activate(settings("10.0.0.1"))
    resolv.write_bytes(b"nameserver 203.0.113.9\n")  # e.g. a DHCP client renewed its lease

    with caplog.at_level(logging.WARNING):
        await manager.deactivate()
    assert resolv.read_bytes() == b"nameserver 203.0.113.9\n"
    assert "changed by something else" in caplog.text
    assert not (state_dir / BACKUP_FILE).exists()


async def test_activate_restores_the_backup_a_crashed_run_left(resolv, state_dir, caplog):
    crashed = EtcResolvConf(state_dir, path=resolv)
    await crashed.activate(settings("10.0.0.1"))
    # The process dies here: no deactivate. The next run starts with a new manager.
    restarted = EtcResolvConf(state_dir, path=resolv)
    with caplog.at_level(logging.WARNING):
        await restarted.activate(settings("10.9.9.9"))
    assert "left by a previous run that did not exit cleanly" in caplog.text
    assert lines(resolv)[1:] == ["nameserver 10.9.9.9"]

    await restarted.deactivate()
    assert resolv.read_bytes() == ORIGINAL  # the pre-crash original, not the crashed run's file


async def test_deactivate_alone_also_recovers_after_a_crash(resolv, state_dir):
    await EtcResolvConf(state_dir, path=resolv).activate(settings("10.0.0.1"))
    await EtcResolvConf(state_dir, path=resolv).deactivate()
    assert resolv.read_bytes() == ORIGINAL


async def test_a_crash_between_backup_and_write_leaves_nothing_to_undo(
    resolv, state_dir, monkeypatch, caplog
):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for SIGKILL right after the backup was written

    manager = EtcResolvConf(state_dir, path=resolv)
    monkeypatch.setattr(EtcResolvConf, "_install_file", staticmethod(crash))
    with pytest.raises(KeyboardInterrupt):
        await manager.activate(settings("10.0.0.1"))
    monkeypatch.undo()
    assert resolv.read_bytes() == ORIGINAL

    with caplog.at_level(logging.WARNING):
        await EtcResolvConf(state_dir, path=resolv).deactivate()
    assert resolv.read_bytes() == ORIGINAL
    assert caplog.text == ""  # nothing was changed, so nothing to warn about
    assert not (state_dir / BACKUP_FILE).exists()


async def test_a_crash_in_the_middle_of_an_in_place_write_is_recovered(resolv, state_dir):
    manager = EtcResolvConf(state_dir, path=resolv)
    await manager.activate(settings("10.0.0.1"))
    ours = resolv.read_bytes()
    resolv.write_bytes(ours[:7])  # what SIGKILL during a truncate-and-write can leave
    await EtcResolvConf(state_dir, path=resolv).activate(settings("10.0.0.2"))
    await EtcResolvConf(state_dir, path=resolv).deactivate()
    assert resolv.read_bytes() == ORIGINAL


async def test_more_than_three_servers_writes_three_and_warns(resolv, state_dir, caplog):
    manager = EtcResolvConf(state_dir, path=resolv)
    with caplog.at_level(logging.WARNING):
        await manager.activate(settings("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"))
    assert [line for line in lines(resolv) if line.startswith("nameserver")] == [
        "nameserver 10.0.0.1",
        "nameserver 10.0.0.2",
        "nameserver 10.0.0.3",
    ]
    assert "at most 3 nameserver lines; not writing 10.0.0.4" in caplog.text
    await manager.deactivate()


async def test_split_tunnel_domains_are_written_and_the_limitation_logged(
    resolv, state_dir, caplog
):
    manager = EtcResolvConf(state_dir, path=resolv)
    with caplog.at_level(logging.INFO):
        await manager.activate(settings("fd00::1", domains=("corp.example",), full=False))
    assert lines(resolv)[1:] == ["nameserver fd00::1", "search corp.example"]
    assert "cannot send only corp.example to the tunnel" in caplog.text
    await manager.deactivate()


async def test_no_servers_leaves_the_file_alone(resolv, state_dir):
    manager = EtcResolvConf(state_dir, path=resolv)
    await manager.activate(settings(domains=("corp.example",)))
    assert resolv.read_bytes() == ORIGINAL
    assert not (state_dir / BACKUP_FILE).exists()


@pytest.mark.parametrize(
    "bad", ["corp.example\nnameserver 6.6.6.6", "-x", "two words", "a..b", "x" * 64 + ".com"]
)
async def test_a_domain_that_would_corrupt_the_file_is_refused(resolv, state_dir, bad):
    manager = EtcResolvConf(state_dir, path=resolv)
    with pytest.raises(DnsError, match="invalid search domain"):
        await manager.activate(settings("10.0.0.1", domains=(bad,)))
    assert resolv.read_bytes() == ORIGINAL


async def test_rename_refused_with_ebusy_falls_back_to_writing_in_place(
    resolv, state_dir, monkeypatch, caplog
):
    """A bind-mounted resolv.conf (Docker, Kubernetes) cannot be renamed over."""
    inode = resolv.stat().st_ino
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == resolv:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    manager = EtcResolvConf(state_dir, path=resolv)
    with caplog.at_level(logging.INFO):
        await manager.activate(settings("10.0.0.1"))
    assert "writing it in place" in caplog.text
    assert lines(resolv)[1:] == ["nameserver 10.0.0.1"]
    assert resolv.stat().st_ino == inode  # the same file, rewritten

    await manager.deactivate()
    assert resolv.read_bytes() == ORIGINAL
    assert resolv.stat().st_ino == inode
    assert sorted(p.name for p in resolv.parent.iterdir()) == ["resolv.conf"]


async def test_a_rename_error_that_writing_in_place_cannot_fix_is_reported(
    resolv, state_dir, monkeypatch
):
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == resolv:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    manager = EtcResolvConf(state_dir, path=resolv)
    with pytest.raises(DnsError, match=r"cannot replace .*resolv.conf: Input/output error"):
        await manager.activate(settings("10.0.0.1"))
    assert resolv.read_bytes() == ORIGINAL
    assert not (state_dir / BACKUP_FILE).exists()


async def test_a_failed_in_place_write_puts_the_original_back(resolv, state_dir, monkeypatch):
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == resolv:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        real_replace(src, dst)

    real_write_in_place = resolv_conf._write_in_place
    calls = []

    def half_write(path, content):
        calls.append(content)
        if len(calls) > 1:  # putting the original back works
            return real_write_in_place(path, content)
        path.write_bytes(content[:10])  # a full disk, mid-write
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(resolv_conf, "_write_in_place", half_write)
    manager = EtcResolvConf(state_dir, path=resolv)
    with pytest.raises(DnsError, match="No space left on device"):
        await manager.activate(settings("10.0.0.1"))
    monkeypatch.undo()
    assert calls[1] == ORIGINAL
    assert resolv.read_bytes() == ORIGINAL
    assert not (state_dir / BACKUP_FILE).exists()


async def test_a_damaged_backup_is_reported_not_guessed(resolv, state_dir):
    (state_dir / BACKUP_FILE).write_text("{not json")
    manager = EtcResolvConf(state_dir, path=resolv)
    with pytest.raises(DnsError, match="damaged"):
        await manager.activate(settings("10.0.0.1"))
    assert resolv.read_bytes() == ORIGINAL


def test_unavailable_reason_checks_the_directory(monkeypatch, tmp_path):
    assert EtcResolvConf.unavailable_reason() is None  # Linux with /etc
    monkeypatch.setattr(EtcResolvConf, "default_path", tmp_path / "missing" / "resolv.conf")
    assert EtcResolvConf.unavailable_reason() == f"{tmp_path / 'missing'} does not exist"
    monkeypatch.setattr("sys.platform", "win32")
    assert EtcResolvConf.unavailable_reason() == "not on Windows"
