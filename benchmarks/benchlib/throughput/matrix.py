"""What the throughput benchmark measures: its iperf3 tests, the setups (pair, queues) they run
through, and how long that takes.

Who calls it: ``throughput.py`` (``--only``, ``--list``), :mod:`.measure`, :mod:`.targets`,
:mod:`.report` and the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from benchlib.pairs import ANCHOR, OLD_ANCHOR, PAIRS, Setup, Test

NATIVE_QUEUES = (1, 2, 4)

A_TO_B = Test("1 stream a->b")
B_TO_A = Test("1 stream b->a", reverse=True)
FOUR_STREAMS = Test("4 streams a->b", streams=4)


@dataclass(frozen=True, slots=True)
class Config:
    """One row of the table: a setup and one of its tests."""

    setup: Setup
    test: Test

    @property
    def label(self) -> str:
        return f"{self.setup.label}, {self.test.name}"


def build_matrix(only: Sequence[str] = ()) -> list[Setup]:
    """The default matrix; ``only`` keeps those pairs (the anchor always stays: ratios need it;
    the old anchor only when named)."""
    both_ways = (A_TO_B, B_TO_A, FOUR_STREAMS)
    setups = [
        Setup(ANCHOR, both_ways),
        Setup(OLD_ANCHOR, both_ways),
        Setup("native-native", both_ways, queues=1),
        *(Setup("native-native", (FOUR_STREAMS,), queues=q) for q in NATIVE_QUEUES[1:]),
        Setup("native-wggo13", both_ways, queues=1),
        Setup("python-python", both_ways, queues=1),
    ]
    wanted = {ANCHOR, *only} if only else set(PAIRS)
    return [setup for setup in setups if setup.pair in wanted]


def configs(setups: Sequence[Setup]) -> list[Config]:
    return [Config(setup, test) for setup in setups for test in setup.tests]


def estimate_seconds(setups: Sequence[Setup], runs: int, seconds: float) -> float:
    """Rough wall time: iperf3 plus its start-up per test, namespaces and handshake per setup."""
    per_run = sum(2.0 + len(s.tests) * (seconds + 1.3) for s in setups)
    return runs * per_run


def describe_matrix(setups: Sequence[Setup]) -> list[str]:
    return [f"{setup.label}: {', '.join(test.name for test in setup.tests)}" for setup in setups]
