"""Throughput of tunplug against wireguard-go, all measured in one run on this machine.

Who runs it: anyone with root, after ``scripts/dev setup``::

    sudo .venv/bin/python benchmarks/throughput.py                              # print the table
    sudo .venv/bin/python benchmarks/throughput.py --output docs/benchmarks.md  # and write it

Each configuration is iperf3 through a WireGuard tunnel between two throw-away network
namespaces (``tunplug.testing.interop``). The endpoints:

- ``wggo13``: Debian 13's wireguard-go 0.0.20231211 (TUN offloads, UDP GSO/GRO), fetched into a
  cache by ``benchmarks/wggo.py`` without touching the system's apt sources: **the anchor**;
- ``wggo12``: Debian 12's wireguard-go 0.0.20220316 (``/usr/bin/wireguard-go``), the anchor of
  the figures before 2026-12, kept as a second column;
- ``tunplug-native`` and ``tunplug-python``: tunplug with ``TUNPLUG_DATA_PATH=native|python``.

Runs are interleaved (run 1 of every configuration, then run 2, ...), so machine noise falls on
all of them alike, and every ratio is against the anchors measured in the same run. Traffic
goes only between the namespaces' own addresses; the namespaces, devices and processes are
removed on any exit (also Ctrl-C and SIGTERM).

The pure parts (matrix, medians, ratios, targets, rendering) are tested without root in
``tests/benchmarks/test_throughput_script.py``; nothing here runs from the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import hashlib
import importlib.metadata
import importlib.util
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, Literal, TypeVar

from wggo import FetchError, WireguardGo, default_cache_dir, fetch, system_wireguard_go

import tunplug
from tunplug.testing.interop import Endpoint, Kind, Topology, topology

T = TypeVar("T")

#: The source tree of the tunplug that is measured (the one ``import tunplug`` finds).
CODE_ROOT = Path(tunplug.__file__).resolve().parents[2]
LOCK_PATH = Path(tempfile.gettempdir()) / "tunplug-benchmark.lock"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1024 * 1024
#: How long a test waits for other namespaces (someone's tests) to go before running anyway,
#: and how long all tests of a benchmark wait together at most.
QUIET_WAIT_SECONDS = 30.0
QUIET_WAIT_TOTAL_SECONDS = 300.0

#: What runs on one side of a tunnel.
EndpointKind = Literal["wggo13", "wggo12", "tunplug-native", "tunplug-python"]
WGGO_KINDS: tuple[EndpointKind, ...] = ("wggo13", "wggo12")
INTEROP_KINDS: dict[EndpointKind, Kind] = {
    "wggo13": "wireguard-go",
    "wggo12": "wireguard-go",
    "tunplug-native": "tunplug",
    "tunplug-python": "tunplug",
}
#: The environment that makes a tunplug endpoint one kind or the other. An explicit data path
#: fails at start-up when it cannot run, instead of quietly falling back as ``auto`` would.
TUNPLUG_KIND_ENV: dict[EndpointKind, dict[str, str]] = {
    "tunplug-native": {"TUNPLUG_DATA_PATH": "native"},
    "tunplug-python": {"TUNPLUG_DATA_PATH": "python"},
}

#: Pair names for ``--only``, in table order; the first is the anchor, the second the old one.
PAIRS: dict[str, tuple[EndpointKind, EndpointKind]] = {
    "wggo13-wggo13": ("wggo13", "wggo13"),
    "wggo12-wggo12": ("wggo12", "wggo12"),
    "native-native": ("tunplug-native", "tunplug-native"),
    "native-wggo13": ("tunplug-native", "wggo13"),
    "python-python": ("tunplug-python", "tunplug-python"),
}
ANCHOR = "wggo13-wggo13"
OLD_ANCHOR = "wggo12-wggo12"
PAIR_LABELS = {pair: f"{a}<->{b}" for pair, (a, b) in PAIRS.items()}

# Targets of the native core.
TARGET_NATIVE_RATIO = 1.0
TARGET_MIXED_RATIO = 0.9
TARGET_IDLE_RSS_MB = 45.0
NATIVE_QUEUES = (1, 2, 4)


@dataclass(frozen=True, slots=True)
class Test:
    """One iperf3 invocation: side a is always the iperf3 client."""

    name: str
    reverse: bool = False
    streams: int = 1


A_TO_B = Test("1 stream a->b")
B_TO_A = Test("1 stream b->a", reverse=True)
FOUR_STREAMS = Test("4 streams a->b", streams=4)

#: tunplug (pure Python, 1 queue, offloads on) against Debian 12's wireguard-go before the
#: native core: docs/benchmarks.md of commit a151cfa (2026-11-24), the README's "1.7-2.0x".
PYTHON_BEFORE_VS_WGGO12 = {A_TO_B: 1.71, B_TO_A: 1.91, FOUR_STREAMS: 1.97}


@dataclass(frozen=True, slots=True)
class Setup:
    """One topology (pair and tunplug settings) and the tests run through it."""

    pair: str
    tests: tuple[Test, ...]
    queues: int | None = None  # None: no tunplug endpoint

    @property
    def kinds(self) -> tuple[EndpointKind, EndpointKind]:
        return PAIRS[self.pair]

    @property
    def interop_kinds(self) -> tuple[Kind, Kind]:
        return INTEROP_KINDS[self.kinds[0]], INTEROP_KINDS[self.kinds[1]]

    @property
    def wggo_kind(self) -> EndpointKind | None:
        """The wireguard-go build of this pair (one per pair), None: no wireguard-go in it."""
        wggo = {kind for kind in self.kinds if kind in WGGO_KINDS}
        assert len(wggo) <= 1, f"{self.pair}: interop runs one wireguard-go build per topology"
        return wggo.pop() if wggo else None

    @property
    def tunplug_env(self) -> dict[str, str]:
        tunplug = {kind for kind in self.kinds if kind in TUNPLUG_KIND_ENV}
        assert len(tunplug) <= 1, f"{self.pair}: interop gives every tunplug one environment"
        return dict(TUNPLUG_KIND_ENV[tunplug.pop()]) if tunplug else {}

    @property
    def tunplug_args(self) -> tuple[str, ...]:
        return () if self.queues is None else ("--tun-threads", str(self.queues))

    @property
    def label(self) -> str:
        queues = "" if self.queues is None else f" q{self.queues}"
        return PAIR_LABELS[self.pair] + queues


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
    """Changes whenever a Python file or a built native module of the measured tree changes
    (edits or rebuilds during a run); Cargo's ``target`` directories do not count."""
    entries = []
    for folder in ("core", "plugins"):
        for parent, dirs, files in os.walk(root / folder):
            dirs[:] = sorted(d for d in dirs if d not in ("target", "__pycache__", ".git"))
            for name in sorted(files):
                if not name.endswith((".py", ".so")):
                    continue
                path = Path(parent, name)
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


