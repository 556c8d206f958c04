"""The soak's verdict: leaks (RSS, descriptors, threads), drift and stalls of the throughput,
and that the run tested what it claims (flow log written, short connections through, both
processes alive). ``benchmarks/README.md`` says why each threshold is what it is.

Who calls it: ``soak.py`` (``main``: :func:`evaluate`) and the tests.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchlib.host import MB
from benchlib.soak.samples import Sample, mbps
from benchlib.tables import Target

# Thresholds of the verdict; benchmarks/README.md says why each is what it is.
#: RSS growth after the warm-up, from a least-squares line, in MB per 10 minutes.
RSS_SLOPE_LIMIT_MB = 5.0
#: Open descriptors and threads: the same at the end as at the end of the warm-up, each the
#: lowest of COUNT_WINDOW consecutive samples.
FD_CHANGE_LIMIT = 0
THREAD_CHANGE_LIMIT = 0
COUNT_WINDOW = 3
#: Throughput of the 10 s intervals after the warm-up: coefficient of variation at most this,
#: the slowest interval at least MIN_RATIO of the median, the last third's median at least
#: TREND_RATIO of the first third's.
THROUGHPUT_CV_LIMIT = 0.15
THROUGHPUT_MIN_RATIO = 0.5
THROUGHPUT_TREND_RATIO = 0.8
#: Short connections that may fail (share): none should, but one lost to a full queue is noise.
CONNECTION_FAILURE_LIMIT = 0.01

TEN_MINUTES = 600.0


def after_warmup(samples: Sequence[Sample], warmup: float) -> list[Sample]:
    """The samples from the end of the warm-up on (the first one is its baseline)."""
    return [sample for sample in samples if sample.elapsed >= warmup - 1e-6]


def rss_slope_mb_per_10min(samples: Sequence[Sample], side: Callable[[Sample], int]) -> float:
    """The slope of a least-squares line through (time, RSS), in MB per 10 minutes."""
    if len(samples) < 3:
        return math.nan
    fit = statistics.linear_regression(
        [sample.elapsed for sample in samples], [side(sample) / MB for sample in samples]
    )
    return fit.slope * TEN_MINUTES


def interval_mbps(samples: Sequence[Sample]) -> list[float]:
    """The throughput of each interval between consecutive samples."""
    return [mbps(a, b) for a, b in itertools.pairwise(samples)]


def _rss_check(name: str, measured: Sequence[Sample], side: Callable[[Sample], int]) -> Target:
    slope = rss_slope_mb_per_10min(measured, side)
    title = f"{name} RSS slope < {RSS_SLOPE_LIMIT_MB:g} MB per 10 min after warm-up"
    if math.isnan(slope):
        return Target(title, None, "fewer than 3 samples after the warm-up")
    first, last = side(measured[0]) / MB, side(measured[-1]) / MB
    detail = f"{slope:+.2f} MB per 10 min ({first:.1f} -> {last:.1f} MB)"
    return Target(title, slope < RSS_SLOPE_LIMIT_MB, detail)


def _count_check(
    name: str, what: str, limit: int, measured: Sequence[Sample], count: Callable[[Sample], int]
) -> Target:
    """The lowest count of the first :data:`COUNT_WINDOW` samples after the warm-up against that
    of the last ones: a leak keeps growing, while a worker thread or a file open for a moment
    (anyio's worker threads live until 10 s idle) comes and goes."""
    title = f"{name} {what} change <= {limit} after warm-up"
    if len(measured) < 2:
        return Target(title, None, "fewer than 2 samples after the warm-up")
    first = min(count(sample) for sample in measured[:COUNT_WINDOW])
    last = min(count(sample) for sample in measured[-COUNT_WINDOW:])
    seen = sorted({count(sample) for sample in measured})
    detail = f"{first} -> {last} (lowest of {COUNT_WINDOW} samples; seen {seen[0]}-{seen[-1]})"
    return Target(title, abs(last - first) <= limit, detail)


def throughput_checks(measured: Sequence[Sample]) -> list[Target]:
    """Coefficient of variation, slowest interval against the median, and trend."""
    values = interval_mbps(measured)
    titles = [
        f"throughput CV <= {THROUGHPUT_CV_LIMIT:.2f} over the sampling intervals",
        f"slowest interval >= {THROUGHPUT_MIN_RATIO:.1f}x the median",
        f"last third's median >= {THROUGHPUT_TREND_RATIO:.1f}x the first third's",
    ]
    if len(values) < 3:
        return [Target(title, None, "fewer than 3 intervals after the warm-up") for title in titles]
    mean, median = statistics.fmean(values), statistics.median(values)
    cv = statistics.stdev(values) / mean if mean > 0 else math.inf
    spread = f"min {min(values):.0f} / median {median:.0f} / max {max(values):.0f} Mbit/s"
    third = max(1, len(values) // 3)
    early, late = statistics.median(values[:third]), statistics.median(values[-third:])
    trend = late / early if early > 0 else 0.0
    return [
        Target(titles[0], cv <= THROUGHPUT_CV_LIMIT, f"CV {cv:.3f}; {spread}"),
        Target(
            titles[1],
            median > 0 and min(values) >= THROUGHPUT_MIN_RATIO * median,
            f"{min(values) / median if median > 0 else 0:.2f}x ({spread})",
        ),
        Target(
            titles[2],
            trend >= THROUGHPUT_TREND_RATIO,
            f"{trend:.2f}x ({late:.0f} vs {early:.0f} Mbit/s)",
        ),
    ]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the run saw besides the samples."""

    connections: dict[str, int]  # tcp, udp, failed (the short connections)
    iperf3_mbps: float | None  # iperf3's own average over the whole run, None: no report
    iperf3_retransmits: int | None
    alive: bool  # the gateway and the client were still running at the end


def evaluate(samples: Sequence[Sample], warmup: float, outcome: Outcome) -> list[Target]:
    """Every check of the verdict, in the order the report prints them."""
    measured = after_warmup(samples, warmup)
    checks = [
        _rss_check("gateway", measured, lambda s: s.gateway.rss),
        _rss_check("client", measured, lambda s: s.client.rss),
        _count_check("gateway", "open fds", FD_CHANGE_LIMIT, measured, lambda s: s.gateway.fds),
        _count_check("client", "open fds", FD_CHANGE_LIMIT, measured, lambda s: s.client.fds),
        _count_check(
            "gateway", "threads", THREAD_CHANGE_LIMIT, measured, lambda s: s.gateway.threads
        ),
        _count_check(
            "client", "threads", THREAD_CHANGE_LIMIT, measured, lambda s: s.client.threads
        ),
        *throughput_checks(measured),
    ]
    new_flows = measured[-1].flows_logged - measured[0].flows_logged if len(measured) > 1 else 0
    checks.append(
        Target(
            "the flow log keeps growing after the warm-up (flow logs are on and written)",
            new_flows > 0,
            f"{new_flows} flows logged after the warm-up, "
            f"{samples[-1].flows_logged if samples else 0} in all",
        )
    )
    tried = sum(outcome.connections.values())
    failed = outcome.connections.get("failed", 0)
    checks.append(
        Target(
            f"short connections failing <= {CONNECTION_FAILURE_LIMIT:.0%}",
            tried > 0 and failed <= CONNECTION_FAILURE_LIMIT * tried,
            f"{failed} of {tried} failed ({outcome.connections.get('tcp', 0)} TCP, "
            f"{outcome.connections.get('udp', 0)} UDP completed)",
        )
    )
    checks.append(
        Target(
            "gateway and client still running at the end",
            outcome.alive,
            "both running" if outcome.alive else "one of them exited",
        )
    )
    return checks
