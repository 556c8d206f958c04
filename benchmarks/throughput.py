"""Throughput of tunplug against wireguard-go, all measured in one run on this machine.

Who runs it: anyone with root, after ``scripts/dev setup``::

    sudo .venv/bin/python benchmarks/throughput.py                              # print the table
    sudo .venv/bin/python benchmarks/throughput.py --output docs/benchmarks.md  # and write it

Each configuration is iperf3 through a WireGuard tunnel between two throw-away network
namespaces (``tunplug.testing.interop``). The endpoints:

- ``wggo13``: Debian 13's wireguard-go 0.0.20231211 (TUN offloads, UDP GSO/GRO), fetched into a
  cache by ``benchmarks/wggo.py`` without touching the system's apt sources: **the anchor**;
- ``wggo12``: Debian 12's wireguard-go 0.0.20220316 (``/usr/bin/wireguard-go``), the anchor of
  the figures before 2026-12, kept as a second column;
- ``tunplug-native`` and ``tunplug-python``: tunplug with ``TUNPLUG_DATA_PATH=native|python``.

Runs are interleaved (run 1 of every configuration, then run 2, ...), so machine noise falls on
all of them alike, and every ratio is against the anchors measured in the same run. Traffic
goes only between the namespaces' own addresses; the namespaces, devices and processes are
removed on any exit (also Ctrl-C and SIGTERM).

This file is the command line; the matrix, the measurement, the targets and the report are in
``benchmarks/benchlib/throughput/``, what it shares with the other benchmarks (pairs of
endpoints, the lock, machine facts, tables) in ``benchmarks/benchlib/``. The pure parts
(matrix, medians, ratios, targets, rendering) are tested without root in
``tests/benchmarks/test_throughput_script.py``; nothing here runs from the test suite.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from benchlib.facts import code_changed_since, code_fingerprint, machine_facts
from benchlib.lifecycle import command_line, install_signal_handlers, run_exclusive
from benchlib.pairs import ANCHOR, PAIRS, preflight, wireguard_go_builds
from benchlib.throughput.matrix import build_matrix, configs, describe_matrix, estimate_seconds
from benchlib.throughput.measure import run_benchmark
from benchlib.throughput.report import render_markdown, render_text
from wggo import FetchError, default_cache_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/throughput.py",
        description="iperf3 through tunplug and wireguard-go tunnels between two throw-away "
        "network namespaces; prints a table with ratios against Debian 13's "
        "wireguard-go<->wireguard-go (and Debian 12's) measured in the same run. Needs root, "
        "wireguard-go, wireguard-tools and iperf3 (scripts/dev setup installs them); fetches "
        "Debian 13's wireguard-go into a cache on first use.",
    )
    parser.add_argument("--runs", type=int, help="runs per configuration, interleaved (default 3)")
    parser.add_argument("--seconds", type=float, help="iperf3 duration per test (default 5)")
    parser.add_argument(
        "--quick", action="store_true", help="1 run of 2 s each (unless --runs/--seconds say else)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(PAIRS),
        default=[],
        metavar="PAIR",
        help=f"measure only this pair (repeatable; one of {', '.join(PAIRS)}); "
        f"{ANCHOR} is always measured since every ratio is against it",
    )
    parser.add_argument(
        "--wggo-cache", type=Path, metavar="DIR",
        help=f"where Debian 13's wireguard-go is fetched to and kept (default "
        f"$XDG_CACHE_HOME or ~/.cache, then tunplug/{default_cache_dir().name})",
    )  # fmt: skip
    parser.add_argument(
        "--output", type=Path, metavar="FILE", help="also write the report as Markdown, e.g. "
        "docs/benchmarks.md"
    )  # fmt: skip
    parser.add_argument(
        "--list", action="store_true", help="print the matrix and the expected duration, then exit"
    )
    return parser


@dataclass(frozen=True, slots=True)
class Options:
    runs: int
    seconds: float
    only: tuple[str, ...]
    output: Path | None
    list_only: bool
    wggo_cache: Path | None = None


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = build_parser()
    args = parser.parse_args(argv)
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    seconds = args.seconds if args.seconds is not None else (2.0 if args.quick else 5.0)
    if runs < 1:
        parser.error("--runs must be at least 1")
    if seconds < 1:
        parser.error("--seconds must be at least 1")
    return Options(runs, seconds, tuple(args.only), args.output, args.list, args.wggo_cache)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    setups = build_matrix(options.only)
    minutes = estimate_seconds(setups, options.runs, options.seconds) / 60
    if options.list_only:
        print("\n".join(describe_matrix(setups)))
        print(f"{len(configs(setups))} configurations x {options.runs} runs of "
              f"{options.seconds:g} s: about {minutes:.0f} min")  # fmt: skip
        return 0
    problem = preflight(setups)
    if problem:
        print(f"benchmarks/throughput.py: {problem}", file=sys.stderr)
        return 2
    try:
        builds = wireguard_go_builds(setups, options.wggo_cache, partial(print, flush=True))
    except FetchError as error:
        print(f"benchmarks/throughput.py: wireguard-go: {error}", file=sys.stderr)
        return 2
    for kind, build in builds.items():
        print(f"{kind}: {build.describe()}")
    install_signal_handlers()
    command = command_line("benchmarks/throughput.py", argv)
    print(f"{len(configs(setups))} configurations x {options.runs} runs of "
          f"{options.seconds:g} s, interleaved: about {minutes:.0f} min", flush=True)  # fmt: skip
    started = time.monotonic()
    machine = machine_facts(builds)
    code_before = code_fingerprint()
    outcome = run_exclusive(
        lambda: run_benchmark(
            setups,
            options.runs,
            options.seconds,
            {kind: build.binary for kind, build in builds.items()},
            partial(print, flush=True),
        )
    )
    if isinstance(outcome, int):
        return outcome
    results, facts = outcome
    elapsed = time.monotonic() - started
    if code_changed_since(code_before):
        machine["tunplug commit"] += (
            " - WARNING: the code changed during the run, the figures mix versions"
        )
    machine["TCP congestion control"] = facts.get("tcp_congestion", "unknown")
    machine["Other namespace tests"] = facts["disturbed"]
    machine["Runs"] = (
        f"{options.runs} x {options.seconds:g} s per configuration, interleaved; "
        f"wall time {elapsed / 60:.1f} min"
    )
    print()
    print(render_text(results))
    print(f"\nwall time {elapsed / 60:.1f} min")
    if options.output:
        options.output.parent.mkdir(parents=True, exist_ok=True)
        options.output.write_text(render_markdown(results, setups, machine, command=command))
        print(f"wrote {options.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
