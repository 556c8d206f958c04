"""Throughput of tunplug against wireguard-go, all measured in one run on this machine.

Who runs it: anyone with root, after ``scripts/dev setup``::

    sudo .venv/bin/python benchmarks/throughput.py                              # print the table
    sudo .venv/bin/python benchmarks/throughput.py --output docs/benchmarks.md  # and write it

Each configuration is iperf3 through a WireGuard tunnel between two throw-away network
namespaces (``tunplug.testing.interop``): wireguard-go <-> wireguard-go (the anchor), tunplug <->
tunplug and tunplug <-> wireguard-go. Runs are interleaved (run 1 of every configuration, then
run 2, ...), so machine noise falls on all of them alike, and every ratio is against the anchor
measured in the same run. Traffic goes only between the namespaces' own addresses; the
namespaces, devices and processes are removed on any exit (also Ctrl-C and SIGTERM).

The pure parts (matrix, medians, ratios, targets, rendering) are tested without root in
``tests/benchmarks/test_throughput_script.py``; nothing here runs from the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import hashlib
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import tunplug
from tunplug.testing.interop import Endpoint, Kind, Topology, topology

#: The source tree of the tunplug that is measured (the one ``import tunplug`` finds).
CODE_ROOT = Path(tunplug.__file__).resolve().parents[2]
LOCK_PATH = Path(tempfile.gettempdir()) / "tunplug-benchmark.lock"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1024 * 1024
#: How long a test waits for other namespaces (someone's tests) to go before running anyway,
#: and how long all tests of a benchmark wait together at most.
QUIET_WAIT_SECONDS = 30.0
QUIET_WAIT_TOTAL_SECONDS = 300.0

#: Pair names for ``--only``, in table order; the first is the anchor.
PAIRS: dict[str, tuple[Kind, Kind]] = {
    "wggo-wggo": ("wireguard-go", "wireguard-go"),
    "tunplug-tunplug": ("tunplug", "tunplug"),
    "tunplug-wggo": ("tunplug", "wireguard-go"),
}
ANCHOR = "wggo-wggo"
PAIR_LABELS = {
    "wggo-wggo": "wg-go<->wg-go",
    "tunplug-tunplug": "tunplug<->tunplug",
    "tunplug-wggo": "tunplug<->wg-go",
}

# Targets from the issue.
TARGET_SINGLE_STREAM_RATIO = 2.0
TARGET_MIXED_RATIO = 1.0
TARGET_IDLE_RSS_MB = 45.0


@dataclass(frozen=True, slots=True)
class Test:
    """One iperf3 invocation: side a is always the iperf3 client."""

    name: str
    reverse: bool = False
    streams: int = 1


A_TO_B = Test("1 stream a->b")
B_TO_A = Test("1 stream b->a", reverse=True)
FOUR_STREAMS = Test("4 streams a->b", streams=4)


@dataclass(frozen=True, slots=True)
class Setup:
    """One topology (pair and tunplug settings) and the tests run through it."""

    pair: str
    tests: tuple[Test, ...]
    queues: int | None = None  # None: no tunplug endpoint
    offloads: bool | None = None

    @property
    def kinds(self) -> tuple[Kind, Kind]:
        return PAIRS[self.pair]

    @property
    def tunplug_env(self) -> dict[str, str]:
        return {} if self.offloads is None else {"TUNPLUG_OFFLOADS": str(self.offloads).lower()}

    @property
    def tunplug_args(self) -> tuple[str, ...]:
        return () if self.queues is None else ("--tun-threads", str(self.queues))

    @property
    def label(self) -> str:
        if self.queues is None:
            return PAIR_LABELS[self.pair]
        offloads = "on" if self.offloads else "off"
        return f"{PAIR_LABELS[self.pair]} q{self.queues} offloads {offloads}"


@dataclass(frozen=True, slots=True)
class Config:
    """One row of the table: a setup and one of its tests."""

    setup: Setup
    test: Test

    @property
    def label(self) -> str:
        return f"{self.setup.label}, {self.test.name}"


def build_matrix(only: Sequence[str] = ()) -> list[Setup]:
    """The default matrix; ``only`` keeps those pairs (the anchor always stays: ratios need it)."""
    tunplug = ("tunplug-tunplug", "tunplug-wggo")
    setups = [Setup(ANCHOR, (A_TO_B, B_TO_A, FOUR_STREAMS))]
    for pair in tunplug:
        setups.append(Setup(pair, (A_TO_B, B_TO_A, FOUR_STREAMS), queues=1, offloads=True))
        if pair == "tunplug-tunplug":
            setups.append(Setup(pair, (A_TO_B, B_TO_A), queues=1, offloads=False))
        setups.append(Setup(pair, (FOUR_STREAMS,), queues=2, offloads=True))
    wanted = {ANCHOR, *only} if only else set(PAIRS)
    return [setup for setup in setups if setup.pair in wanted]


def configs(setups: Sequence[Setup]) -> list[Config]:
    return [Config(setup, test) for setup in setups for test in setup.tests]


def estimate_seconds(setups: Sequence[Setup], runs: int, seconds: float) -> float:
    """Rough wall time: iperf3 plus its start-up per test, namespaces and handshake per setup."""
    per_run = sum(2.0 + len(s.tests) * (seconds + 1.3) for s in setups)
    return runs * per_run


# --- measurements -------------------------------------------------------------------------


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
        values = [value(sample) for sample in self.samples]
        return statistics.median(values) if values else None

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


def ratio(result: Result, results: Sequence[Result]) -> float | None:
    """Median throughput over the anchor's median for the same test (None: either missing)."""
    anchor = find(results, ANCHOR, result.config.test)
    mine, theirs = result.mbps, anchor.mbps if anchor else None
    return mine / theirs if mine is not None and theirs else None


