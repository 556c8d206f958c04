"""The pieces of a benchmark's report: number cells, medians, text and Markdown tables, and
pass/fail targets.

Who calls it: the reports of the throughput benchmark (:mod:`benchlib.throughput`), the soak
(:mod:`benchlib.soak`), ``flood.py`` and ``clients.py``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def fmt_num(value: float | None, spec: str = ".0f", suffix: str = "") -> str:
    """``value`` formatted with ``spec`` and ``suffix``; ``-`` for None and NaN."""
    return "-" if value is None or value != value else f"{value:{spec}}{suffix}"


def median_or_none(values: Sequence[float]) -> float | None:
    """The median of ``values``; None when there are none."""
    return statistics.median(values) if values else None


def render_text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


def render_markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(row) for row in rows)])


@dataclass(frozen=True, slots=True)
class Target:
    """One goal (of the native core, of a soak); ``passed`` is None when its configurations were
    not measured. An ``informational`` line only reports figures."""

    name: str
    passed: bool | None
    detail: str
    informational: bool = False

    @property
    def verdict(self) -> str:
        if self.informational:
            return "info"
        return {True: "met", False: "NOT MET", None: "n/a"}[self.passed]

    def line(self) -> str:
        return f"{self.verdict:<7}  {self.name}: {self.detail}"
