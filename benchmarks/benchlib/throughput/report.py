"""The throughput benchmark's report: the results table (with both anchors' ratios, TSO,
CPU per GB, memory), where the CPU went, the targets, as text for the terminal and as Markdown
for ``docs/benchmarks.md``.

Who calls it: ``throughput.py`` (``main``) and the tests.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from benchlib.pairs import ANCHOR, OLD_ANCHOR, PAIR_LABELS, EndpointKind, Setup
from benchlib.tables import fmt_num, render_markdown_table, render_text_table
from benchlib.throughput.matrix import describe_matrix
from benchlib.throughput.results import Result, ratio
from benchlib.throughput.targets import evaluate_targets

RESULT_HEADER = [
    "Pair", "Queues", "TSO a/b", "Test", "Mbit/s", "Range", "vs wggo13", "vs wggo12", "Retr",
    "CPU s/GB a", "CPU s/GB b", "Peak RSS MB a/b", "Idle RSS MB a/b", "Runs",
]  # fmt: skip
CPU_HEADER = [
    "Configuration", "Endpoint a", "Endpoint b", "iperf3 client", "iperf3 server", "Machine busy",
]  # fmt: skip


def _pair_of(values: tuple[float | None, float | None], spec: str = ".0f") -> str:
    return "/".join(fmt_num(value, spec) for value in values)


def _ratio_cell(result: Result, results: Sequence[Result], anchor: str) -> str:
    if result.config.setup.pair == anchor:
        return "1.00x (anchor)" if result.samples else "-"
    return fmt_num(ratio(result, results, anchor), ".2f", "x")


def result_rows(results: Sequence[Result]) -> list[list[str]]:
    """The main table, one row per configuration, in matrix order."""
    rows = []
    for result in results:
        setup, test = result.config.setup, result.config.test
        mbps = [s.bits_per_second / 1e6 for s in result.samples]
        notes = [f"{result.failures} failed"] if result.failures else []
        if disturbed := sum(sample.disturbed for sample in result.samples):
            notes.append(f"{disturbed} disturbed")
        runs = str(len(result.samples)) + (f" ({', '.join(notes)})" if notes else "")
        rows.append(
            [
                PAIR_LABELS[setup.pair],
                "-" if setup.queues is None else str(setup.queues),
                _tso_cell(result),
                test.name,
                fmt_num(result.mbps),
                f"{min(mbps):.0f}-{max(mbps):.0f}" if mbps else "-",
                _ratio_cell(result, results, ANCHOR),
                _ratio_cell(result, results, OLD_ANCHOR),
                fmt_num(result.retransmits),
                fmt_num(result.median(lambda s: s.cpu_seconds_per_gb(0)), ".1f"),
                fmt_num(result.median(lambda s: s.cpu_seconds_per_gb(1)), ".1f"),
                _pair_of((result.peak_rss_mb(0), result.peak_rss_mb(1))),
                _pair_of((result.idle_rss_mb(0), result.idle_rss_mb(1)), ".1f"),
                runs,
            ]
        )
    return rows


def _tso_word(seen: set[bool | None]) -> str:
    if seen == {True}:
        return "on"
    if seen == {False}:
        return "off"
    return "mixed" if len(seen - {None}) > 1 else "?"


def _tso_cell(result: Result) -> str:
    if not result.samples:
        return "-"
    return "/".join(_tso_word({s.tso[side] for s in result.samples}) for side in (0, 1))


def tso_by_kind(results: Sequence[Result]) -> dict[EndpointKind, str]:
    """Whether each kind of endpoint had TSO on its device in this run: on, off, mixed, ?."""
    seen: dict[EndpointKind, set[bool | None]] = {}
    for result in results:
        for side, kind in enumerate(result.config.setup.kinds):
            seen.setdefault(kind, set()).update(s.tso[side] for s in result.samples)
    return {kind: _tso_word(values) for kind, values in seen.items() if values}


def tso_note(results: Sequence[Result]) -> str:
    """What the devices' TSO flags showed in this run, per kind of endpoint."""
    seen = tso_by_kind(results)
    if not seen:
        return "No device was read in this run."
    return "Seen in this run: " + ", ".join(f"{kind} {word}" for kind, word in seen.items()) + "."


def _indented(text: str) -> str:
    return textwrap.fill(text, width=98, initial_indent="  ", subsequent_indent="  ")


def cpu_rows(results: Sequence[Result]) -> list[list[str]]:
    """Where the CPU went: medians, in percent of one CPU (machine busy: of all of them)."""
    rows = []
    for result in results:
        rows.append(
            [
                result.config.label,
                fmt_num(result.median(lambda s: s.cpu_percent(0)), ".0f", "%"),
                fmt_num(result.median(lambda s: s.cpu_percent(1)), ".0f", "%"),
                fmt_num(result.median(lambda s: s.iperf_cpu_percent[0]), ".0f", "%"),
                fmt_num(result.median(lambda s: s.iperf_cpu_percent[1]), ".0f", "%"),
                fmt_num(result.median(lambda s: 100 * s.machine_busy), ".0f", "%"),
            ]
        )
    return rows


