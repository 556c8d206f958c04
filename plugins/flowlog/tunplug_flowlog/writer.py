"""The flow log file: JSON lines appended to ``flows.jsonl``, rotated at a size cap.

Who calls it: :class:`tunplug_flowlog.stage.FlowLogStage`, which hands over finished lines and
calls :meth:`RotatingLineWriter.flush` from its batch calls (at most about once per second)
and at close. Nothing here keeps a file open between flushes: each flush opens the file in
append mode, writes every buffered line and closes it again. That costs two system calls a
second and means a stage that is dropped without :meth:`close` leaks no descriptor, and that
several stages sharing one directory (several tunnels in one process) append whole lines to
the same file without tracking each other's sizes.

Rotation keeps ``flows.jsonl`` below ``max_bytes``: before a line that would take the file past
the cap is written, ``flows.jsonl.{keep-1}`` moves to ``.{keep}`` (the oldest is deleted), ...,
``flows.jsonl`` moves to ``.1``. So the logs take at most ``(keep + 1) * max_bytes`` on disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

#: The name of the live file in the flow log directory.
FILE_NAME = "flows.jsonl"
#: Rotated files kept (``flows.jsonl.1`` is the newest of them).
KEEP_ROTATED = 3
DIRECTORY_MODE = 0o750
FILE_MODE = 0o640


class RotatingLineWriter:
    """Buffers lines in memory and appends them to ``directory/flows.jsonl`` on :meth:`flush`.

    :raises OSError: from the constructor only, when ``directory`` cannot be created. Errors
        while writing are logged (once per failing flush) and the lines of that flush are
        dropped and counted in :attr:`lines_dropped`: a full disk must not stop the tunnel.
    """

    def __init__(self, directory: Path, max_bytes: int, keep: int = KEEP_ROTATED) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.directory = directory
        self.path = directory / FILE_NAME
        self.max_bytes = max_bytes
        self.keep = keep
        self.lines_written = 0
        self.lines_dropped = 0
        self.rotations = 0
        self._pending: list[bytes] = []
        _make_directory(directory)

    @property
    def pending(self) -> int:
        """Lines buffered and not yet written."""
        return len(self._pending)

    def add(self, line: bytes) -> None:
        """Buffer one line; it must end with a newline."""
        self._pending.append(line)

    def flush(self) -> None:
        """Append the buffered lines, rotating as often as the cap requires."""
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        written = 0
        try:
            while written < len(lines):
                written += self._append(lines, written)
        except OSError as exc:
            self.lines_dropped += len(lines) - written
            log.warning("flow log %s: %d line(s) lost: %s", self.path, len(lines) - written, exc)
        self.lines_written += written

    def _append(self, lines: list[bytes], start: int) -> int:
        """Append ``lines[start:]`` until the file is full; rotate if so. Returns lines written."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        with open(fd, "ab", closefd=True) as stream:
            size = os.fstat(fd).st_size
            chunk: list[bytes] = []
            for line in lines[start:]:
                if size + len(line) > self.max_bytes and (size or chunk):
                    break
                chunk.append(line)
                size += len(line)
            stream.write(b"".join(chunk))
        if start + len(chunk) < len(lines):
            self._rotate()
        return len(chunk)

    def _rotate(self) -> None:
        base = str(self.path)
        for number in range(self.keep, 0, -1):
            older = f"{base}.{number - 1}" if number > 1 else base
            with contextlib.suppress(FileNotFoundError):
                os.replace(older, f"{base}.{number}")
        if self.keep == 0:
            os.unlink(base)
        self.rotations += 1


def _make_directory(directory: Path) -> None:
    """Create ``directory`` (mode 0750 less the umask) unless it exists; parents too."""
    if not directory.is_dir():
        directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
