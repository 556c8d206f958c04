"""Short human-readable figures and tables for status output: ages, byte counts, columns.

Who calls it: the gateway's CLI (``tunplug-gateway client list``, ``status``, ``resource
list``...). It lives in the core, not in a CLI module, so that core code that shows a figure
never imports a CLI, and one CLI module never imports another for it.
"""

from __future__ import annotations

from collections.abc import Sequence


def format_age(then: float | None, now: float) -> str:
    """``"12 s ago"``, ``"5 min ago"``, ``"3 h ago"``, ``"2 d ago"``, or ``"never"``."""
    if then is None:
        return "never"
    seconds = max(0, int(now - then))
    for unit, size, limit in (("s", 1, 120), ("min", 60, 7200), ("h", 3600, 172800)):
        if seconds < limit:
            return f"{seconds // size} {unit} ago"
    return f"{seconds // 86400} d ago"


def format_bytes(count: int) -> str:
    """``"512 B"``, ``"1.5 KiB"``, ``"3.2 GiB"``."""
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB"):  # noqa: B007 - the last unit is used after
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, without trailing spaces."""
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )
