"""How a benchmark starts and stops: the pre-flight checks, the lock that keeps two benchmarks
from measuring each other, signals that clean up on the way out, and the command line a report
quotes.

Who calls it: ``throughput.py``, ``soak.py``, ``flood.py`` and ``clients.py`` (their
``main``), and :func:`benchlib.pairs.preflight`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TypeVar

T = TypeVar("T")

LOCK_PATH = Path(tempfile.gettempdir()) / "tunplug-benchmark.lock"


def host_problem(script: str, tools: Sequence[str]) -> str | None:
    """Why ``script`` cannot run here (not Linux, not root, a tool missing); None: it can."""
    if sys.platform != "linux":
        return "needs Linux (network namespaces)"
    if os.geteuid() != 0:
        return f"needs root: sudo .venv/bin/python {script}"
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        return f"missing {', '.join(missing)} (scripts/dev setup installs them)"
    return None


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command that ran ``script`` with ``argv`` (default: this process's), for a report."""
    return shlex.join(
        [
            "sudo",
            ".venv/bin/python",
            script,
            *(sys.argv[1:] if argv is None else argv),
        ]
    )


class Terminated(BaseException):
    """SIGTERM/SIGHUP arrived; raised so that every context manager cleans up."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def on_signal(signum: int, frame: FrameType | None) -> None:
    # Further signals would interrupt the clean-up that this exception starts.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def install_signal_handlers() -> None:
    """Ctrl-C, SIGTERM and SIGHUP raise (:func:`on_signal`), so that everything is cleaned up."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)


@contextlib.contextmanager
def exclusive_lock() -> Iterator[None]:
    """Refuse to run while another benchmark does: on 2 cores they would measure each other."""
    with LOCK_PATH.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another benchmark holds {LOCK_PATH}; run one at a time") from None
        yield


def run_exclusive(run: Callable[[], T]) -> T | int:
    """``run()`` while holding the benchmark lock; Ctrl-C and SIGTERM/SIGHUP (with
    :func:`on_signal` installed) end it with a line and an exit code (returned instead of the
    result), after every context manager in ``run`` has cleaned up."""
    try:
        with exclusive_lock():
            return run()
    except KeyboardInterrupt:
        print("\ninterrupted: namespaces and processes removed", file=sys.stderr)
        return 130
    except Terminated as stop:
        print(f"\n{stop}: namespaces and processes removed", file=sys.stderr)
        return 128 + stop.signum