def run_exclusive(run: Callable[[], T]) -> T | int:
    """``run()`` while holding the benchmark lock; Ctrl-C and SIGTERM/SIGHUP (with
    :func:`_on_signal` installed) end it with a line and an exit code (returned instead of the
    result), after every context manager in ``run`` has cleaned up."""
    try:
        with exclusive_lock():
            return run()
    except KeyboardInterrupt:
        print("\ninterrupted: namespaces and processes removed", file=sys.stderr)
        return 130
    except Terminated as stop:
        print(f"\n{stop}: namespaces and processes removed", file=sys.stderr)
        return 128 + stop.signum


def run_benchmark(
    setups: Sequence[Setup],
    runs: int,
    seconds: float,
    binaries: Mapping[EndpointKind, Path],
    log: Callable[..., None] = print,
) -> tuple[list[Result], dict[str, str]]:
    """Run the matrix ``runs`` times, interleaved; returns the results and facts on the run.

    ``binaries`` holds the wireguard-go program of each ``wggo*`` kind in the matrix.
    """
    results = {config: Result(config) for config in configs(setups)}
    facts: dict[str, str] = {}
    namespaces: list[str] = []
    total, done, disturbed, waited = len(results) * runs, 0, 0, 0.0
    for run in range(1, runs + 1):
        for setup in setups:
            started = 0
            try:
                wggo = setup.wggo_kind
                with topology(
                    *setup.interop_kinds,
                    tunplug_env=setup.tunplug_env,
                    tunplug_args=setup.tunplug_args,
                    wggo_binary=binaries[wggo] if wggo else "wireguard-go",
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


WGGO_FACT_NAMES: dict[EndpointKind, str] = {
    "wggo13": "wireguard-go wggo13 (the anchor: Debian 13)",
    "wggo12": "wireguard-go wggo12 (Debian 12)",
}


def machine_facts(wggo: Mapping[EndpointKind, WireguardGo]) -> dict[str, str]:
    """What the figures depend on: CPUs, kernel, Python, both wireguard-go builds, the native
    core, iperf3, date."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    facts = {
        "CPUs (nproc)": str(len(os.sched_getaffinity(0))),
        "CPU model": model,
        "Kernel": platform.release(),
        "Python": platform.python_version(),
    }
    for kind, name in WGGO_FACT_NAMES.items():
        found = wggo.get(kind)
        facts[name] = (
            f"{found.version}, Debian package {found.package_version}" if found else "not run"
        )
    facts |= {
        "tunplug native core": _native_core_version(),
        "iperf3": _first_line(["iperf3", "--version"]),
        "tunplug commit": _code_version(),
        "Date (UTC)": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
    }
    return facts


def _native_core_version() -> str:
    try:
        return f"tunplug-fastpath {importlib.metadata.version('tunplug-fastpath')}"
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


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
    """One goal of the native core; ``passed`` is None when its configurations were not
    measured. An ``informational`` line only reports figures."""

    name: str
    passed: bool | None
    detail: str
    informational: bool = False

    @property
    def verdict(self) -> str:
        if self.informational:
            return "info"
        return {True: "met", False: "NOT MET", None: "n/a"}[self.passed]

    def line(self) -> str:
        return f"{self.verdict:<7}  {self.name}: {self.detail}"


NATIVE = PAIR_LABELS["native-native"]
ANCHOR_LABEL = PAIR_LABELS[ANCHOR]


def _vs_anchor(result: Result | None, results: Sequence[Result]) -> str:
    anchor = find(results, ANCHOR, result.config.test) if result else None
    value = ratio(result, results) if result else None
    if result is None or anchor is None or value is None:
        return "not measured"
    return f"{value:.2f}x ({_num(result.mbps)} vs {_num(anchor.mbps)} Mbit/s)"


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
            f"{test.name} {_num(now, '.2f', 'x')} wggo13, {_num(old, '.2f', 'x')} wggo12 "
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


RESULT_HEADER = [
    "Pair", "Queues", "TSO a/b", "Test", "Mbit/s", "Range", "vs wggo13", "vs wggo12", "Retr",
    "CPU s/GB a", "CPU s/GB b", "Peak RSS MB a/b", "Idle RSS MB a/b", "Runs",
]  # fmt: skip
CPU_HEADER = [
    "Configuration", "Endpoint a", "Endpoint b", "iperf3 client", "iperf3 server", "Machine busy",
]  # fmt: skip


def _num(value: float | None, spec: str = ".0f", suffix: str = "") -> str:
    return "-" if value is None or value != value else f"{value:{spec}}{suffix}"


def _pair_of(values: tuple[float | None, float | None], spec: str = ".0f") -> str:
    return "/".join(_num(value, spec) for value in values)


def _ratio_cell(result: Result, results: Sequence[Result], anchor: str) -> str:
    if result.config.setup.pair == anchor:
        return "1.00x (anchor)" if result.samples else "-"
    return _num(ratio(result, results, anchor), ".2f", "x")


def result_rows(results: Sequence[Result]) -> list[list[str]]:
    """The main table, one row per configuration, in matrix order."""
    rows = []
    for result in results:
        setup, test = result.config.setup, result.config.test
        mbps = [s.bits_per_second / 1e6 for s in result.samples]
        notes = [f"{result.failures} failed"] if result.failures else []
        if disturbed := sum(sample.disturbed for sample in result.samples):
            notes.append(f"{disturbed} disturbed")
        runs = str(len(result.samples)) + (f" ({', '.join(notes)})" if notes else "")
        rows.append(
            [
                PAIR_LABELS[setup.pair],
                "-" if setup.queues is None else str(setup.queues),
                _tso_cell(result),
                test.name,
                _num(result.mbps),
                f"{min(mbps):.0f}-{max(mbps):.0f}" if mbps else "-",
                _ratio_cell(result, results, ANCHOR),
                _ratio_cell(result, results, OLD_ANCHOR),
                _num(result.retransmits),
                _num(result.median(lambda s: s.cpu_seconds_per_gb(0)), ".1f"),
                _num(result.median(lambda s: s.cpu_seconds_per_gb(1)), ".1f"),
                _pair_of((result.peak_rss_mb(0), result.peak_rss_mb(1))),
                _pair_of((result.idle_rss_mb(0), result.idle_rss_mb(1)), ".1f"),
                runs,
            ]
        )
    return rows


def _tso_word(seen: set[bool | None]) -> str:
    if seen == {True}:
        return "on"
    if seen == {False}:
        return "off"
    return "mixed" if len(seen - {None}) > 1 else "?"


def _tso_cell(result: Result) -> str:
    if not result.samples:
        return "-"
    return "/".join(_tso_word({s.tso[side] for s in result.samples}) for side in (0, 1))


def tso_by_kind(results: Sequence[Result]) -> dict[EndpointKind, str]:
    """Whether each kind of endpoint had TSO on its device in this run: on, off, mixed, ?."""
    seen: dict[EndpointKind, set[bool | None]] = {}
    for result in results:
        for side, kind in enumerate(result.config.setup.kinds):
            seen.setdefault(kind, set()).update(s.tso[side] for s in result.samples)
    return {kind: _tso_word(values) for kind, values in seen.items() if values}


def tso_note(results: Sequence[Result]) -> str:
    """What the devices' TSO flags showed in this run, per kind of endpoint."""
    seen = tso_by_kind(results)
    if not seen:
        return "No device was read in this run."
    return "Seen in this run: " + ", ".join(f"{kind} {word}" for kind, word in seen.items()) + "."


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
- **Endpoints.** *wggo13* is Debian 13's wireguard-go 0.0.20231211 (it has wireguard-go's TUN
  offloads and UDP GSO/GRO, 2023), fetched into a cache by `benchmarks/wggo.py`; *wggo12* is
  Debian 12's 0.0.20220316, which has neither; *tunplug-native* and *tunplug-python* are tunplug
  with `TUNPLUG_DATA_PATH=native` (the Rust core, tunplug-fastpath) and `=python`.