def find(
    results: Sequence[Result],
    pair: str,
    test: Test,
    queues: int | None = None,
    offloads: bool | None = None,
) -> Result | None:
    """The result for a pair and test; for tunplug pairs by default with 1 queue, offloads on."""
    if pair != ANCHOR:
        queues = 1 if queues is None else queues
        offloads = True if offloads is None else offloads
    for result in results:
        setup = result.config.setup
        if (setup.pair, setup.queues, setup.offloads) == (pair, queues, offloads) and (
            result.config.test == test
        ):
            return result
    return None


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15


def proc_memory(pid: int, key: str) -> int:
    """``VmRSS``/``VmHWM`` of a process in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


# Reads the device's TCP segmentation offload flag (ETHTOOL_GTSO through SIOCETHTOOL): on for a
# TUN device only when its owner turned offloads on (TUNSETOFFLOAD), so it shows from outside
# whether an endpoint's offload setting took effect.
TSO_PROBE = """\
import ctypes, fcntl, socket, struct, sys
value = ctypes.create_string_buffer(struct.pack("II", 0x1E, 0))
request = struct.pack("16sP", sys.argv[1].encode(), ctypes.addressof(value)).ljust(40, b"\\0")
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    fcntl.ioctl(sock, 0x8946, request)
print(struct.unpack("II", value.raw[:8])[1])
"""


def device_tso(endpoint: Endpoint) -> bool | None:
    """Whether the endpoint's tunnel device has TCP segmentation offload on (None: unknown)."""
    result = endpoint.ns.run(sys.executable, "-c", TSO_PROBE, endpoint.ifname, check=False)
    word = result.stdout.strip()
    return word != "0" if result.returncode == 0 and word.isdigit() else None


def code_fingerprint(root: Path = CODE_ROOT) -> str:
    """Changes whenever a Python file of the measured tree changes (edits during a run)."""
    entries = []
    for folder in ("core", "plugins"):
        for path in sorted((root / folder).rglob("*.py")):
            with contextlib.suppress(OSError):
                stat = path.stat()
                entries.append(f"{path}:{stat.st_mtime_ns}:{stat.st_size}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def machine_busy_seconds() -> float:
    """CPU seconds spent on anything but idle and iowait, summed over all CPUs."""
    with open("/proc/stat") as stat:
        fields = [int(word) for word in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def _pid(topo: Topology, side: int) -> int:
    endpoint = topo.a if side == 0 else topo.b
    process = endpoint.process
    if process is None or process.poll() is not None:
        raise RuntimeError(f"the {endpoint.kind} process on side {'ab'[side]} is not running")
    return int(process.pid)


def measure(
    topo: Topology,
    test: Test,
    seconds: float,
    idle_rss: tuple[int, int],
    tso: tuple[bool | None, bool | None] = (None, None),
) -> Sample:
    pids = (_pid(topo, 0), _pid(topo, 1))
    cpu_before = [proc_cpu_seconds(pid) for pid in pids]
    busy_before, wall_before = machine_busy_seconds(), time.monotonic()
    report = topo.iperf3(client="a", seconds=seconds, reverse=test.reverse, streams=test.streams)
    busy, wall = machine_busy_seconds() - busy_before, time.monotonic() - wall_before
    cpu = tuple(
        proc_cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before, strict=True)
    )
    end: dict[str, Any] = report["end"]
    received = end["sum_received"]
    iperf_cpu = end.get("cpu_utilization_percent", {})
    return Sample(
        bits_per_second=float(received["bits_per_second"]),
        retransmits=int(end["sum_sent"].get("retransmits", 0)),
        bytes=int(received["bytes"]),
        seconds=float(received["seconds"]),
        cpu_seconds=(cpu[0], cpu[1]),
        peak_rss=(proc_memory(pids[0], "VmHWM"), proc_memory(pids[1], "VmHWM")),
        idle_rss=idle_rss,
        tso=tso,
        iperf_cpu_percent=(
            float(iperf_cpu.get("host_total", 0.0)),
            float(iperf_cpu.get("remote_total", 0.0)),
        ),
        machine_busy=busy / (len(os.sched_getaffinity(0)) * wall),
    )


class Terminated(BaseException):
    """SIGTERM/SIGHUP arrived; raised so that every context manager cleans up."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # Further signals would interrupt the clean-up that this exception starts.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


@contextlib.contextmanager
def exclusive_lock() -> Iterator[None]:
    """Refuse to run while another benchmark does: on 2 cores they would measure each other."""
    with LOCK_PATH.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another benchmark holds {LOCK_PATH}; run one at a time") from None
        yield


def run_benchmark(
    setups: Sequence[Setup],
    runs: int,
    seconds: float,
    log: Callable[..., None] = print,
) -> tuple[list[Result], dict[str, str]]:
    """Run the matrix ``runs`` times, interleaved; returns the results and facts on the run."""
    results = {config: Result(config) for config in configs(setups)}
    facts: dict[str, str] = {}
    namespaces: list[str] = []
    total, done, disturbed, waited = len(results) * runs, 0, 0, 0.0
    for run in range(1, runs + 1):
        for setup in setups:
            started = 0
            try:
                with topology(
                    *setup.kinds, tunplug_env=setup.tunplug_env, tunplug_args=setup.tunplug_args
                ) as topo:
                    namespaces += [topo.a.ns.name, topo.b.ns.name]
                    topo.connect(initiator="a")
                    if "1 received" not in topo.ping("a", topo.b.tunnel_v4, count=1).stdout:
                        raise RuntimeError("no handshake: ping through the tunnel failed")
                    idle = (
                        proc_memory(_pid(topo, 0), "VmRSS"),
                        proc_memory(_pid(topo, 1), "VmRSS"),
                    )
                    tso = (device_tso(topo.a), device_tso(topo.b))
                    for test in setup.tests:
                        done += 1
                        started += 1
                        config = Config(setup, test)
                        log(f"[{done:>3}/{total}] run {run}/{runs}  {config.label:<52}", end="")
                        budget = min(QUIET_WAIT_SECONDS, QUIET_WAIT_TOTAL_SECONDS - waited)
                        waited -= time.monotonic()
                        quiet = wait_for_quiet(set(namespaces), log, max(budget, 0.0))
                        waited += time.monotonic()
                        sample = measure(topo, test, seconds, idle, tso)
                        sample.disturbed = not quiet or bool(_foreign_namespaces(set(namespaces)))
                        disturbed += sample.disturbed
                        results[config].samples.append(sample)
                        facts.setdefault("tcp_congestion", _congestion(topo))
                        log(f" {format_sample(sample)}{' (disturbed)' if sample.disturbed else ''}")
            except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                left = [t for t in setup.tests if len(results[Config(setup, t)].samples) < run]
                for test in left:
                    results[Config(setup, test)].failures += 1
                done += len(setup.tests) - started
                log(f"\n  FAILED {setup.label} run {run}: {error}".rstrip()[:3000])
    leftover = set(namespaces) & set(_netns_names())
    if leftover:
        log(f"WARNING: namespaces left behind: {', '.join(sorted(leftover))}")
    facts["disturbed"] = (
        f"{disturbed} of {total} tests ran while other namespaces existed "
        f"(waited {waited:.0f} s for them to go)"
    )
    return list(results.values()), facts


def _foreign_namespaces(ours: set[str]) -> set[str]:
    return set(_netns_names()) - ours


def wait_for_quiet(
    ours: set[str], log: Callable[..., None], timeout: float = QUIET_WAIT_SECONDS
) -> bool:
    """Wait while other namespaces exist (someone's tests, competing for the CPUs); True: none."""
    deadline = time.monotonic() + timeout
    foreign = _foreign_namespaces(ours)
    if foreign:
        log(f" waiting for other namespaces ({', '.join(sorted(foreign))})...", end="")
    while foreign and time.monotonic() < deadline:
        time.sleep(0.5)
        foreign = _foreign_namespaces(ours)
    return not foreign


def _congestion(topo: Topology) -> str:
    result = topo.a.ns.run("sysctl", "-n", "net.ipv4.tcp_congestion_control", check=False)
    return result.stdout.strip() or "unknown"


def _netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def format_sample(sample: Sample) -> str:
    return (
        f"{sample.bits_per_second / 1e6:7.0f} Mbit/s  retr {sample.retransmits:>6}  "
        f"CPU a {sample.cpu_seconds_per_gb(0):5.1f} b {sample.cpu_seconds_per_gb(1):5.1f} s/GB  "
        f"machine {100 * sample.machine_busy:3.0f}% busy"
    )


def machine_facts() -> dict[str, str]:
    """What the figures depend on: CPUs, kernel, Python, wireguard-go, iperf3, date."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "CPUs (nproc)": str(len(os.sched_getaffinity(0))),
        "CPU model": model,
        "Kernel": platform.release(),
        "Python": platform.python_version(),
        "wireguard-go": _first_line(["wireguard-go", "--version"]),
        "iperf3": _first_line(["iperf3", "--version"]),
        "tunplug commit": _code_version(),
        "Date (UTC)": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
    }


def _code_version() -> str:
    git = ["git", "-C", str(CODE_ROOT)]
    commit = _first_line([*git, "rev-parse", "--short", "HEAD"])
    if commit == "unknown" or commit.startswith("fatal"):
        return f"unknown ({CODE_ROOT})"
    status = subprocess.run(
        [*git, "status", "--porcelain", "--", "core", "plugins"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    changed = status.returncode != 0 or bool(status.stdout.strip())
    return commit + (" with uncommitted changes in core/ or plugins/" if changed else "")


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


# --- targets and rendering ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One goal from the issue; ``passed`` is None when its configurations were not measured."""

    name: str
    passed: bool | None
    detail: str

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[self.passed]
        return f"{verdict}  {self.name}: {self.detail}"


def evaluate_targets(results: Sequence[Result]) -> list[Target]:
    targets: list[Target] = []
    for pair, goal, tests in (
        ("tunplug-tunplug", TARGET_SINGLE_STREAM_RATIO, (A_TO_B, B_TO_A)),
        ("tunplug-wggo", TARGET_MIXED_RATIO, (A_TO_B, B_TO_A, FOUR_STREAMS)),
    ):
        for test in tests:
            name = f"{PAIR_LABELS[pair]} {test.name} >= {goal:.1f}x wg-go<->wg-go"
            result = find(results, pair, test)
            value = ratio(result, results) if result else None
            if value is None:
                targets.append(Target(name, None, "not measured"))
            else:
                targets.append(Target(name, value >= goal, f"{value:.2f}x"))
    for pair in ("tunplug-tunplug", "tunplug-wggo"):
        name = f"{PAIR_LABELS[pair]} 4 streams: 2 queues >= 1 queue, no more retransmits"
        one = find(results, pair, FOUR_STREAMS, queues=1)
        two = find(results, pair, FOUR_STREAMS, queues=2)
        if not (one and two and one.mbps is not None and two.mbps is not None):
            targets.append(Target(name, None, "not measured"))
            continue
        retr_one, retr_two = one.retransmits or 0.0, two.retransmits or 0.0
        passed = two.mbps >= one.mbps and retr_two <= retr_one
        detail = (
            f"{two.mbps:.0f} vs {one.mbps:.0f} Mbit/s, {retr_two:.0f} vs {retr_one:.0f} retransmits"
        )
        targets.append(Target(name, passed, detail))
    idle = [
        (value, result.config.setup.label, "ab"[side])
        for result in results
        for side in (0, 1)
        if result.config.setup.kinds[side] == "tunplug"
        and (value := result.idle_rss_mb(side)) is not None
    ]
    name = f"tunplug idle RSS <= {TARGET_IDLE_RSS_MB:.0f} MB"
    if idle:
        worst = max(idle)
        passed = worst[0] <= TARGET_IDLE_RSS_MB
        targets.append(
            Target(name, passed, f"at most {worst[0]:.1f} MB ({worst[1]}, side {worst[2]})")
        )
    else:
        targets.append(Target(name, None, "not measured"))
    return targets


RESULT_HEADER = [
    "Pair", "Queues", "Offloads", "TSO a/b", "Test", "Mbit/s", "Range", "vs wg-go", "Retr",
    "CPU s/GB a", "CPU s/GB b", "Peak RSS MB a/b", "Idle RSS MB a/b", "Runs",
]  # fmt: skip
CPU_HEADER = [
    "Configuration", "Endpoint a", "Endpoint b", "iperf3 client", "iperf3 server", "Machine busy",
]  # fmt: skip


def _num(value: float | None, spec: str = ".0f", suffix: str = "") -> str:
    return "-" if value is None or value != value else f"{value:{spec}}{suffix}"


def _pair_of(values: tuple[float | None, float | None], spec: str = ".0f") -> str:
    return "/".join(_num(value, spec) for value in values)


def result_rows(results: Sequence[Result]) -> list[list[str]]:
    """The main table, one row per configuration, in matrix order."""
    rows = []
    for result in results:
        setup, test = result.config.setup, result.config.test
        mbps = [s.bits_per_second / 1e6 for s in result.samples]
        value = ratio(result, results)
        if setup.pair == ANCHOR:
            vs = "1.00x (anchor)" if result.samples else "-"
        else:
            vs = _num(value, ".2f", "x")
        notes = [f"{result.failures} failed"] if result.failures else []
        if disturbed := sum(sample.disturbed for sample in result.samples):
            notes.append(f"{disturbed} disturbed")
        runs = str(len(result.samples)) + (f" ({', '.join(notes)})" if notes else "")
        rows.append(
            [
                PAIR_LABELS[setup.pair],
                "-" if setup.queues is None else str(setup.queues),
                "-" if setup.offloads is None else ("on" if setup.offloads else "off"),
                _tso_cell(result),
                test.name,
                _num(result.mbps),
                f"{min(mbps):.0f}-{max(mbps):.0f}" if mbps else "-",
                vs,
                _num(result.retransmits),
                _num(result.median(lambda s: s.cpu_seconds_per_gb(0)), ".1f"),
                _num(result.median(lambda s: s.cpu_seconds_per_gb(1)), ".1f"),
                _pair_of((result.peak_rss_mb(0), result.peak_rss_mb(1))),
                _pair_of((result.idle_rss_mb(0), result.idle_rss_mb(1)), ".1f"),
                runs,
            ]
        )
    return rows


def _tso_cell(result: Result) -> str:
    def word(side: int) -> str:
        seen = {sample.tso[side] for sample in result.samples}
        if seen == {True}:
            return "on"
        if seen == {False}:
            return "off"
        return "mixed" if len(seen - {None}) > 1 else "?"

    return f"{word(0)}/{word(1)}" if result.samples else "-"


def offload_note(results: Sequence[Result]) -> str:
    """What the offload setting did in this run, from the devices' TSO flags."""
    asked = [
        sample.tso[side]
        for result in results
        if result.config.setup.offloads
        for sample in result.samples
        for side in (0, 1)
        if result.config.setup.kinds[side] == "tunplug"
    ]
    if asked and all(tso is False for tso in asked):
        return (
            "With `TUNPLUG_OFFLOADS=true` the tunplug devices had TSO off, as designed: tunplug's "
            "offloads are UDP GSO/GRO on the socket and TCP coalescing (GRO) on TUN writes "
            "(`IFF_VNET_HDR`), which need no TSO on the device; splitting TSO super-packets on "
            "reads is built but off (measured slower in Python). The *on* and *off* rows "
            "therefore differ in those offloads only."
        )
    if asked and all(tso is True for tso in asked):
        return (
            "With `TUNPLUG_OFFLOADS=true` every tunplug device had TSO on, so the offloads took "
            "effect; the *off* rows measure the plain path."
        )
    return "Whether offloads took effect varied or is unknown: see the *TSO a/b* column."


def _indented(text: str) -> str:
    return textwrap.fill(text, width=98, initial_indent="  ", subsequent_indent="  ")


def cpu_rows(results: Sequence[Result]) -> list[list[str]]:
    """Where the CPU went: medians, in percent of one CPU (machine busy: of all of them)."""
    rows = []
    for result in results:
        rows.append(
            [
                result.config.label,
                _num(result.median(lambda s: s.cpu_percent(0)), ".0f", "%"),
                _num(result.median(lambda s: s.cpu_percent(1)), ".0f", "%"),
                _num(result.median(lambda s: s.iperf_cpu_percent[0]), ".0f", "%"),
                _num(result.median(lambda s: s.iperf_cpu_percent[1]), ".0f", "%"),
                _num(result.median(lambda s: 100 * s.machine_busy), ".0f", "%"),
            ]
        )
    return rows


def render_text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


def render_markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(row) for row in rows)])


