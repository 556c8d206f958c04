"""Records of sysctl values to put back: what a killed run left is adopted, what a live run or
another boot or namespace left is not. Files in a temp directory; no sysctl is touched."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from tunplug.sysctl_record import SysctlRecord, here

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
VALUES = {"/proc/sys/net/ipv4/ip_forward": "0"}


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write(path, pid, where, restore=VALUES):
    path.write_text(json.dumps({"pid": pid, "where": where, "restore": restore}))


def test_a_killed_runs_values_are_adopted_and_the_record_removed_after(tmp_path, caplog):
    path = tmp_path / "record.json"
    write(path, dead_pid(), here())
    record = SysctlRecord(path, "forwarding left on")
    with caplog.at_level(logging.WARNING):
        assert record.adopt() == VALUES
    assert "found forwarding left on by a run that was killed" in caplog.text
    assert "net.ipv4.ip_forward=0" in caplog.text
    record.write(VALUES)  # now under this process's pid
    assert json.loads(path.read_text())["pid"] != 0
    record.remove()
    assert not path.exists()


@pytest.mark.parametrize(
    "case", ["live process", "other boot", "other namespace", "damaged", "missing"]
)
def test_what_is_not_a_killed_runs_is_left_alone(tmp_path, case):
    path = tmp_path / "record.json"
    where = dict(here())
    pid = dead_pid()
    if case == "live process":
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        pid = sleeper.pid
    elif case == "other boot":
        where["boot_id"] = "00000000-0000-0000-0000-000000000000"
    elif case == "other namespace":
        where["netns"] = -1
    if case == "damaged":
        path.write_text("{not json")
    elif case != "missing":
        write(path, pid, where)
    try:
        record = SysctlRecord(path, "forwarding left on")
        assert record.adopt() == {}
        record.remove()  # not ours: stays
        assert path.exists() == (case != "missing")
    finally:
        if case == "live process":
            sleeper.kill()
            sleeper.wait()
