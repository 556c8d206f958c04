"""Short human-readable figures and tables for status output: ages, byte counts, columns.

Who calls it: the gateway's CLI (``tunplug-gateway client list``, ``status``, ``resource
list``...) and ``tunplug status`` (the ``wg show`` style figures). It lives in the core, not in
a CLI module, so that core code that shows a figure never imports a CLI, and one CLI module
never imports another for it.
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


def wg_show_age(then: float | None, now: float) -> str:
    """As ``wg show`` prints a handshake's age: ``"1 minute, 5 seconds ago"``, or ``"never"``."""
    if then is None:
        return "never"
    seconds = max(0, int(now - then))
    parts: list[str] = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size or (unit == "second" and not parts):
            count, seconds = divmod(seconds, size)
            parts.append(f"{count} {unit}{'' if count == 1 else 's'}")
    return ", ".join(parts) + " ago"


def wg_show_bytes(count: int) -> str:
    """As ``wg show`` prints a transfer: ``"512 B"``, ``"1.50 KiB"``, up to GiB."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, without trailing spaces."""
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )
