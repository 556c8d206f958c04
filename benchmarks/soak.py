"""Soak: ten minutes of traffic through a tunplug gateway with flow logs on, checked for leaks
and drift (issue #14, part 5).

Who runs it: anyone with root, after ``scripts/dev setup``, before a release or after a change
to the gateway, the data path or the flow logs::

    sudo .venv/bin/python benchmarks/soak.py            # 10 minutes, prints the table and verdict
    sudo .venv/bin/python benchmarks/soak.py --quick    # 60 s: a smoke run, not a verdict
    sudo .venv/bin/python benchmarks/soak.py --output /tmp/soak-report.md

The topology is the live demo's (:class:`tunplug.gateway_demo.GatewayDemo`): namespaces
``client`` -- veth -- ``gateway`` -- veth -- ``resource``, a real ``tunplug-gateway run`` with
``--flow-logs`` and a ``tunplug-headless-client`` holding a gateway-issued token. Through the
tunnel run, for the whole duration:

- one iperf3 session of ``--streams`` parallel TCP streams from the client to the resource;
- ``--connections-per-second`` short connections from the client to an echo service on the
  resource (three TCP connections of 2000 bytes each way, then one UDP exchange, in turn), so
  the flow log keeps starting, ending, expiring and writing flows.

Every ``--interval`` seconds (10) it samples the throughput of that interval (bytes received by
the resource's veth), ``VmRSS``, open descriptors (``/proc/PID/fd``) and threads of the gateway
and the client process, their CPU time, and the flow log's size and line count. At the end it
prints a Markdown table (one row a minute) and a verdict, and exits 1 if a check failed. The
checks and their thresholds are in ``benchmarks/README.md``; everything after the warm-up
counts. Traffic goes only between the namespaces' own addresses; the namespaces, processes and
temp directory are removed on any exit (also Ctrl-C and SIGTERM). Nothing in CI runs this.

This file is the command line; the samples, the checks, the traffic and the report are in
``benchmarks/benchlib/soak/``.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from benchlib.facts import WGGO_FACT_NAMES, code_changed_since, code_fingerprint, machine_facts
from benchlib.lifecycle import command_line, host_problem, install_signal_handlers, run_exclusive
from benchlib.soak.checks import evaluate
from benchlib.soak.report import render_markdown
from benchlib.soak.traffic import Options, soak

#: Full run and --quick run, seconds.
FULL_SECONDS = 600.0
QUICK_SECONDS = 60.0
#: Sampled this often (seconds); the table shows one row per TABLE_STEP_SECONDS (in
#: ``benchlib.soak.traffic``).
INTERVAL_SECONDS = 10.0
#: The warm-up is this share of the run, at most WARMUP_MAX_SECONDS: 120 s of 600, 20 s of 60.
WARMUP_SHARE = 1 / 3
WARMUP_MAX_SECONDS = 120.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/soak.py",
        description="Traffic through a tunplug gateway with flow logs on for 10 minutes "
        "(iperf3 plus new short connections), in three throw-away namespaces; samples "
        "throughput, RSS, open fds, threads and the flow log every 10 s, prints a table and a "
        "verdict, exits 1 when a check fails. Needs root and iperf3 (scripts/dev setup).",
    )
    parser.add_argument("--duration", type=float, help=f"seconds (default {FULL_SECONDS:g})")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_SECONDS:g} s (unless --duration says else)"
    )
    parser.add_argument(
        "--interval", type=float, default=INTERVAL_SECONDS, help="seconds between samples"
    )
    parser.add_argument(
        "--warmup", type=float, help="seconds left out of the verdict (default: a third of the "
        f"duration, at most {WARMUP_MAX_SECONDS:g})"
    )  # fmt: skip
    parser.add_argument("--streams", type=int, default=2, help="parallel iperf3 streams")
    parser.add_argument(
        "--bitrate", help="iperf3 -b per stream, e.g. 200M (default: as fast as it goes)"
    )
    parser.add_argument(
        "--connections-per-second", type=float, default=20.0, metavar="N",
        help="short connections (3 TCP : 1 UDP) a second, each a new flow (default 20)",
    )  # fmt: skip
    parser.add_argument(
        "--data-path", choices=["auto", "native", "python"],
        help="the gateway's --data-path (default: its own, auto; with flow logs on, the "
        "native core does the AEAD and Python the rest, as pipeline stages need)",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, metavar="FILE", help="also write the report there")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = build_parser()
    args = parser.parse_args(argv)
    duration = args.duration or (QUICK_SECONDS if args.quick else FULL_SECONDS)
    warmup = min(WARMUP_MAX_SECONDS, duration * WARMUP_SHARE)
    if args.warmup is not None:
        warmup = args.warmup
    if args.interval < 1:
        parser.error("--interval must be at least 1 s")
    if duration < 3 * args.interval:
        parser.error("--duration must hold at least 3 intervals")
    if not 0 <= warmup <= duration - 3 * args.interval:
        parser.error("--warmup must leave at least 3 intervals of the duration")
    if args.streams < 1 or args.connections_per_second <= 0:
        parser.error("--streams and --connections-per-second must be positive")
    # Samples fall on multiples of the interval; the warm-up ends on one.
    warmup = math.ceil(warmup / args.interval - 1e-9) * args.interval
    duration = math.ceil(duration / args.interval - 1e-9) * args.interval
    return Options(
        duration, args.interval, warmup, args.streams, args.bitrate,
        args.connections_per_second, args.data_path, args.output,
    )  # fmt: skip


def _preflight() -> str | None:
    return host_problem("benchmarks/soak.py", ("ip", "iperf3", "nft"))


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    problem = _preflight()
    if problem:
        print(f"benchmarks/soak.py: {problem}", file=sys.stderr)
        return 2
    install_signal_handlers()
    command = command_line("benchmarks/soak.py", argv)
    log = partial(print, flush=True)
    facts = {k: v for k, v in machine_facts({}).items() if k not in WGGO_FACT_NAMES.values()}
    code_before = code_fingerprint()
    try:
        result = run_exclusive(lambda: soak(options, log))
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        print(f"benchmarks/soak.py: the soak failed: {error}", file=sys.stderr)
        return 2
    if isinstance(result, int):
        return result
    samples, outcome, paths = result
    if code_changed_since(code_before):
        facts["tunplug commit"] += " - WARNING: the code changed during the run"
    disturbed = sum(sample.foreign_namespaces > 0 for sample in samples)
    facts |= {
        "Data paths": paths,
        "Traffic": f"iperf3 -P {options.streams}"
        + (f" -b {options.bitrate}" if options.bitrate else "")
        + f", {options.connections_per_second:g} short connections/s (3 TCP : 1 UDP)",
        "Run": f"{options.duration:g} s, sampled every {options.interval:g} s, "
        f"warm-up {options.warmup:g} s",
        "iperf3 over the whole run": (
            f"{outcome.iperf3_mbps:.0f} Mbit/s, {outcome.iperf3_retransmits} retransmits"
            if outcome.iperf3_mbps is not None else "no report"
        ),
        "Other namespaces": f"present at {disturbed} of {len(samples)} samples (someone's tests "
        "sharing the CPUs)",
        "Command": f"`{command}`",
    }  # fmt: skip
    checks = evaluate(samples, options.warmup, outcome)
    report = render_markdown(samples, checks, facts, warmup=options.warmup, step=options.table_step)
    print()
    print(report)
    if options.output:
        options.output.parent.mkdir(parents=True, exist_ok=True)
        options.output.write_text(report)
        print(f"wrote {options.output}")
    return 1 if any(check.passed is False for check in checks) else 0


if __name__ == "__main__":
    raise SystemExit(main())