def render_text(results: Sequence[Result]) -> str:
    return "\n\n".join(
        [
            render_text_table(RESULT_HEADER, result_rows(results)),
            "Where the CPU went (median % of one CPU; machine busy: of all CPUs)",
            render_text_table(CPU_HEADER, cpu_rows(results)),
            "Targets",
            "\n".join(target.line() for target in evaluate_targets(results)),
        ]
    )


def describe_matrix(setups: Sequence[Setup]) -> list[str]:
    return [f"{setup.label}: {', '.join(test.name for test in setup.tests)}" for setup in setups]


NOTES = """\
- **Sides.** Side a is always the iperf3 client and the handshake initiator; in
  tunplug<->wg-go side a is tunplug. *a->b*: a sends (so in tunplug<->wg-go tunplug encrypts);
  *b->a* is iperf3 `-R` (b sends, tunplug decrypts).
- **Mbit/s** is iperf3's received throughput summed over the streams, the median of the runs;
  *Range* is the lowest and highest run.
- **vs wg-go** is that median over the median of wireguard-go<->wireguard-go for the same test,
  measured in the same run (configurations interleaved: run 1 of all, then run 2, ...). Above
  1.00x tunplug is faster. Compare ratios, never absolute figures across machines.
- **Retr** is the sender's TCP retransmits over the whole test (iperf3
  `end.sum_sent.retransmits`), median: packets dropped inside the tunnel (full queues, reordering)
  show up here.
- **CPU s/GB** is the CPU time (user + system, all threads, from `/proc/<pid>/stat`) of each
  endpoint process during the test per GB (10^9 bytes) received. Lower is better; unlike Mbit/s it
  says little about how busy the rest of the machine was.
- **Peak RSS** is `VmHWM` of each endpoint process read right after the test (its peak since
  start), the highest over the runs. **Idle RSS** is `VmRSS` right after the tunnel came up and the
  handshake completed (one ping), before any iperf3 traffic, median over the runs.
- **Runs** counts the runs that gave a result. *failed*: the tunnel or iperf3 failed in that
  many runs. *disturbed*: in that many runs other network namespaces (someone else's tests)
  existed before or after the test, so it probably shared the CPUs with them; before each test
  the benchmark waits up to 30 s for such namespaces to go (5 minutes in all).
- **Queues** is `--tun-threads` (TUN queues, one reader and one writer thread each) of every
  tunplug endpoint; wireguard-go has its own fixed design (`-`).
- **Offloads** is `TUNPLUG_OFFLOADS=true|false` for every tunplug endpoint. **TSO a/b** is
  whether each tunnel device had TCP segmentation offload on, read from the device (ethtool's
  `ETHTOOL_GTSO`), i.e. whether the TUN offloads really took effect; UDP GSO/GRO on the sockets is
  not visible from outside. The anchor, Debian's wireguard-go 0.0.20220316, predates
  wireguard-go's own TUN offloads (2023) and runs without them (TSO off).
{offloads}
- **One machine.** Both endpoints, iperf3's client and server and the kernel's veth and TUN work
  share the CPUs listed above, so every configuration is CPU-bound: the figures measure work per
  byte, not a link. *Where the CPU went* shows who used it (percent of one CPU; an endpoint with
  several threads can pass 100%; *Machine busy* is of all CPUs together).
"""


