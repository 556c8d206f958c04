"""``etc-resolv-conf`` on the real ``/etc/resolv.conf`` path, without touching the host's file.

Each run happens in its own mount namespace (``unshare -m``, propagation private) where a
temporary file is bind-mounted over ``/etc/resolv.conf``, as Docker and Kubernetes do it. The
manager then meets the real obstacle of that setup -- renaming over a mount point fails with
EBUSY -- and a real crash (SIGKILL). The host's file is compared byte for byte before and
after, and the agent refuses to run unless ``/etc/resolv.conf`` is the bind-mounted file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tunplug_dns.resolv_conf import BACKUP_FILE, MARKER_PREFIX

pytestmark = pytest.mark.root

AGENT = str(Path(__file__).with_name("_resolv_conf_agent.py"))
HOST_RESOLV = Path("/etc/resolv.conf")
ORIGINAL = b"# container resolver\nnameserver 192.0.2.53\noptions ndots:5\n"
TIMEOUT = 60


def host_resolv_snapshot() -> tuple[bool, bytes | str]:
    if HOST_RESOLV.is_symlink():
        return True, os.readlink(HOST_RESOLV)
    return False, HOST_RESOLV.read_bytes()


def start_agent(
    source: Path, target: Path, state_dir: Path, scenario: str, *servers: str
) -> subprocess.Popen[str]:
    """Run the agent in a new mount namespace with ``source`` bind-mounted over ``target``.

    For the host's ``/etc``, the namespace first sees ``/etc`` read-only, so that nothing --
    not even a temporary file -- can be created in the host's directory; only the
    bind-mounted file is writable. unshare without --fork and sh's exec keep one PID.
    """
    protect_etc = "mount --bind /etc /etc && mount -o remount,bind,ro /etc && "
    script = (
        "mount --make-rprivate / && "
        + (protect_etc if target == HOST_RESOLV else "")
        + 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    return subprocess.Popen(
        ["unshare", "-m", "sh", "-c", script, "sh", str(source), str(target),
         sys.executable, AGENT, str(source), str(target), str(state_dir), scenario, *servers],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        out, log = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log
    return out, log


def read_json_line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(TIMEOUT)
        assert proc.stderr is not None
        raise AssertionError(f"agent ended early ({proc.returncode}): {proc.stderr.read()}")
    result: dict[str, Any] = json.loads(line)
    assert "error" not in result, result["error"]
    return result


@pytest.fixture
def host_file_guard():
    if not HOST_RESOLV.is_file() or HOST_RESOLV.is_symlink():
        # A bind mount over a symlink would land on its target, and the manager would then
        # replace the symlink in the host's /etc: never risk it.
        pytest.skip(f"needs {HOST_RESOLV} to be a regular file to bind-mount over it")
    for tool in ("unshare", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs util-linux's {tool}")
    before = host_resolv_snapshot()
    yield
    assert host_resolv_snapshot() == before, "the host's /etc/resolv.conf changed"


def test_real_path_survives_a_sigkill_and_the_next_run_restores_the_original_bytes(
    tmp_path, host_file_guard
):
    source = tmp_path / "resolv.conf"
    source.write_bytes(ORIGINAL)
    source.chmod(0o644)
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)

    crashed = start_agent(source, HOST_RESOLV, state_dir, "crash", "10.7.0.53", "fd00:7::53")
    try:
        active = read_json_line(crashed)["active"].splitlines()
        assert active[0].startswith(f"{MARKER_PREFIX}tun-root: restored on exit")
        assert active[1:] == [
            "nameserver 10.7.0.53",
            "nameserver fd00:7::53",
            "search corp.example",
        ]
        # Written in place (no temporary file can be made in the read-only /etc): the
        # bind-mounted file outside the namespace shows it.
        assert source.read_text().splitlines() == active
    finally:
        os.kill(crashed.pid, signal.SIGKILL)
        crashed.wait(TIMEOUT)
        assert crashed.stderr is not None and crashed.stdout is not None
        log = crashed.stderr.read()
        crashed.stdout.close()
        crashed.stderr.close()
    assert crashed.returncode == -signal.SIGKILL
    assert "cannot replace /etc/resolv.conf (Read-only file system" in log
    assert (state_dir / BACKUP_FILE).exists()  # what the crash left behind
    assert source.read_bytes() != ORIGINAL

    out, log = finish(start_agent(source, HOST_RESOLV, state_dir, "finish", "10.7.0.54"))
    active, restored = (json.loads(line) for line in out.splitlines())
    assert active["active"].splitlines()[1:] == ["nameserver 10.7.0.54", "search corp.example"]
    assert restored["restored"].encode() == ORIGINAL
    assert "restoring resolver file /etc/resolv.conf left by a previous run" in log
    assert source.read_bytes() == ORIGINAL
    assert source.stat().st_mode & 0o777 == 0o644
    assert not (state_dir / BACKUP_FILE).exists()


def test_a_bind_mounted_file_refuses_the_rename_with_ebusy_and_is_rewritten_in_place(tmp_path):
    """Docker's and Kubernetes' setup: a writable directory, the file a mount point."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs util-linux's unshare and mount")
    etc = tmp_path / "etc"
    etc.mkdir()
    target = etc / "resolv.conf"
    target.write_bytes(b"this file is hidden by the bind mount\n")
    source = tmp_path / "mounted-resolv.conf"
    source.write_bytes(ORIGINAL)
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)

    out, log = finish(start_agent(source, target, state_dir, "finish", "10.7.0.55"))
    active, restored = (json.loads(line) for line in out.splitlines())
    assert active["active"].splitlines()[1] == "nameserver 10.7.0.55"
    assert f"cannot replace {target} (Device or resource busy" in log
    assert "writing it in place" in log
    assert restored["restored"].encode() == ORIGINAL
    assert source.read_bytes() == ORIGINAL
    assert target.read_bytes() == b"this file is hidden by the bind mount\n"
    assert sorted(p.name for p in etc.iterdir()) == ["resolv.conf"]  # no temporary file left