- **Before.** The README's earlier ratios (tunplug 1.7-2.0x wireguard-go, 1.1-1.4x against it)
  were against Debian 12's 2022 build, i.e. the *vs wggo12* column here; the anchor is now
  Debian 13's build, several times faster on this machine.
- **Sides.** Side a is always the iperf3 client and the handshake initiator; in
  tunplug-native<->wggo13 side a is tunplug. *a->b*: a sends (so there tunplug encrypts);
  *b->a* is iperf3 `-R` (b sends, tunplug decrypts).
- **Mbit/s** is iperf3's received throughput summed over the streams, the median of the runs;
  *Range* is the lowest and highest run.
- **vs wggo13** is that median over the median of wggo13<->wggo13 for the same test, measured in
  the same run (configurations interleaved: run 1 of all, then run 2, ...); **vs wggo12** the
  same against wggo12<->wggo12 (`-` when that pair was not run). Above 1.00x the row is faster.
  Compare ratios, never absolute figures across machines.
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
- **Queues** is `--tun-threads` (TUN queues) of every tunplug endpoint; wireguard-go has its own
  fixed design (`-`).
- **TSO a/b** is whether each tunnel device had TCP segmentation offload on, read from the device
  (ethtool's `ETHTOOL_GTSO`): wireguard-go turns it on since its 2023 offloads (wggo13), Debian
  12's build cannot (wggo12); tunplug turns it on only where splitting super-packets on reads
  pays (its data path decides). UDP GSO/GRO on the sockets is not visible from outside.
{tso}
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
joined by veth, on one machine. The anchor is Debian 13's wireguard-go (*wggo13*); Debian 12's
(*wggo12*), the anchor of the figures before 2026-12, is the second ratio column.

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

{NOTES.format(tso=_indented(tso_note(results)))}
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
        "network namespaces; prints a table with ratios against Debian 13's "
        "wireguard-go<->wireguard-go (and Debian 12's) measured in the same run. Needs root, "
        "wireguard-go, wireguard-tools and iperf3 (scripts/dev setup installs them); fetches "
        "Debian 13's wireguard-go into a cache on first use.",
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
        "--wggo-cache", type=Path, metavar="DIR",
        help=f"where Debian 13's wireguard-go is fetched to and kept (default "
        f"$XDG_CACHE_HOME or ~/.cache, then tunplug/{default_cache_dir().name})",
    )  # fmt: skip
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
    wggo_cache: Path | None = None


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = build_parser()
    args = parser.parse_args(argv)
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    seconds = args.seconds if args.seconds is not None else (2.0 if args.quick else 5.0)
    if runs < 1:
        parser.error("--runs must be at least 1")
    if seconds < 1:
        parser.error("--seconds must be at least 1")
    return Options(runs, seconds, tuple(args.only), args.output, args.list, args.wggo_cache)