def render_text(results: Sequence[Result]) -> str:
    return "\n\n".join(
        [
            render_text_table(RESULT_HEADER, result_rows(results)),
            "Where the CPU went (median % of one CPU; machine busy: of all CPUs)",
            render_text_table(CPU_HEADER, cpu_rows(results)),
            "Targets",
            "\n".join(target.line() for target in evaluate_targets(results)),
        ]
    )


NOTES = """\
- **Endpoints.** *wggo13* is Debian 13's wireguard-go 0.0.20231211 (it has wireguard-go's TUN
  offloads and UDP GSO/GRO, 2023), fetched into a cache by `benchmarks/wggo.py`; *wggo12* is
  Debian 12's 0.0.20220316, which has neither; *tunplug-native* and *tunplug-python* are tunplug
  with `TUNPLUG_DATA_PATH=native` (the Rust core, tunplug-fastpath) and `=python`.
- **Before.** The README's earlier ratios (tunplug 1.7-2.0x wireguard-go, 1.1-1.4x against it)
  were against Debian 12's 2022 build, i.e. the *vs wggo12* column here; the anchor is now
  Debian 13's build, several times faster on this machine.
- **Sides.** Side a is always the iperf3 client and the handshake initiator; in
  tunplug-native<->wggo13 side a is tunplug. *a->b*: a sends (so there tunplug encrypts);
  *b->a* is iperf3 `-R` (b sends, tunplug decrypts).
- **Mbit/s** is iperf3's received throughput summed over the streams, the median of the runs;
  *Range* is the lowest and highest run.
- **vs wggo13** is that median over the median of wggo13<->wggo13 for the same test, measured in
  the same run (configurations interleaved: run 1 of all, then run 2, ...); **vs wggo12** the
  same against wggo12<->wggo12 (`-` when that pair was not run). Above 1.00x the row is faster.
  Compare ratios, never absolute figures across machines.
- **Retr** is the sender's TCP retransmits over the whole test (iperf3
  `end.sum_sent.retransmits`), median: packets dropped inside the tunnel (full queues, reordering)
  show up here.
- **CPU s/GB** is the CPU time (user + system, all threads, from `/proc/<pid>/stat`) of each
  endpoint process during the test per GB (10^9 bytes) received. Lower is better; unlike Mbit/s it
  says little about how busy the rest of the machine was.
- **Peak RSS** is `VmHWM` of each endpoint process read right after the test (its peak since
  start), the highest over the runs. **Idle RSS** is `VmRSS` right after the tunnel came up and the
  handshake completed (one ping), before any iperf3 traffic, median over the runs.
- **Runs** counts the runs that gave a result. *failed*: the tunnel or iperf3 failed in that
  many runs. *disturbed*: in that many runs other network namespaces (someone else's tests)
  existed before or after the test, so it probably shared the CPUs with them; before each test
  the benchmark waits up to 30 s for such namespaces to go (5 minutes in all).
- **Queues** is `--tun-threads` (TUN queues) of every tunplug endpoint; wireguard-go has its own
  fixed design (`-`).
- **TSO a/b** is whether each tunnel device had TCP segmentation offload on, read from the device
  (ethtool's `ETHTOOL_GTSO`): wireguard-go turns it on since its 2023 offloads (wggo13), Debian
  12's build cannot (wggo12); tunplug turns it on only where splitting super-packets on reads
  pays (its data path decides). UDP GSO/GRO on the sockets is not visible from outside.
{tso}
- **One machine.** Both endpoints, iperf3's client and server and the kernel's veth and TUN work
  share the CPUs listed above, so every configuration is CPU-bound: the figures measure work per
  byte, not a link. *Where the CPU went* shows who used it (percent of one CPU; an endpoint with
  several threads can pass 100%; *Machine busy* is of all CPUs together).
"""


def render_markdown(
    results: Sequence[Result],
    setups: Sequence[Setup],
    machine: dict[str, str],
    *,
    command: str,
) -> str:
    facts = "\n".join(f"| {key} | {value} |" for key, value in machine.items())
    matrix = "\n".join(f"- {line}" for line in describe_matrix(setups))
    targets = "\n".join(f"- {target.line()}" for target in evaluate_targets(results))
    return f"""\
# Throughput benchmark

Generated by `{command}` (`benchmarks/throughput.py`, see `benchmarks/README.md`); regenerate it
rather than editing it. iperf3 over TCP through a WireGuard tunnel between two network namespaces
joined by veth, on one machine. The anchor is Debian 13's wireguard-go (*wggo13*); Debian 12's
(*wggo12*), the anchor of the figures before 2026-12, is the second ratio column.

| Machine and run | |
| --- | --- |
{facts}

## Results

{render_markdown_table(RESULT_HEADER, result_rows(results))}

## Targets

{targets}

## Where the CPU went

Median percent of one CPU during the test; *Machine busy* is of all CPUs together.

{render_markdown_table(CPU_HEADER, cpu_rows(results))}

## How to read it

{NOTES.format(tso=_indented(tso_note(results)))}
## Matrix

Each line is one pair of namespaces, set up afresh in every run, and the iperf3 tests run
through it one after the other.

{matrix}
"""
