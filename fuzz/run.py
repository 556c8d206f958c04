"""Run the fuzzers: every target (or ``--target NAME``) for ``--seconds N`` each, one after the
other, each in its own process with a fixed ``-seed``, on a temporary copy of its corpus and
its past crashes (the repository does not change during a run).

Prints one line per target (executions, coverage, features, corpus size, crashes) and exits 1
if any target crashed, printing where the crashing input was kept. ``scripts/dev test`` runs it
with ``--seconds 20``; ``fuzz/README.md`` says how to run longer and what to do with a crash.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
#: Same as ``fuzz.targets.TARGETS`` (not imported: the runner needs neither tunplug nor atheris).
TARGETS = ("wireguard", "wgquick", "token", "service_frames", "gateway")
#: One input taking longer than this (seconds) is reported as a crash (a hang).
INPUT_TIMEOUT = 10
RSS_LIMIT_MB = 2048

_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/", re.MULTILINE)
_EXECUTED = re.compile(r"^stat::number_of_executed_units: (\d+)", re.MULTILINE)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


@dataclass(frozen=True)
class Result:
    target: str
    executions: int
    coverage: int
    features: int
    corpus: int
    crashes: list[Path]
    returncode: int
    log: Path

    @property
    def failed(self) -> bool:
        return self.returncode != 0 or bool(self.crashes)

    def line(self) -> str:
        outcome = f"CRASHED ({len(self.crashes)}): " + ", ".join(map(str, self.crashes))
        if not self.failed:
            outcome = "0 crashes"
        elif not self.crashes:
            outcome = f"FAILED (exit {self.returncode}, no input written; see {self.log})"
        return (
            f"{self.target:<15} {self.executions:>10} execs  cov {self.coverage:>5}  "
            f"ft {self.features:>6}  corpus {self.corpus:>5}  {outcome}"
        )


def parse_output(target: str, output: str, returncode: int, log: Path) -> Result:
    """A :class:`Result` from libFuzzer's output (``-print_final_stats=1``)."""
    statuses = _STATUS.findall(output)
    executed = _EXECUTED.search(output)
    last = statuses[-1] if statuses else ("0", "0", "0", "0")
    executions = int(executed.group(1)) if executed else int(last[0])
    crashes = [Path(found) for found in _ARTIFACT.findall(output)]
    return Result(
        target, executions, int(last[1]), int(last[2]), int(last[3]), crashes, returncode, log
    )


def run_target(target: str, seconds: int, seed: int, work: Path) -> Result:
    """Fuzz ``target`` for ``seconds`` in a subprocess, in directories under ``work``."""
    corpus = work / target / "corpus"
    shutil.copytree(FUZZ / "corpus" / target, corpus)
    crashes = FUZZ / "crashes" / target
    if crashes.is_dir():
        for path in crashes.iterdir():
            shutil.copy(path, corpus / f"crash-{path.name}")
    artifacts = work / target / "artifacts"
    artifacts.mkdir()
    log = work / target / "fuzz.log"
    command = [
        sys.executable,
        str(FUZZ / "harness.py"),
        target,
        str(corpus),
        f"-seed={seed}",
        f"-max_total_time={seconds}",
        f"-timeout={INPUT_TIMEOUT}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
    ]
    # A fixed hash seed too, so that a run with the same -seed takes the same path.
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    with log.open("w") as sink:
        completed = subprocess.run(
            command, cwd=ROOT, env=environment, stdout=sink, stderr=subprocess.STDOUT, check=False
        )
    return parse_output(target, log.read_text(errors="replace"), completed.returncode, log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=TARGETS, action="append", help="repeatable")
    parser.add_argument("--seconds", type=int, default=20, help="per target (default 20)")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer -seed (default 1)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (grown corpus, logs)"
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tunplug-fuzz-"))
    failed = False
    for target in args.target or TARGETS:
        started = time.monotonic()
        result = run_target(target, args.seconds, args.seed, work)
        print(f"{result.line()}  ({time.monotonic() - started:.0f} s)", flush=True)
        failed |= result.failed
    if failed or args.keep:
        print(f"inputs, grown corpora and logs kept in {work}")
        if failed:
            print("a crash: fix it, then copy the input into fuzz/crashes/<target>/ (README)")
    else:
        shutil.rmtree(work)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