def render_markdown(
    results: Sequence[Result],
    setups: Sequence[Setup],
    machine: dict[str, str],
    *,
    command: str,
) -> str:
    facts = "\n".join(f"| {key} | {value} |" for key, value in machine.items())
    matrix = "\n".join(f"- {line}" for line in describe_matrix(setups))
    targets = "\n".join(f"- {target.line()}" for target in evaluate_targets(results))
    return f"""\
# Throughput benchmark

Generated by `{command}` (`benchmarks/throughput.py`, see `benchmarks/README.md`); regenerate it
rather than editing it. iperf3 over TCP through a WireGuard tunnel between two network namespaces
joined by veth, on one machine.

| Machine and run | |
| --- | --- |
{facts}

## Results

{render_markdown_table(RESULT_HEADER, result_rows(results))}

## Targets

{targets}

## Where the CPU went

Median percent of one CPU during the test; *Machine busy* is of all CPUs together.

{render_markdown_table(CPU_HEADER, cpu_rows(results))}

## How to read it

{NOTES.format(offloads=_indented(offload_note(results)))}
## Matrix

Each line is one pair of namespaces, set up afresh in every run, and the iperf3 tests run
through it one after the other.

{matrix}
"""


# --- command line -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/throughput.py",
        description="iperf3 through tunplug and wireguard-go tunnels between two throw-away "
        "network namespaces; prints a table with ratios against wireguard-go<->wireguard-go "
        "measured in the same run. Needs root, wireguard-go, wireguard-tools and iperf3 "
        "(scripts/dev setup installs them).",
    )
    parser.add_argument("--runs", type=int, help="runs per configuration, interleaved (default 3)")
    parser.add_argument("--seconds", type=float, help="iperf3 duration per test (default 5)")
    parser.add_argument(
        "--quick", action="store_true", help="1 run of 2 s each (unless --runs/--seconds say else)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(PAIRS),
        default=[],
        metavar="PAIR",
        help=f"measure only this pair (repeatable; one of {', '.join(PAIRS)}); "
        f"{ANCHOR} is always measured since every ratio is against it",
    )
    parser.add_argument(
        "--output", type=Path, metavar="FILE", help="also write the report as Markdown, e.g. "
        "docs/benchmarks.md"
    )  # fmt: skip
    parser.add_argument(
        "--list", action="store_true", help="print the matrix and the expected duration, then exit"
    )
    return parser