def kinds_in(setups: Sequence[Setup]) -> set[EndpointKind]:
    return {kind for setup in setups for kind in setup.kinds}


def _preflight(setups: Sequence[Setup]) -> str | None:
    if sys.platform != "linux":
        return "needs Linux (network namespaces)"
    if os.geteuid() != 0:
        return "needs root: sudo .venv/bin/python benchmarks/throughput.py"
    missing = [tool for tool in ("ip", "wg", "iperf3") if not shutil.which(tool)]
    if missing:
        return f"missing {', '.join(missing)} (scripts/dev setup installs them)"
    if "tunplug-native" in kinds_in(setups) and not importlib.util.find_spec("tunplug_fastpath"):
        return (
            "the native core (tunplug-fastpath) is not installed: build it, or leave out the "
            "native pairs with --only"
        )
    return None


def wireguard_go_builds(
    setups: Sequence[Setup], cache: Path | None, log: Callable[[str], None] = print
) -> dict[EndpointKind, WireguardGo]:
    """The wireguard-go of every ``wggo*`` kind in the matrix (Debian 13's fetched if needed).

    :raises FetchError: one of them is missing and cannot be fetched.
    """
    builds: dict[EndpointKind, WireguardGo] = {}
    kinds = kinds_in(setups)
    if "wggo13" in kinds:
        builds["wggo13"] = fetch(cache, log=log)
    if "wggo12" in kinds:
        builds["wggo12"] = system_wireguard_go()
    return builds


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    setups = build_matrix(options.only)
    minutes = estimate_seconds(setups, options.runs, options.seconds) / 60
    if options.list_only:
        print("\n".join(describe_matrix(setups)))
        print(f"{len(configs(setups))} configurations x {options.runs} runs of "
              f"{options.seconds:g} s: about {minutes:.0f} min")  # fmt: skip
        return 0
    problem = _preflight(setups)
    if problem:
        print(f"benchmarks/throughput.py: {problem}", file=sys.stderr)
        return 2
    try:
        builds = wireguard_go_builds(setups, options.wggo_cache, partial(print, flush=True))
    except FetchError as error:
        print(f"benchmarks/throughput.py: wireguard-go: {error}", file=sys.stderr)
        return 2
    for kind, build in builds.items():
        print(f"{kind}: {build.describe()}")
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
    machine = machine_facts(builds)
    code_before = code_fingerprint()
    outcome = run_exclusive(
        lambda: run_benchmark(
            setups,
            options.runs,
            options.seconds,
            {kind: build.binary for kind, build in builds.items()},
            partial(print, flush=True),
        )
    )
    if isinstance(outcome, int):
        return outcome
    results, facts = outcome
    elapsed = time.monotonic() - started
    if code_fingerprint() != code_before:
        machine["tunplug commit"] += (
            " - WARNING: the code changed during the run, the figures mix versions"
        )
        print(
            f"WARNING: Python files or native modules under {CODE_ROOT} changed during the run",
            file=sys.stderr,
        )
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
