"""The native core's targets, judged from the throughput results: throughput against the
anchor (native pair, mixed pair), queues, CPU per GB, idle memory, and the pure-Python pair
against its figures from before the native core (for information).

Who calls it: :mod:`.report` (the *Targets* section) and the tests.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from benchlib.pairs import ANCHOR, OLD_ANCHOR, PAIR_LABELS
from benchlib.tables import Target, fmt_num
from benchlib.throughput.matrix import A_TO_B, B_TO_A, FOUR_STREAMS, NATIVE_QUEUES
from benchlib.throughput.results import Result, find, ratio

# Targets of the native core.
TARGET_NATIVE_RATIO = 1.0
TARGET_MIXED_RATIO = 0.9
TARGET_IDLE_RSS_MB = 45.0

#: tunplug (pure Python, 1 queue, offloads on) against Debian 12's wireguard-go before the
#: native core: docs/benchmarks.md of commit a151cfa (2026-11-24), the README's "1.7-2.0x".
PYTHON_BEFORE_VS_WGGO12 = {A_TO_B: 1.71, B_TO_A: 1.91, FOUR_STREAMS: 1.97}

NATIVE = PAIR_LABELS["native-native"]
ANCHOR_LABEL = PAIR_LABELS[ANCHOR]


def _vs_anchor(result: Result | None, results: Sequence[Result]) -> str:
    anchor = find(results, ANCHOR, result.config.test) if result else None
    value = ratio(result, results) if result else None
    if result is None or anchor is None or value is None:
        return "not measured"
    return f"{value:.2f}x ({fmt_num(result.mbps)} vs {fmt_num(anchor.mbps)} Mbit/s)"


def _throughput_targets(results: Sequence[Result]) -> Iterator[Target]:
    for test in (A_TO_B, B_TO_A):
        name = f"{NATIVE} {test.name} >= {TARGET_NATIVE_RATIO:.1f}x {ANCHOR_LABEL}"
        result = find(results, "native-native", test)
        value = ratio(result, results) if result else None
        passed = None if value is None else value >= TARGET_NATIVE_RATIO
        yield Target(name, passed, _vs_anchor(result, results))
    for test in (A_TO_B, B_TO_A):
        name = (
            f"{PAIR_LABELS['native-wggo13']} {test.name} >= {TARGET_MIXED_RATIO:.1f}x "
            f"{ANCHOR_LABEL}, retransmits no more than its"
        )
        result = find(results, "native-wggo13", test)
        anchor = find(results, ANCHOR, test)
        value = ratio(result, results) if result else None
        if result is None or anchor is None or value is None:
            yield Target(name, None, "not measured")
            continue
        mine, theirs = result.retransmits or 0.0, anchor.retransmits or 0.0
        passed = value >= TARGET_MIXED_RATIO and mine <= theirs
        detail = f"{_vs_anchor(result, results)}, {mine:.0f} vs {theirs:.0f} retransmits"
        yield Target(name, passed, detail)


def _queue_target(results: Sequence[Result]) -> Target:
    name = f"{NATIVE} 4 streams: 2 queues >= 1 queue, no more retransmits"
    by_queues = {q: find(results, "native-native", FOUR_STREAMS, queues=q) for q in NATIVE_QUEUES}
    one, two = by_queues[1], by_queues[2]
    if not (one and two and one.mbps is not None and two.mbps is not None):
        return Target(name, None, "not measured")
    retr_one, retr_two = one.retransmits or 0.0, two.retransmits or 0.0
    passed = two.mbps >= one.mbps and retr_two <= retr_one
    detail = (
        f"{two.mbps:.0f} vs {one.mbps:.0f} Mbit/s, {retr_two:.0f} vs {retr_one:.0f} retransmits"
    )
    four = by_queues[4]
    if four and four.mbps is not None:
        detail += f" (4 queues: {four.mbps:.0f} Mbit/s, {four.retransmits or 0:.0f} retransmits)"
    return Target(name, passed, detail)


def _cpu_per_gb(result: Result | None, side: int) -> float | None:
    return result.median(lambda s: s.cpu_seconds_per_gb(side)) if result else None


def _cpu_targets(results: Sequence[Result]) -> Iterator[Target]:
    """Per test and side: the native endpoint's CPU s/GB against the anchor's on that side."""
    for test in (A_TO_B, B_TO_A, FOUR_STREAMS):
        name = f"{NATIVE} {test.name} CPU s/GB <= {ANCHOR_LABEL}'s, both sides"
        mine, theirs = find(results, "native-native", test), find(results, ANCHOR, test)
        sides = [(_cpu_per_gb(mine, side), _cpu_per_gb(theirs, side)) for side in (0, 1)]
        figures = [(m, t) for m, t in sides if m is not None and t is not None]
        if len(figures) < len(sides):
            yield Target(name, None, "not measured")
            continue
        detail = ", ".join(
            f"{'ab'[side]} {m:.1f} vs {t:.1f}" for side, (m, t) in enumerate(figures)
        )
        yield Target(name, all(m <= t for m, t in figures), detail + " s/GB")


def _idle_target(results: Sequence[Result]) -> Target:
    idle = [
        (value, result.config.setup.label, "ab"[side])
        for result in results
        for side in (0, 1)
        if result.config.setup.kinds[side] == "tunplug-native"
        and (value := result.idle_rss_mb(side)) is not None
    ]
    name = f"tunplug-native idle RSS <= {TARGET_IDLE_RSS_MB:.0f} MB"
    if not idle:
        return Target(name, None, "not measured")
    worst = max(idle)
    detail = f"at most {worst[0]:.1f} MB ({worst[1]}, side {worst[2]})"
    return Target(name, worst[0] <= TARGET_IDLE_RSS_MB, detail)


def _python_report(results: Sequence[Result]) -> Target:
    """tunplug-python against before: its ratio to Debian 12's build, the anchor of then."""
    parts = []
    for test, before in PYTHON_BEFORE_VS_WGGO12.items():
        result = find(results, "python-python", test)
        if result is None or result.mbps is None:
            continue
        now, old = ratio(result, results), ratio(result, results, OLD_ANCHOR)
        parts.append(
            f"{test.name} {fmt_num(now, '.2f', 'x')} wggo13, {fmt_num(old, '.2f', 'x')} wggo12 "
            f"(before {before:.2f}x wggo12)"
        )
    name = f"{PAIR_LABELS['python-python']} not slower than before"
    return Target(name, None, "; ".join(parts) or "not measured", informational=bool(parts))


def evaluate_targets(results: Sequence[Result]) -> list[Target]:
    return [
        *_throughput_targets(results),
        _queue_target(results),
        *_cpu_targets(results),
        _idle_target(results),
        _python_report(results),
    ]
