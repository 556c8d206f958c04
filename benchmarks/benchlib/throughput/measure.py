"""Running the throughput matrix: for each setup a fresh tunnel between two namespaces, then
iperf3 through it for each test, with the CPU time and memory of both endpoints, whether their
devices have TSO on, and whether someone else's namespaces shared the machine.

Who calls it: ``throughput.py`` (``main``: :func:`run_benchmark`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchlib.host import machine_busy_seconds, proc_cpu_seconds, proc_memory
from benchlib.netns import (
    QUIET_WAIT_SECONDS,
    QUIET_WAIT_TOTAL_SECONDS,
    foreign_namespaces,
    netns_names,
    wait_for_quiet,
)
from benchlib.pairs import EndpointKind, Setup, Test, handshake, tunnel_topology
from benchlib.throughput.matrix import Config, configs
from benchlib.throughput.results import Result, Sample
from tunplug.testing.interop import Endpoint, Topology

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
                with tunnel_topology(setup, binaries) as topo:
                    namespaces += [topo.a.ns.name, topo.b.ns.name]
                    handshake(topo)
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
                        sample.disturbed = not quiet or bool(foreign_namespaces(set(namespaces)))
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
    leftover = set(namespaces) & set(netns_names())
    if leftover:
        log(f"WARNING: namespaces left behind: {', '.join(sorted(leftover))}")
    facts["disturbed"] = (
        f"{disturbed} of {total} tests ran while other namespaces existed "
        f"(waited {waited:.0f} s for them to go)"
    )
    return list(results.values()), facts


def _congestion(topo: Topology) -> str:
    result = topo.a.ns.run("sysctl", "-n", "net.ipv4.tcp_congestion_control", check=False)
    return result.stdout.strip() or "unknown"


def format_sample(sample: Sample) -> str:
    return (
        f"{sample.bits_per_second / 1e6:7.0f} Mbit/s  retr {sample.retransmits:>6}  "
        f"CPU a {sample.cpu_seconds_per_gb(0):5.1f} b {sample.cpu_seconds_per_gb(1):5.1f} s/GB  "
        f"machine {100 * sample.machine_busy:3.0f}% busy"
    )
