"""The soak's report: a live line per sample while it runs, then a Markdown table (one row per
step) and the verdict.

Who calls it: :mod:`.traffic` (the live lines) and ``soak.py`` (``main``: the report).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from benchlib.host import MB
from benchlib.soak.samples import Sample, busy_percent, cpu_percent, mbps
from benchlib.tables import Target, fmt_num, render_markdown_table

TABLE_HEADER = [
    "Time m:ss", "Mbit/s", "vs first", "GW RSS MB", "Client RSS MB", "GW fds", "Client fds",
    "GW threads", "Client threads", "GW CPU", "Machine busy", "Flow log KB", "Flows logged",
]  # fmt: skip


def table_samples(samples: Sequence[Sample], step: float) -> list[Sample]:
    """The samples that start a table row: one per ``step`` seconds, and the last one."""
    rows = [sample for sample in samples if _on_step(sample.elapsed, step)]
    if samples and (not rows or rows[-1] is not samples[-1]):
        rows.append(samples[-1])
    return rows


def _on_step(elapsed: float, step: float) -> bool:
    return abs(elapsed / step - round(elapsed / step)) < 0.05


def table_rows(samples: Sequence[Sample], step: float, warmup: float) -> list[list[str]]:
    """One row per ``step``: the throughput, CPU and busy since the row before; gauges now.
    *vs first* is the throughput over that of the first row after the warm-up."""
    chosen = table_samples(samples, step)
    rows: list[list[str]] = []
    anchor: float | None = None
    for before, after in zip([None, *chosen], chosen, strict=False):
        rate = mbps(before, after) if before else math.nan
        if anchor is None and before is not None and before.elapsed >= warmup - 1e-6:
            anchor = rate
        warm = " (warm-up)" if after.elapsed <= warmup + 1e-6 and after.elapsed > 0 else ""
        rows.append(
            [
                f"{round(after.elapsed) // 60}:{round(after.elapsed) % 60:02d}{warm}",
                fmt_num(rate, ".0f"),
                fmt_num(rate / anchor if anchor else math.nan, ".2f", "x"),
                f"{after.gateway.rss / MB:.1f}",
                f"{after.client.rss / MB:.1f}",
                str(after.gateway.fds),
                str(after.client.fds),
                str(after.gateway.threads),
                str(after.client.threads),
                fmt_num(
                    cpu_percent(before, after, lambda s: s.gateway) if before else math.nan,
                    ".0f",
                    "%",
                ),
                fmt_num(busy_percent(before, after) if before else math.nan, ".0f", "%"),
                f"{after.flow_log_bytes / 1024:.0f}",
                str(after.flows_logged),
            ]
        )
    return rows


def format_sample(before: Sample, after: Sample) -> str:
    """The live line printed at each sample."""
    return (
        f"{after.elapsed:6.0f} s  {mbps(before, after):6.0f} Mbit/s  "
        f"RSS gw {after.gateway.rss / MB:6.1f} client {after.client.rss / MB:6.1f} MB  "
        f"fds {after.gateway.fds}/{after.client.fds}  "
        f"threads {after.gateway.threads}/{after.client.threads}  "
        f"gw CPU {cpu_percent(before, after, lambda s: s.gateway):3.0f}%  "
        f"busy {busy_percent(before, after):3.0f}%  "
        f"flow log {after.flow_log_bytes / 1024:7.0f} KB {after.flows_logged:6d} flows"
    )


def verdict_lines(checks: Sequence[Target]) -> list[str]:
    return [f"- {check.line()}" for check in checks]


def render_markdown(
    samples: Sequence[Sample],
    checks: Sequence[Target],
    facts: dict[str, str],
    *,
    warmup: float,
    step: float,
) -> str:
    rows = table_rows(samples, step, warmup)
    facts_table = "\n".join(f"| {key} | {value} |" for key, value in facts.items())
    failed = sum(check.passed is False for check in checks)
    summary = "all checks met" if not failed else f"{failed} check(s) NOT MET"
    return f"""\
| Machine and run | |
| --- | --- |
{facts_table}

{render_markdown_table(TABLE_HEADER, rows)}

Verdict ({summary}; everything after the {warmup:g} s warm-up counts):

{chr(10).join(verdict_lines(checks))}
"""
