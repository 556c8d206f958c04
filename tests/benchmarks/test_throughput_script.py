"""The pure parts of ``benchmarks/throughput.py`` (its modules in ``benchmarks/benchlib/``) and
``benchmarks/wggo.py``: matrix, medians, ratios, targets, rendering, options, and finding the
machine's Debian mirror.

No network, no root, no apt and no timing: results are built by hand, apt sources are temporary
files. The benchmark itself is never run from the tests.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import wggo
from benchlib import host
from benchlib.facts import WGGO_FACT_NAMES, code_fingerprint
from benchlib.pairs import ANCHOR, OLD_ANCHOR, PAIRS, Setup, kinds_in
from benchlib.throughput.matrix import (
    A_TO_B,
    B_TO_A,
    FOUR_STREAMS,
    build_matrix,
    configs,
    estimate_seconds,
)
from benchlib.throughput.report import (
    RESULT_HEADER,
    render_markdown,
    render_text,
    result_rows,
    tso_by_kind,
    tso_note,
)
from benchlib.throughput.results import Result, Sample, find, ratio
from benchlib.throughput.targets import evaluate_targets

from ._scripts import load

bench = load("throughput.py", "tunplug_benchmark_throughput")  # the command line
MB = 1024 * 1024
ANCHOR_MBPS = 500
OLD_ANCHOR_MBPS = 100


def sample(mbps, *, retransmits=0, cpu=(1.0, 2.0), idle_mb=(40.0, 41.0), seconds=5.0, tso=None):
    return Sample(
        bits_per_second=mbps * 1e6,
        retransmits=retransmits,
        bytes=int(mbps * 1e6 / 8 * seconds),
        seconds=seconds,
        cpu_seconds=cpu,
        peak_rss=(50 * MB, 60 * MB),
        idle_rss=(int(idle_mb[0] * MB), int(idle_mb[1] * MB)),
        iperf_cpu_percent=(3.0, 7.0),
        machine_busy=0.9,
        tso=tso if isinstance(tso, tuple) else (tso, tso),
    )


def fake_results(
    native=(500, 500),
    mixed=(450, 450),
    mixed_retransmits=0,
    q2=(700, 0),
    native_cpu=(1.0, 2.0),
    idle_mb=(40.0, 41.0),
):
    """Anchor at 500 Mbit/s (400-600), old anchor at 100, every other figure chosen per test.

    All samples of a configuration use the same CPU seconds, so CPU s/GB only follows the
    throughput unless ``native_cpu`` says otherwise.
    """
    results = []
    for config in configs(build_matrix()):
        setup, test = config.setup, config.test
        retransmits, cpu, idle = 0, (1.0, 2.0), (5.0, 5.0)
        if setup.pair == ANCHOR:
            values = [400, 500, 600]
        elif setup.pair == OLD_ANCHOR:
            values, retransmits = [OLD_ANCHOR_MBPS] * 3, 40000
        elif setup.pair == "native-native" and setup.queues == 1:
            values = [native[1] if test.reverse else native[0]] * 3
            values = [650] * 3 if test == FOUR_STREAMS else values
            cpu, idle = native_cpu, idle_mb
        elif setup.pair == "native-native" and setup.queues == 2:
            values, retransmits, idle = [q2[0]] * 3, q2[1], idle_mb
        elif setup.pair == "native-native":
            values, idle = [720] * 3, idle_mb
        elif setup.pair == "native-wggo13":
            values, retransmits = [mixed[1] if test.reverse else mixed[0]] * 3, mixed_retransmits
            idle = (idle_mb[0], 5.0)
        else:  # tunplug-python
            values, idle = [180] * 3, (50.0, 50.0)
        wggo13_tso = tuple(kind == "wggo13" for kind in setup.kinds)
        samples = [
            sample(v, retransmits=retransmits, cpu=cpu, idle_mb=idle, tso=wggo13_tso)
            for v in values
        ]
        results.append(Result(config, samples))
    return results


# --- matrix ---------------------------------------------------------------------------------


def test_the_matrix_has_both_anchors_both_data_paths_the_mixed_pair_and_the_queues():
    setups = build_matrix()
    assert [s.pair for s in setups[:2]] == [ANCHOR, OLD_ANCHOR]
    assert {s.pair for s in setups} == set(PAIRS)
    tests = {(s.pair, s.queues, t) for s in setups for t in s.tests}
    for pair, queues in (
        ("wggo13-wggo13", None),
        ("wggo12-wggo12", None),
        ("native-native", 1),
        ("python-python", 1),
        ("native-wggo13", 1),
    ):
        for test in (A_TO_B, B_TO_A, FOUR_STREAMS):
            assert (pair, queues, test) in tests
    for queues in (1, 2, 4):
        assert ("native-native", queues, FOUR_STREAMS) in tests
    assert len(configs(setups)) == 17
    # the default run stays well under 15 minutes
    assert estimate_seconds(setups, runs=3, seconds=5) < 15 * 60


def test_only_keeps_the_anchor_and_the_old_anchor_only_when_asked():
    setups = build_matrix(["native-wggo13"])
    assert {s.pair for s in setups} == {ANCHOR, "native-wggo13"}
    setups = build_matrix(["python-python", OLD_ANCHOR])
    assert {s.pair for s in setups} == {ANCHOR, OLD_ANCHOR, "python-python"}
    assert kinds_in(build_matrix([ANCHOR])) == {"wggo13"}


def test_each_kind_reaches_its_endpoint_as_a_binary_or_an_environment():
    native = Setup("native-native", (A_TO_B,), queues=2)
    assert native.interop_kinds == ("tunplug", "tunplug")
    assert native.tunplug_args == ("--tun-threads", "2")
    assert native.tunplug_env == {"TUNPLUG_DATA_PATH": "native"}
    assert native.wggo_kind is None
    python = Setup("python-python", (A_TO_B,), queues=1)
    assert python.tunplug_env == {"TUNPLUG_DATA_PATH": "python"}
    mixed = Setup("native-wggo13", (A_TO_B,), queues=1)
    assert mixed.interop_kinds == ("tunplug", "wireguard-go")
    assert mixed.wggo_kind == "wggo13"
    for pair in (ANCHOR, OLD_ANCHOR):
        anchor = Setup(pair, (A_TO_B,))
        assert anchor.tunplug_args == () and anchor.tunplug_env == {}
        assert anchor.interop_kinds == ("wireguard-go", "wireguard-go")
    assert Setup(OLD_ANCHOR, ()).wggo_kind == "wggo12"
    assert Setup("native-native", (), queues=4).label == ("tunplug-native<->tunplug-native q4")


# --- medians and ratios ---------------------------------------------------------------------


def test_medians_and_ratios_against_both_anchors_of_the_same_test():
    results = fake_results(native=(550, 450))
    assert find(results, ANCHOR, A_TO_B).mbps == pytest.approx(500)
    native = find(results, "native-native", A_TO_B)
    assert ratio(native, results) == pytest.approx(1.1)
    assert ratio(native, results, OLD_ANCHOR) == pytest.approx(5.5)
    reverse = find(results, "native-native", B_TO_A)
    assert ratio(reverse, results) == pytest.approx(0.9)
    four = find(results, "native-native", FOUR_STREAMS, queues=4)
    assert four.mbps == pytest.approx(720)
    assert find(results, "native-native", FOUR_STREAMS).config.setup.queues == 1


def test_ratio_is_missing_without_anchor_samples():
    results = fake_results()
    find(results, ANCHOR, A_TO_B).samples.clear()
    native = find(results, "native-native", A_TO_B)
    assert ratio(native, results) is None
    assert ratio(native, results, OLD_ANCHOR) == pytest.approx(5.0)


def test_cpu_seconds_per_gb_and_percent():
    one = sample(800, cpu=(2.0, 1.0), seconds=5.0)  # 500 MB received
    assert one.cpu_seconds_per_gb(0) == pytest.approx(4.0)
    assert one.cpu_percent(1) == pytest.approx(20.0)


# --- targets --------------------------------------------------------------------------------


def _targets(results):
    return {target.name: target for target in evaluate_targets(results)}


SINGLE = "tunplug-native<->tunplug-native 1 stream a->b >= 1.0x wggo13<->wggo13"
SINGLE_BACK = "tunplug-native<->tunplug-native 1 stream b->a >= 1.0x wggo13<->wggo13"
MIXED = (
    "tunplug-native<->wggo13 1 stream b->a >= 0.9x wggo13<->wggo13, retransmits no more than its"
)
QUEUES = "tunplug-native<->tunplug-native 4 streams: 2 queues >= 1 queue, no more retransmits"
CPU = "tunplug-native<->tunplug-native 1 stream a->b CPU s/GB <= wggo13<->wggo13's, both sides"
IDLE = "tunplug-native idle RSS <= 45 MB"
PYTHON = "tunplug-python<->tunplug-python not slower than before"


def test_targets_are_met_on_the_thresholds():
    targets = _targets(fake_results(native=(500, 500), mixed=(450, 450)))
    for name in (SINGLE, SINGLE_BACK, MIXED, QUEUES, CPU, IDLE):
        assert targets[name].passed is True, targets[name].line()
    assert targets[SINGLE].line() == f"met      {SINGLE}: 1.00x (500 vs 500 Mbit/s)"
    assert "700 vs 650 Mbit/s, 0 vs 0 retransmits (4 queues: 720 Mbit/s" in targets[QUEUES].detail


def test_targets_not_met_say_so_with_the_figures():
    targets = _targets(
        fake_results(
            native=(499, 600),
            mixed=(450, 449),
            q2=(800, 3),
            native_cpu=(9.0, 1.0),
            idle_mb=(46.0, 40.0),
        )
    )
    assert targets[SINGLE].passed is False and targets[SINGLE_BACK].passed is True
    assert targets[SINGLE].line().startswith("NOT MET  ")
    assert targets[MIXED].passed is False
    assert targets[QUEUES].passed is False  # faster, but more retransmits
    assert targets[CPU].passed is False
    # 9 CPU s over 499 Mbit/s x 5 s = 0.31 GB; the anchor's median 1 s over 0.31 GB
    assert targets[CPU].detail == "a 28.9 vs 3.2, b 3.2 vs 6.4 s/GB"
    assert targets[IDLE].passed is False and "46.0 MB" in targets[IDLE].detail


def test_the_mixed_pair_must_not_retransmit_more_than_the_anchor():
    targets = _targets(fake_results(mixed=(500, 500), mixed_retransmits=10))
    assert targets[MIXED].passed is False
    assert targets[MIXED].detail.endswith("10 vs 0 retransmits")


def test_the_python_path_is_reported_against_both_anchors_and_before():
    target = _targets(fake_results())[PYTHON]
    assert target.informational and target.line().startswith("info     ")
    assert "1 stream a->b 0.36x wggo13, 1.80x wggo12 (before 1.71x wggo12)" in target.detail


def test_targets_are_not_applicable_when_filtered_out():
    results = [r for r in fake_results() if r.config.setup.pair == ANCHOR]
    targets = evaluate_targets(results)
    assert all(t.passed is None and not t.informational for t in targets)
    assert all(t.line().startswith("n/a") for t in targets)


# --- rendering ------------------------------------------------------------------------------


def test_tables_render_both_anchor_columns_as_text_and_markdown():
    results = fake_results()
    results[-1].failures = 1
    results[-1].samples[0].disturbed = True
    rows = result_rows(results)
    assert len(rows) == len(results)
    assert all(len(row) == len(RESULT_HEADER) for row in rows)
    assert rows[0][:9] == ["wggo13<->wggo13", "-", "on/on", "1 stream a->b", "500", "400-600",
                           "1.00x (anchor)", "5.00x", "0"]  # fmt: skip
    assert rows[3][6:9] == ["0.20x", "1.00x (anchor)", "40000"]  # wggo12<->wggo12
    assert rows[6][:8] == ["tunplug-native<->tunplug-native", "1", "off/off", "1 stream a->b",
                           "500", "500-500", "1.00x", "5.00x"]  # fmt: skip
    assert rows[-1][-1] == "3 (1 failed, 1 disturbed)"
    assert rows[-2][-1] == "3"
    text = render_text(results)
    assert f"met      {SINGLE}" in text
    assert "Where the CPU went" in text
    machine = {"CPUs (nproc)": "2", WGGO_FACT_NAMES["wggo13"]: "wireguard-go v0.0.20230223"}
    md = render_markdown(results, build_matrix(), machine, command="sudo x --quick")
    assert md.startswith("# Throughput benchmark")
    assert "`sudo x --quick`" in md
    assert "| wireguard-go wggo13 (the anchor: Debian 13) | wireguard-go v0.0.20230223 |" in md
    assert "| Mbit/s | Range | vs wggo13 | vs wggo12 | Retr |" in md
    assert "| tunplug-native<->wggo13 | 1 | off/on | 1 stream a->b | 450 | 450-450 | 0.90x |" in md
    assert "were against Debian 12's 2022 build" in md  # the README's old ratio
    assert "Seen in this run: wggo13 on, wggo12 off, tunplug-native off" in md
    assert f"- met      {IDLE}" in md
    assert "- tunplug-native<->tunplug-native q2: 4 streams a->b" in md


def test_empty_results_render_dashes():
    results = [Result(config) for config in configs(build_matrix())]
    rows = result_rows(results)
    assert rows[0][2] == "-" and rows[0][4:8] == ["-", "-", "-", "-"]
    assert render_text(results)
    assert tso_note(results) == "No device was read in this run."


def test_tso_is_told_per_side_and_per_kind():
    results = fake_results()
    mixed = find(results, "native-wggo13", A_TO_B)
    mixed.samples[0].tso = (True, True)
    assert result_rows(results)[results.index(mixed)][2] == "mixed/on"
    assert tso_by_kind(results)["tunplug-native"] == "mixed"
    assert tso_by_kind(results)["wggo13"] == "on"


# --- options --------------------------------------------------------------------------------


def test_arguments_defaults_quick_and_overrides():
    defaults = bench.parse_args([])
    assert (defaults.runs, defaults.seconds, defaults.only, defaults.output) == (3, 5.0, (), None)
    assert defaults.wggo_cache is None
    quick = bench.parse_args(["--quick"])
    assert (quick.runs, quick.seconds) == (1, 2.0)
    mixed = bench.parse_args(["--quick", "--runs", "2", "--only", "native-native", "--output",
                              "docs/benchmarks.md", "--wggo-cache", "/tmp/c"])  # fmt: skip
    assert (mixed.runs, mixed.seconds) == (2, 2.0)
    assert mixed.only == ("native-native",)
    assert mixed.output == Path("docs/benchmarks.md")
    assert mixed.wggo_cache == Path("/tmp/c")


@pytest.mark.parametrize(
    "argv", [["--runs", "0"], ["--seconds", "0.5"], ["--only", "nope"], ["--only", "wggo-wggo"]]
)
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(argv)
    assert exit_info.value.code == 2


def test_list_prints_the_matrix_without_root(capsys):
    assert bench.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "tunplug-native<->tunplug-native q4: 4 streams a->b" in out
    assert "17 configurations x 3 runs of 5 s: about 6 min" in out


def test_proc_stat_parsing_survives_odd_process_names(tmp_path, monkeypatch):
    stat = "1234 (a) b (c)) S " + " ".join(str(n) for n in range(4, 53))
    real_path = Path

    def fake_path(path):
        return tmp_path / "stat" if str(path).endswith("/stat") else real_path(path)

    (tmp_path / "stat").write_text(stat)
    monkeypatch.setattr(host, "Path", fake_path)
    assert host.proc_cpu_seconds(1234) == pytest.approx((14 + 15) / host.CLK_TCK)


def test_code_fingerprint_follows_python_files_and_native_modules_but_not_cargo(tmp_path):
    (tmp_path / "core").mkdir()
    module = tmp_path / "core" / "m.py"
    module.write_text("x = 1\n")
    native = tmp_path / "plugins" / "fastpath" / "python" / "_native.so"
    native.parent.mkdir(parents=True)
    native.write_bytes(b"\x7fELF")
    cargo = tmp_path / "plugins" / "fastpath" / "target" / "debug" / "lib.so"
    cargo.parent.mkdir(parents=True)
    before = code_fingerprint(tmp_path)
    assert code_fingerprint(tmp_path) == before
    cargo.write_bytes(b"built")
    assert code_fingerprint(tmp_path) == before
    native.write_bytes(b"\x7fELF rebuilt")
    after_rebuild = code_fingerprint(tmp_path)
    assert after_rebuild != before
    module.write_text("x = 22\n")
    assert code_fingerprint(tmp_path) != after_rebuild


# --- Debian 13's wireguard-go (benchmarks/wggo.py) -----------------------------------------


def _apt_etc(tmp_path, sources_list="", parts=()):
    etc = tmp_path / "etc-apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text(sources_list)
    for name, text in parts:
        (etc / "sources.list.d" / name).write_text(text)
    return etc


DEB822 = """\
Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: https://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
"""


def test_the_mirror_comes_from_a_deb822_sources_file_security_archives_aside(tmp_path):
    etc = _apt_etc(tmp_path, parts=[("debian.sources", DEB822)])
    assert wggo.debian_mirror(wggo.apt_source_files(etc)) == "https://mirror.example/debian"


def test_the_mirror_comes_from_one_line_sources_with_options_in_apt_order(tmp_path):
    etc = _apt_etc(
        tmp_path,
        "# deb http://commented.example/debian bookworm main\n"
        "deb https://packages.example/apt stable main\n",
        parts=[
            ("b.list", "deb http://later.example/debian bookworm main\n"),
            ("a.list", "deb [arch=amd64 signed-by=/k] http://first.example/debian bookworm main"),
            ("c.list.disabled", "deb http://disabled.example/debian bookworm main\n"),
        ],
    )  # fmt: skip
    files = wggo.apt_source_files(etc)
    assert [f.name for f in files] == ["sources.list", "a.list", "b.list"]
    assert wggo.debian_mirror(files) == "http://first.example/debian"


def test_disabled_paragraphs_and_other_archives_give_no_mirror(tmp_path):
    etc = _apt_etc(
        tmp_path,
        "deb http://mirror.example/debian-security bookworm-security main\n",
        parts=[
            ("off.sources", "Types: deb\nURIs: http://off.example/debian\nEnabled: no\n"),
            ("other.sources", "Types: deb\nURIs: https://deb.nodesource.example/node_20.x\n"),
        ],
    )
    assert wggo.debian_mirror(wggo.apt_source_files(etc)) is None


def test_fetch_without_a_mirror_fails_in_one_line_before_running_apt(tmp_path, monkeypatch):
    def no_subprocess(*args, **kwargs):
        raise AssertionError("apt must not run")

    monkeypatch.setattr(wggo.subprocess, "run", no_subprocess)
    with pytest.raises(wggo.FetchError) as error:
        wggo.fetch(tmp_path / "cache", etc=_apt_etc(tmp_path), log=lambda line: None)
    assert "no Debian mirror" in str(error.value) and "\n" not in str(error.value)


def test_a_cached_binary_is_used_without_apt(tmp_path):
    cache = tmp_path / "cache"
    binary = cache / "root" / "usr" / "bin" / "wireguard-go"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\necho 'wireguard-go v0.0.20230223'\n")
    binary.chmod(0o755)
    found = wggo.fetch(cache, etc=_apt_etc(tmp_path), log=lambda line: None)
    assert found.binary == binary
    assert found.version == "wireguard-go v0.0.20230223"
    assert found.package_version == "unknown"  # no .deb kept in this cache


def test_apt_runs_on_the_private_list_lists_and_archives_only(tmp_path):
    mirror = "http://m.example/debian"
    assert wggo.sources_list(mirror) == f"deb {mirror} trixie main\n"
    command = wggo.apt_command(tmp_path, "update")
    options = dict(arg.split("=", 1) for prev, arg in itertools.pairwise(command) if prev == "-o")
    assert options == {
        "Dir::Etc::SourceList": str(tmp_path / "sources.list"),
        "Dir::Etc::SourceParts": "/dev/null",
        "Dir::State::Lists": str(tmp_path / "lists"),
        "Dir::Cache": str(tmp_path / "apt"),
    }
    assert command[0] == "apt-get" and command[-1] == "update"


def test_the_cache_directory_follows_xdg(tmp_path):
    xdg = wggo.default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)})
    assert xdg == tmp_path / "tunplug" / "wireguard-go-trixie"
    assert wggo.default_cache_dir({}).parts[-3:] == (".cache", "tunplug", "wireguard-go-trixie")
