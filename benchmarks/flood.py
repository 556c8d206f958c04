"""A handshake flood during iperf3, tunplug and wireguard-go side by side in one run.

Who runs it: anyone with root, after ``scripts/dev setup``::

    sudo .venv/bin/python benchmarks/flood.py                          # print the table
    sudo .venv/bin/python benchmarks/flood.py --output docs/flood.md   # and write it

For each pair of endpoints (``--only`` picks some), two throw-away namespaces carry one iperf3
stream a->b through the tunnel for BEFORE + DURING + AFTER seconds. After BEFORE seconds, one
process in namespace a, bound to an extra address of its own (so that the per-source limits
see an attacker, not the tunnel's peer), resends one handshake initiation with a **valid mac1**
for b's public key (anyone who knows the key can make one; ``tunplug.testing.flood``) to b's
listening port as fast as it can, for DURING seconds; with ``--sources 1000`` (also measured by
default) the same flood comes from 1,000 addresses of namespace a in turn, so that no single
source goes far over its own rate (a flood from spoofed addresses, as far as the per-source
defences can tell). iperf3's one-second intervals give the
throughput before, during and after the flood; "kept" is during / before. Pairs are measured
interleaved, ``--runs`` times, and the table gives medians; every share is compared with
Debian 13's wireguard-go measured in the same run.

Traffic goes only between the namespaces' own addresses; namespaces, devices and processes
are removed on any exit. The pure parts (phases, medians, rendering) are tested without root
in ``tests/benchmarks/test_flood_script.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from benchlib.facts import machine_facts
from benchlib.lifecycle import install_signal_handlers, run_exclusive
from benchlib.netns import wait_for_quiet
from benchlib.pairs import (
    ANCHOR,
    PAIR_LABELS,
    EndpointKind,
    Setup,
    handshake,
    preflight,
    tunnel_topology,
    wireguard_go_builds,
)
from benchlib.tables import fmt_num, median_or_none, render_markdown_table, render_text_table
from wggo import FetchError, default_cache_dir

from tunplug.testing.flood import (
    add_sources,
    flood_result,
    many_sources,
    start_flood,
    valid_initiation,
)
from tunplug.testing.interop import UNDERLAY
from tunplug.wireguard.keys import parse_key

BEFORE, DURING, AFTER = 8.0, 14.0, 8.0
#: Intervals skipped at the start (TCP slow start) and after the flood (recovery is reported
#: by "after", from this many seconds past the flood's end).
WARMUP, SETTLE = 2.0, 2.0
FLOODER = "10.201.0.3"
FLOOD_PAIRS = ("wggo13-wggo13", "wggo12-wggo12", "native-native", "python-python")
SOURCES = (1, 1000)


@dataclass(slots=True)
class Run:
    """One iperf3 run with a flood in its middle (Mbit/s)."""

    before: float
    during: float
    during_min: float
    after: float
    flood_per_second: float

    @property
    def kept(self) -> float:
        return self.during / self.before if self.before > 0 else 0.0


@dataclass(slots=True)
class Row:
    pair: str
    sources: int = 1
    runs: list[Run] = field(default_factory=list)
    failures: int = 0

    def median(self, name: str) -> float | None:
        return median_or_none([float(getattr(run, name)) for run in self.runs])


def phases(intervals: Sequence[dict[str, Any]], flood_start: float, flood_end: float) -> Run:
    """Before/during/after medians from iperf3's intervals (times relative to iperf3's start).

    :raises ValueError: a phase has no whole interval.
    """
    spans = [
        (float(i["sum"]["start"]), float(i["sum"]["end"]), float(i["sum"]["bits_per_second"]) / 1e6)
        for i in intervals
    ]
    before = [rate for start, end, rate in spans if start >= WARMUP and end <= flood_start]
    during = [rate for start, end, rate in spans if start >= flood_start and end <= flood_end]
    after = [rate for start, _, rate in spans if start >= flood_end + SETTLE]
    if not (before and during and after):
        raise ValueError(
            f"iperf3 intervals do not cover every phase ({len(before)}, {len(during)}, "
            f"{len(after)} whole seconds before, during and after the flood)"
        )
    return Run(
        before=statistics.median(before),
        during=statistics.median(during),
        during_min=min(during),
        after=statistics.median(after),
        flood_per_second=0.0,
    )


def measure(setup: Setup, binaries: dict[EndpointKind, Path], sources: int) -> Run:
    with tunnel_topology(setup, binaries) as topo:
        handshake(topo)
        if sources == 1:
            addresses = [FLOODER]
            topo.a.ns.run("ip", "addr", "add", f"{FLOODER}/24", "dev", "veth-a")
        else:
            addresses = many_sources(sources)
            add_sources(topo.a.ns, "veth-a", addresses, topo.b.ns, "veth-b")
        message = valid_initiation(parse_key(topo.b.keys.public))
        report: dict[str, Any] = {}
        failure: list[BaseException] = []

        def iperf() -> None:
            try:
                report.update(topo.iperf3(client="a", seconds=BEFORE + DURING + AFTER))
            except Exception as error:  # handed to the main thread
                failure.append(error)

        thread = threading.Thread(target=iperf, name="iperf3")
        started = time.monotonic() + 0.3  # topo.iperf3 starts its server, then the client
        thread.start()
        time.sleep(BEFORE + 0.3)
        flood_start = time.monotonic() - started
        flood = start_flood(
            topo.a.ns, (UNDERLAY["b"][0], topo.b.listen_port), message,
            seconds=DURING, sources=addresses,
        )  # fmt: skip
        sent = flood_result(flood, timeout=DURING + 30)
        flood_end = time.monotonic() - started
        thread.join(AFTER + 60)
        if failure:
            raise RuntimeError(f"iperf3: {failure[0]}")
        run = phases(report.get("intervals", []), flood_start, flood_end)
        run.flood_per_second = sent["sent"] / sent["seconds"]
        return run


def run_benchmark(
    setups: Sequence[Setup],
    sources: Sequence[int],
    runs: int,
    binaries: dict[EndpointKind, Path],
    log: Callable[..., None] = print,
) -> list[Row]:
    rows = {(s.pair, n): Row(s.pair, n) for n in sources for s in setups}
    for number in range(1, runs + 1):
        for (pair, count), row in rows.items():
            setup = next(s for s in setups if s.pair == pair)
            log(f"run {number}/{runs}  {row_label(row):<52}", end="")
            wait_for_quiet(set(), log)
            try:
                run = measure(setup, binaries, count)
            except (RuntimeError, OSError, ValueError) as error:
                row.failures += 1
                log(f" FAILED: {error}"[:2000])
                continue
            row.runs.append(run)
            log(f" {format_run(run)}")
    return list(rows.values())


def row_label(row: Row) -> str:
    what = "1 source" if row.sources == 1 else f"{row.sources} sources"
    return f"{PAIR_LABELS[row.pair]}, {what}"


def format_run(run: Run) -> str:
    return (
        f"before {run.before:6.0f}  during {run.during:6.0f} (min {run.during_min:5.0f})  "
        f"after {run.after:6.0f} Mbit/s  kept {run.kept:4.0%}  "
        f"flood {run.flood_per_second / 1000:4.0f}k/s"
    )


HEADER = [
    "endpoints",
    "before (Mbit/s)",
    "during flood",
    "lowest second",
    "after",
    "kept during",
    "kept vs wggo13",
    "flood sent/s",
    "runs",
]


def _anchor_kept(rows: Sequence[Row], sources: int) -> float | None:
    anchor = next((r for r in rows if r.pair == ANCHOR and r.sources == sources), None)
    return anchor.median("kept") if anchor else None


def table_rows(rows: Sequence[Row]) -> list[list[str]]:
    out = []
    for row in rows:
        anchor_kept = _anchor_kept(rows, row.sources)
        kept = row.median("kept")
        versus = kept / anchor_kept if kept is not None and anchor_kept else None
        flood = row.median("flood_per_second")
        out.append(
            [
                row_label(row),
                fmt_num(row.median("before")),
                fmt_num(row.median("during")),
                fmt_num(row.median("during_min")),
                fmt_num(row.median("after")),
                fmt_num(kept, ".0%"),
                fmt_num(versus, ".2f") + ("x" if versus is not None else ""),
                "-" if flood is None else f"{flood / 1000:.0f}k",
                f"{len(row.runs)}" + (f" ({row.failures} failed)" if row.failures else ""),
            ]
        )
    return out


def verdicts(rows: Sequence[Row]) -> list[str]:
    """The issue's targets: every tunplug pair keeps at least wireguard-go 13's share, and no
    second of any run drops to zero."""
    lines = []
    for row in rows:
        anchor_kept = _anchor_kept(rows, row.sources)
        if row.pair not in ("native-native", "python-python") or not row.runs:
            continue
        kept = row.median("kept") or 0.0
        floor = min(run.during_min for run in row.runs)
        share_ok = anchor_kept is not None and kept >= anchor_kept
        lines.append(
            f"{'PASS' if share_ok and floor > 0 else 'FAIL'} {row_label(row)}: keeps "
            f"{kept:.0%} (wggo13 {fmt_num(anchor_kept, '.0%')}), lowest second {floor:.0f} Mbit/s"
        )
    return lines


def render_markdown(rows: Sequence[Row], facts: dict[str, str], runs: int) -> str:
    lines = [
        "# Handshake flood: tunplug and wireguard-go in the same run",
        "",
        "Generated by `sudo .venv/bin/python benchmarks/flood.py --output <this file>`; "
        "how it works is in that script's docstring and in docs/reliability.md.",
        "",
        f"One iperf3 stream a->b for {BEFORE + DURING + AFTER:g} s; from second {BEFORE:g}, "
        f"for {DURING:g} s, one process floods b with a valid-mac1 initiation from its own "
        f"address (or from 1,000 addresses in turn). Medians of {runs} interleaved runs "
        "(per-second intervals inside each run).",
        "",
        render_markdown_table(HEADER, table_rows(rows)),
        "",
        *(f"- {line}" for line in verdicts(rows)),
        "",
        "| machine | |",
        "| --- | --- |",
        *(f"| {key} | {value} |" for key, value in facts.items()),
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/flood.py",
        description="iperf3 through tunplug and wireguard-go tunnels while one process floods "
        "the receiver with valid-mac1 handshake initiations; prints throughput before, during "
        "and after, and the share kept, against Debian 13's wireguard-go in the same run. "
        "Needs root, wireguard-go, wireguard-tools and iperf3 (scripts/dev setup installs them).",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per pair, interleaved (3)")
    parser.add_argument(
        "--only", action="append", choices=FLOOD_PAIRS, default=[], metavar="PAIR",
        help=f"measure only this pair (repeatable; one of {', '.join(FLOOD_PAIRS)}); "
        f"{ANCHOR} is always measured",
    )  # fmt: skip
    parser.add_argument(
        "--sources", action="append", type=int, metavar="N",
        help="flood from N source addresses (repeatable; default: 1 and 1000)",
    )  # fmt: skip
    parser.add_argument(
        "--wggo-cache", type=Path, metavar="DIR",
        help=f"where Debian 13's wireguard-go is kept (default ~/.cache/tunplug/"
        f"{default_cache_dir().name})",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, metavar="FILE", help="also write Markdown")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    sources = tuple(args.sources or SOURCES)
    if any(not 1 <= count <= 64_000 for count in sources):
        parser.error("--sources must be between 1 and 64000")
    pairs = [ANCHOR, *(pair for pair in args.only if pair != ANCHOR)] if args.only else FLOOD_PAIRS
    setups = [Setup(pair, ()) for pair in FLOOD_PAIRS if pair in pairs]
    problem = preflight(setups, script="benchmarks/flood.py")
    if problem:
        print(f"benchmarks/flood.py: {problem}", file=sys.stderr)
        return 2
    try:
        builds = wireguard_go_builds(setups, args.wggo_cache, partial(print, flush=True))
    except FetchError as error:
        print(f"benchmarks/flood.py: wireguard-go: {error}", file=sys.stderr)
        return 2
    install_signal_handlers()
    minutes = len(setups) * len(sources) * args.runs * (BEFORE + DURING + AFTER + 6) / 60
    print(
        f"{len(setups)} pairs x {len(sources)} floods x {args.runs} runs: about {minutes:.0f} min",
        flush=True,
    )
    facts = machine_facts(builds)
    rows = run_exclusive(
        lambda: run_benchmark(
            setups,
            sources,
            args.runs,
            {kind: build.binary for kind, build in builds.items()},
            partial(print, flush=True),
        )
    )
    if isinstance(rows, int):
        return rows
    print()
    print(render_text_table(HEADER, table_rows(rows)))
    print("\n".join(verdicts(rows)))
    if args.output:
        args.output.write_text(render_markdown(rows, facts, args.runs))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
