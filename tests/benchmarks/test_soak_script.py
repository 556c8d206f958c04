"""The verdict of ``benchmarks/soak.py``: a flat run passes, and each kind of leak or slowdown
fails its own check. Made-up samples; no namespaces, no root, no timing."""

from __future__ import annotations

from benchlib.soak.checks import Outcome
from benchlib.soak.samples import ProcessStats, Sample

from ._scripts import load

soak = load("soak.py", "tunplug_benchmark_soak")
MB = 1024 * 1024
OUTCOME = Outcome({"tcp": 900, "udp": 300, "failed": 0}, 1000.0, 0, alive=True)


def samples(rss_growth_mb=0.0, fd_step=0, slow_after=None, count=60):
    out, rx = [], 0
    for i in range(count):
        elapsed = 10.0 * i
        gateway = ProcessStats(
            rss=int((50 + rss_growth_mb * i / count) * MB),
            fds=14 + (fd_step if i > count // 2 else 0),
            threads=5,
            cpu_seconds=i * 8.0,
        )
        client = ProcessStats(rss=30 * MB, fds=10, threads=4, cpu_seconds=i * 2.0)
        out.append(Sample(elapsed, rx, gateway, client, 0.0, 0, i * 20, 0))
        # 1000 Mbit/s for the next 10 s, 300 from ``slow_after`` on
        rx += int(1000e6 / 8 * 10 * (0.3 if slow_after is not None and i >= slow_after else 1.0))
    return out


def failed(checks):
    return [check.name for check in checks if check.passed is not True]


def test_a_flat_run_passes_every_check():
    assert failed(soak.evaluate(samples(), 120.0, OUTCOME)) == []


def test_a_growing_rss_fails_the_rss_check_only():
    titles = failed(soak.evaluate(samples(rss_growth_mb=20.0), 120.0, OUTCOME))
    assert titles == ["gateway RSS slope < 5 MB per 10 min after warm-up"]


def test_one_more_descriptor_fails_the_fd_check():
    titles = failed(soak.evaluate(samples(fd_step=1), 120.0, OUTCOME))
    assert titles == ["gateway open fds change <= 0 after warm-up"]


def test_throughput_falling_for_the_last_part_fails_the_throughput_checks():
    titles = failed(soak.evaluate(samples(slow_after=45), 120.0, OUTCOME))
    assert any("last third's median" in title for title in titles)
    assert any("slowest interval" in title for title in titles)
