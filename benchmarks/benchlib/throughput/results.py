"""What the throughput benchmark measured: one sample per iperf3 run, the samples of each
configuration, their medians, and ratios against an anchor pair.

Who calls it: :mod:`.measure` (fills them), :mod:`.targets` and :mod:`.report` (read them),
and the tests (build them by hand).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from benchlib.host import MB
from benchlib.pairs import ANCHOR, PAIRS, TUNPLUG_KIND_ENV, Test
from benchlib.tables import median_or_none
from benchlib.throughput.matrix import Config


@dataclass(slots=True)
class Sample:
    """One iperf3 run of one configuration, with what the endpoints used meanwhile."""

    bits_per_second: float  # received, summed over streams
    retransmits: int
    bytes: int  # received
    seconds: float
    cpu_seconds: tuple[float, float]  # endpoint a, endpoint b (user + system, all threads)
    peak_rss: tuple[int, int]  # VmHWM after the test, bytes
    idle_rss: tuple[int, int]  # VmRSS right after the tunnel came up, bytes
    iperf_cpu_percent: tuple[float, float]  # iperf3 client, server (iperf3's own report)
    machine_busy: float  # fraction of all CPUs busy during the iperf3 call (start-up included)
    disturbed: bool = False  # other namespaces (someone else's tests) existed around the test
    tso: tuple[bool | None, bool | None] = (None, None)  # TCP segmentation offload on the devices

    def cpu_seconds_per_gb(self, side: int) -> float:
        return self.cpu_seconds[side] / (self.bytes / 1e9) if self.bytes else float("nan")

    def cpu_percent(self, side: int) -> float:
        return 100 * self.cpu_seconds[side] / self.seconds if self.seconds else float("nan")


@dataclass(slots=True)
class Result:
    """Every sample of one configuration, and how many runs failed."""

    config: Config
    samples: list[Sample] = field(default_factory=list)
    failures: int = 0

    def median(self, value: Callable[[Sample], float]) -> float | None:
        return median_or_none([value(sample) for sample in self.samples])

    @property
    def mbps(self) -> float | None:
        return self.median(lambda s: s.bits_per_second / 1e6)

    @property
    def retransmits(self) -> float | None:
        return self.median(lambda s: s.retransmits)

    def peak_rss_mb(self, side: int) -> float | None:
        values = [sample.peak_rss[side] / MB for sample in self.samples]
        return max(values) if values else None

    def idle_rss_mb(self, side: int) -> float | None:
        return self.median(lambda s: s.idle_rss[side] / MB)


def ratio(result: Result, results: Sequence[Result], anchor: str = ANCHOR) -> float | None:
    """Median throughput over ``anchor``'s median for the same test (None: either missing)."""
    theirs = find(results, anchor, result.config.test)
    mine, base = result.mbps, theirs.mbps if theirs else None
    return mine / base if mine is not None and base else None


def find(
    results: Sequence[Result], pair: str, test: Test, queues: int | None = None
) -> Result | None:
    """The result for a pair and test; for pairs with tunplug by default with 1 queue."""
    if any(kind in TUNPLUG_KIND_ENV for kind in PAIRS[pair]):
        queues = 1 if queues is None else queues
    for result in results:
        setup = result.config.setup
        if (setup.pair, setup.queues, result.config.test) == (pair, queues, test):
            return result
    return None
