"""The pure parts of ``benchmarks/throughput.py``: matrix, medians, ratios, targets, rendering.

No network, no root and no timing: results are built by hand. The benchmark itself is never run
from the tests.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.py"


def _load():
    spec = importlib.util.spec_from_file_location("tunplug_benchmark_throughput", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


bench = _load()
MB = 1024 * 1024


def sample(mbps, *, retransmits=0, cpu=(1.0, 2.0), idle_mb=(40.0, 41.0), seconds=5.0, tso=None):
    return bench.Sample(
        bits_per_second=mbps * 1e6,
        retransmits=retransmits,
        bytes=int(mbps * 1e6 / 8 * seconds),
        seconds=seconds,
        cpu_seconds=cpu,
        peak_rss=(50 * MB, 60 * MB),
        idle_rss=(int(idle_mb[0] * MB), int(idle_mb[1] * MB)),
        iperf_cpu_percent=(3.0, 7.0),
        machine_busy=0.9,
        tso=(tso, tso),
    )


def fake_results(tunplug_single=(1000, 1000), q2_retransmits=0, idle_mb=(40.0, 41.0), tso=False):
    """Anchor at 500 Mbit/s everywhere; tunplug figures chosen per test."""
    results = []
    for config in bench.configs(bench.build_matrix()):
        setup, test = config.setup, config.test
        retransmits = 0
        if setup.pair == bench.ANCHOR:
            values = [400, 500, 600]
        elif setup.pair == "tunplug-tunplug" and test == bench.A_TO_B:
            values = [tunplug_single[0]] * 3
        elif setup.pair == "tunplug-tunplug" and test == bench.B_TO_A:
            values = [tunplug_single[1]] * 3
        elif setup.queues == 2:
            values, retransmits = [700, 710, 690], q2_retransmits
        else:
            values = [500, 550, 450]
        device_tso = bool(tso and setup.offloads)
        samples = [
            sample(v, retransmits=retransmits, idle_mb=idle_mb, tso=device_tso) for v in values
        ]
        results.append(bench.Result(config, samples))
    return results


def test_the_default_matrix_covers_every_pair_direction_and_queue_setting():
    setups = bench.build_matrix()
    assert setups[0].pair == bench.ANCHOR
    assert {s.pair for s in setups} == set(bench.PAIRS)
    tests = {(s.pair, s.queues, s.offloads, t) for s in setups for t in s.tests}
    for pair in ("wggo-wggo", "tunplug-tunplug", "tunplug-wggo"):
        queues, offloads = (None, None) if pair == bench.ANCHOR else (1, True)
        for test in (bench.A_TO_B, bench.B_TO_A, bench.FOUR_STREAMS):
            assert (pair, queues, offloads, test) in tests
    assert ("tunplug-tunplug", 1, False, bench.A_TO_B) in tests
    assert ("tunplug-tunplug", 2, True, bench.FOUR_STREAMS) in tests
    # the default run stays well under 15 minutes
    assert bench.estimate_seconds(setups, runs=3, seconds=5) < 15 * 60


def test_only_keeps_the_anchor_because_ratios_need_it():
    setups = bench.build_matrix(["tunplug-wggo"])
    assert {s.pair for s in setups} == {bench.ANCHOR, "tunplug-wggo"}


def test_tunplug_settings_reach_the_endpoints():
    setup = bench.Setup("tunplug-tunplug", (bench.A_TO_B,), queues=2, offloads=False)
    assert setup.tunplug_args == ("--tun-threads", "2")
    assert setup.tunplug_env == {"TUNPLUG_OFFLOADS": "false"}
    anchor = bench.Setup(bench.ANCHOR, (bench.A_TO_B,))
    assert anchor.tunplug_args == () and anchor.tunplug_env == {}


def test_medians_and_ratio_against_the_anchor_of_the_same_test():
    results = fake_results(tunplug_single=(1100, 900))
    anchor = bench.find(results, bench.ANCHOR, bench.A_TO_B)
    assert anchor.mbps == pytest.approx(500)
    tunplug = bench.find(results, "tunplug-tunplug", bench.A_TO_B)
    assert bench.ratio(tunplug, results) == pytest.approx(2.2)
    reverse = bench.find(results, "tunplug-tunplug", bench.B_TO_A)
    assert bench.ratio(reverse, results) == pytest.approx(1.8)
    two_queues = bench.find(results, "tunplug-tunplug", bench.FOUR_STREAMS, queues=2)
    assert two_queues.mbps == pytest.approx(700)


def test_ratio_is_missing_without_anchor_samples():
    results = fake_results()
    bench.find(results, bench.ANCHOR, bench.A_TO_B).samples.clear()
    assert bench.ratio(bench.find(results, "tunplug-tunplug", bench.A_TO_B), results) is None


def test_cpu_seconds_per_gb_and_percent():
    one = sample(800, cpu=(2.0, 1.0), seconds=5.0)  # 500 MB received
    assert one.cpu_seconds_per_gb(0) == pytest.approx(4.0)
    assert one.cpu_percent(1) == pytest.approx(20.0)


def test_targets_pass_and_fail_on_the_issue_thresholds():
    passing = {t.name: t for t in bench.evaluate_targets(fake_results((1000, 1000)))}
    failing = {t.name: t for t in bench.evaluate_targets(fake_results((999, 1000), 5, (46, 40)))}
    single = "tunplug<->tunplug 1 stream a->b >= 2.0x wg-go<->wg-go"
    assert passing[single].passed is True and failing[single].passed is False
    queues = "tunplug<->tunplug 4 streams: 2 queues >= 1 queue, no more retransmits"
    assert passing[queues].passed is True
    assert failing[queues].passed is False  # faster, but more retransmits
    idle = "tunplug idle RSS <= 45 MB"
    assert passing[idle].passed is True and failing[idle].passed is False
    assert "46.0 MB" in failing[idle].detail


def test_targets_are_not_applicable_when_filtered_out():
    results = [r for r in fake_results() if r.config.setup.pair == bench.ANCHOR]
    assert all(t.passed is None for t in bench.evaluate_targets(results))
    assert all(t.line().startswith("n/a") for t in bench.evaluate_targets(results))


def test_tables_render_as_text_and_markdown():
    results = fake_results()
    results[-1].failures = 1
    results[-1].samples[0].disturbed = True
    rows = bench.result_rows(results)
    assert len(rows) == len(results)
    assert all(len(row) == len(bench.RESULT_HEADER) for row in rows)
    assert rows[0][:9] == ["wg-go<->wg-go", "-", "-", "off/off", "1 stream a->b", "500",
                           "400-600", "1.00x (anchor)", "0"]  # fmt: skip
    assert rows[3][5:8] == ["1000", "1000-1000", "2.00x"]
    assert rows[-1][-1] == "3 (1 failed, 1 disturbed)"
    assert rows[-2][-1] == "3"
    text = bench.render_text(results)
    assert "PASS  tunplug<->tunplug 1 stream a->b" in text
    assert "Where the CPU went" in text
    machine = {"CPUs (nproc)": "2", "Kernel": "6.1"}
    md = bench.render_markdown(results, bench.build_matrix(), machine, command="sudo x --quick")
    assert md.startswith("# Throughput benchmark")
    assert "`sudo x --quick`" in md
    assert "| CPUs (nproc) | 2 |" in md
    assert (
        "| tunplug<->tunplug | 1 | on | off/off | 1 stream a->b | 1000 | 1000-1000 | 2.00x |" in md
    )
    assert "had TSO off, as designed" in md  # offloads asked for; tunplug never turns TSO on
    assert "- PASS  tunplug idle RSS <= 45 MB" in md


def test_empty_results_render_dashes():
    results = [bench.Result(config) for config in bench.configs(bench.build_matrix())]
    rows = bench.result_rows(results)
    assert rows[0][3] == "-" and rows[0][5:8] == ["-", "-", "-"]
    assert bench.render_text(results)


def test_arguments_defaults_quick_and_overrides():
    defaults = bench.parse_args([])
    assert (defaults.runs, defaults.seconds, defaults.only, defaults.output) == (3, 5.0, (), None)
    quick = bench.parse_args(["--quick"])
    assert (quick.runs, quick.seconds) == (1, 2.0)
    mixed = bench.parse_args(["--quick", "--runs", "2", "--only", "tunplug-tunplug",
                              "--output", "docs/benchmarks.md"])  # fmt: skip
    assert (mixed.runs, mixed.seconds) == (2, 2.0)
    assert mixed.only == ("tunplug-tunplug",)
    assert mixed.output == Path("docs/benchmarks.md")


@pytest.mark.parametrize("argv", [["--runs", "0"], ["--seconds", "0.5"], ["--only", "nope"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(argv)
    assert exit_info.value.code == 2


def test_list_prints_the_matrix_without_root(capsys):
    assert bench.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "tunplug<->tunplug q2 offloads on: 4 streams a->b" in out
    assert "about" in out and "min" in out


def test_proc_stat_parsing_survives_odd_process_names(tmp_path, monkeypatch):
    stat = "1234 (a) b (c)) S " + " ".join(str(n) for n in range(4, 53))
    real_path = Path

    def fake_path(path):
        return tmp_path / "stat" if str(path).endswith("/stat") else real_path(path)

    (tmp_path / "stat").write_text(stat)
    monkeypatch.setattr(bench, "Path", fake_path)
    assert bench.proc_cpu_seconds(1234) == pytest.approx((14 + 15) / bench.CLK_TCK)


def test_the_offload_note_follows_what_the_devices_did():
    assert "took effect" in bench.offload_note(fake_results(tso=True))
    assert "had TSO off, as designed" in bench.offload_note(fake_results(tso=False))
    mixed = fake_results(tso=True)
    mixed[3].samples[0].tso = (False, True)
    assert "varied" in bench.offload_note(mixed)
    assert bench.result_rows(mixed)[3][3] == "mixed/on"
    on = bench.result_rows(fake_results(tso=True))
    assert [row[3] for row in on[3:5]] == ["on/on", "on/on"]
    assert on[6][2:4] == ["off", "off/off"]  # tunplug<->tunplug, offloads off


def test_code_fingerprint_changes_when_a_file_changes(tmp_path):
    (tmp_path / "core").mkdir()
    module = tmp_path / "core" / "m.py"
    module.write_text("x = 1\n")
    before = bench.code_fingerprint(tmp_path)
    assert bench.code_fingerprint(tmp_path) == before
    module.write_text("x = 22\n")
    assert bench.code_fingerprint(tmp_path) != before