@dataclass(frozen=True, slots=True)
class Options:
    runs: int
    seconds: float
    only: tuple[str, ...]
    output: Path | None
    list_only: bool


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = build_parser()
    args = parser.parse_args(argv)
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    seconds = args.seconds if args.seconds is not None else (2.0 if args.quick else 5.0)
    if runs < 1:
        parser.error("--runs must be at least 1")
    if seconds < 1:
        parser.error("--seconds must be at least 1")
    return Options(runs, seconds, tuple(args.only), args.output, args.list)


def _preflight() -> str | None:
    if sys.platform != "linux":
        return "needs Linux (network namespaces)"
    if os.geteuid() != 0:
        return "needs root: sudo .venv/bin/python benchmarks/throughput.py"
    missing = [tool for tool in ("ip", "wireguard-go", "wg", "iperf3") if not shutil.which(tool)]
    if missing:
        return f"missing {', '.join(missing)} (scripts/dev setup installs them)"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    setups = build_matrix(options.only)
    minutes = estimate_seconds(setups, options.runs, options.seconds) / 60
    if options.list_only:
        print("\n".join(describe_matrix(setups)))
        print(f"{len(configs(setups))} configurations x {options.runs} runs of "
              f"{options.seconds:g} s: about {minutes:.0f} min")  # fmt: skip
        return 0
    problem = _preflight()
    if problem:
        print(f"benchmarks/throughput.py: {problem}", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    command = shlex.join(
        [
            "sudo",
            ".venv/bin/python",
            "benchmarks/throughput.py",
            *(sys.argv[1:] if argv is None else argv),
        ]
    )
    print(f"{len(configs(setups))} configurations x {options.runs} runs of "
          f"{options.seconds:g} s, interleaved: about {minutes:.0f} min", flush=True)  # fmt: skip
    started = time.monotonic()
    try:
        with exclusive_lock():
            machine = machine_facts()
            code_before = code_fingerprint()
            results, facts = run_benchmark(
                setups, options.runs, options.seconds, partial(print, flush=True)
            )
    except KeyboardInterrupt:
        print("\ninterrupted: namespaces and processes removed", file=sys.stderr)
        return 130
    except Terminated as stop:
        print(f"\n{stop}: namespaces and processes removed", file=sys.stderr)
        return 128 + stop.signum
    elapsed = time.monotonic() - started
    if code_fingerprint() != code_before:
        machine["tunplug commit"] += (
            " - WARNING: the code changed during the run, the figures mix versions"
        )
        print(f"WARNING: Python files under {CODE_ROOT} changed during the run", file=sys.stderr)
    machine["TCP congestion control"] = facts.get("tcp_congestion", "unknown")
    machine["Other namespace tests"] = facts["disturbed"]
    machine["Runs"] = (
        f"{options.runs} x {options.seconds:g} s per configuration, interleaved; "
        f"wall time {elapsed / 60:.1f} min"
    )
    print()
    print(render_text(results))
    print(f"\nwall time {elapsed / 60:.1f} min")
    if options.output:
        options.output.parent.mkdir(parents=True, exist_ok=True)
        options.output.write_text(render_markdown(results, setups, machine, command=command))
        print(f"wrote {options.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
