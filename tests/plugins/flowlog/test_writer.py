"""The flow log file: permissions, rotation at the size cap, write errors that do not raise."""

from __future__ import annotations

import json
import os
import stat

import pytest

from tunplug.testing.packets import udp
from tunplug_flowlog.writer import FILE_NAME, RotatingLineWriter

from ._helpers import read_log


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_directory_is_0750_and_file_0640(tmp_path, umask_022):
    directory = tmp_path / "a" / "flows"
    writer = RotatingLineWriter(directory, 4096)
    writer.add(b'{"n":1}\n')
    writer.flush()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    assert stat.S_IMODE((directory / FILE_NAME).stat().st_mode) == 0o640
    assert (directory / FILE_NAME).read_bytes() == b'{"n":1}\n'


def _line(number: int) -> bytes:
    return (json.dumps({"n": number, "pad": "x" * 80}) + "\n").encode()


def test_rotation_keeps_every_file_under_the_cap_and_drops_the_oldest(tmp_path):
    writer = RotatingLineWriter(tmp_path, max_bytes=1000, keep=2)
    for number in range(60):  # 60 lines of ~100 bytes: 6 files' worth, in several flushes
        writer.add(_line(number))
        if number % 7 == 0:
            writer.flush()
    writer.flush()
    names = sorted(os.listdir(tmp_path))
    assert names == ["flows.jsonl", "flows.jsonl.1", "flows.jsonl.2"]
    assert all((tmp_path / name).stat().st_size <= 1000 for name in names)
    kept = [line["n"] for name in reversed(names) for line in read_log(tmp_path, name)]
    assert kept == list(range(60 - len(kept), 60)), "the newest lines, in order, none missing"
    # Lines 0-9 are 100 bytes (10 fill a file exactly), lines 10-59 are 101 (9 per file):
    # 7 files were started, 6 rotations; the last file holds lines 55-59.
    assert writer.rotations == 6
    assert kept == list(range(37, 60))
    assert (writer.lines_written, writer.lines_dropped) == (60, 0)


def test_a_stage_rotates_its_log_at_max_bytes(make_stage, log_dir):
    stage = make_stage(max_bytes=4096, keep=1, max_flows=1)
    for port in range(1, 80):  # every new flow evicts the previous one: one line each
        stage.outbound([udp("10.0.0.2", "10.0.0.1", port, 53, b"q")])
    stage.close()
    assert sorted(os.listdir(log_dir)) == ["flows.jsonl", "flows.jsonl.1"]
    sizes = [(log_dir / name).stat().st_size for name in os.listdir(log_dir)]
    assert max(sizes) <= 4096
    ports = [line["sport"] for line in read_log(log_dir, "flows.jsonl.1") + read_log(log_dir)]
    assert ports == list(range(79 - len(ports) + 1, 80))


def test_a_write_error_drops_the_lines_and_does_not_raise(tmp_path, caplog):
    (tmp_path / FILE_NAME).mkdir()  # the log file's name is taken by a directory
    writer = RotatingLineWriter(tmp_path, 4096)
    writer.add(b"{}\n")
    writer.add(b"{}\n")
    writer.flush()
    assert (writer.lines_written, writer.lines_dropped, writer.pending) == (0, 2, 0)
    assert "2 line(s) lost" in caplog.text


def test_a_directory_that_cannot_be_created_raises(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        RotatingLineWriter(tmp_path / "file" / "logs", 4096)
