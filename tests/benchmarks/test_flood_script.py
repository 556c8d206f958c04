"""The pure parts of ``benchmarks/flood.py``: phases from iperf3 intervals, medians, the share
kept against wireguard-go, verdicts and rendering. No network, no root, no timing."""

from __future__ import annotations

import pytest

from ._scripts import load

flood = load("flood.py", "tunplug_benchmark_flood")


def intervals(rates):
    return [
        {"sum": {"start": float(i), "end": float(i + 1), "bits_per_second": rate * 1e6}}
        for i, rate in enumerate(rates)
    ]


def test_phases_skip_slow_start_and_partial_seconds_and_take_medians():
    # seconds 0-1 slow start; flood from 4.5 to 8.5; after from 10.5 on
    rates = [10, 20, 100, 102, 98, 40, 0, 60, 50, 70, 80, 100, 104]
    run = flood.phases(intervals(rates), flood_start=4.5, flood_end=8.5)
    assert run.before == 101  # seconds 2, 3 (4-5 overlaps the flood's start)
    assert run.during == 40  # seconds 5, 6, 7 -> 40, 0, 60
    assert run.during_min == 0
    assert run.after == 102  # seconds 11, 12
    assert run.kept == pytest.approx(40 / 101)


def test_a_phase_without_whole_seconds_is_an_error():
    with pytest.raises(ValueError, match="do not cover every phase"):
        flood.phases(intervals([100] * 5), flood_start=4.5, flood_end=10.0)


def row(pair, *runs, sources=1):
    return flood.Row(pair, sources, [flood.Run(b, d, m, a, 100_000.0) for b, d, m, a in runs])


def test_shares_are_compared_with_wireguard_go_13_of_the_same_run_and_judged():
    rows = [
        row("wggo13-wggo13", (2000, 400, 300, 1900), (2000, 500, 200, 2000)),
        row("native-native", (4000, 2000, 1500, 4000), (4000, 1800, 900, 4100)),
        row("python-python", (900, 0, 0, 800)),
    ]
    table = flood.table_rows(rows)
    assert table[0][5] == "22%" and table[0][6] == "1.00x"
    assert table[1][5] == "48%" and table[1][6] == "2.11x"
    assert table[2][3] == "0"
    verdicts = flood.verdicts(rows)
    assert verdicts[0].startswith("PASS tunplug-native<->tunplug-native, 1 source: keeps 48%")
    assert verdicts[1].startswith("FAIL tunplug-python<->tunplug-python, 1 source: keeps 0%")
    markdown = flood.render_markdown(rows, {"Kernel": "6.1"}, runs=2)
    assert "| tunplug-native<->tunplug-native, 1 source | 4000 | 1900 | 1200 |" in markdown
    assert "| Kernel | 6.1 |" in markdown


def test_each_flood_is_compared_with_wireguard_go_under_the_same_flood():
    rows = [
        row("wggo13-wggo13", (2000, 400, 300, 1900)),
        row("wggo13-wggo13", (2000, 1000, 900, 1900), sources=1000),
        row("native-native", (4000, 2000, 1500, 4000), sources=1000),
    ]
    table = flood.table_rows(rows)
    assert table[2][0] == "tunplug-native<->tunplug-native, 1000 sources"
    assert table[2][6] == "1.00x"  # 50% against wireguard-go's 50% under 1000 sources
