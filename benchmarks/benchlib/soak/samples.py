"""What the soak reads every interval: the throughput into the resource, RSS, open descriptors,
threads and CPU time of the gateway and the client, the machine's busy time and the flow log;
and the rates between two such samples.

Who calls it: :mod:`.traffic` (takes the samples), :mod:`.checks` and :mod:`.report` (read
them) and the tests (build them by hand).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchlib.host import proc_cpu_seconds, proc_memory
from tunplug.testing.netns import NetNS


@dataclass(frozen=True, slots=True)
class ProcessStats:
    """One process at one moment."""

    rss: int  # VmRSS, bytes
    fds: int  # entries in /proc/PID/fd
    threads: int
    cpu_seconds: float  # user + system since start, all threads


@dataclass(frozen=True, slots=True)
class Sample:
    """Everything read at one moment; counters are cumulative, rates come from two samples."""

    elapsed: float  # seconds since the traffic started
    rx_bytes: int  # received by the resource's veth since it was created
    gateway: ProcessStats
    client: ProcessStats
    busy_seconds: float  # machine CPU time not idle, all CPUs
    flow_log_bytes: int  # flows.jsonl and its rotated files
    flows_logged: int  # lines in them
    foreign_namespaces: int  # network namespaces that are not ours (someone's tests)


def mbps(before: Sample, after: Sample) -> float:
    """Throughput into the resource between two samples, Mbit/s."""
    seconds = after.elapsed - before.elapsed
    return (after.rx_bytes - before.rx_bytes) * 8 / seconds / 1e6 if seconds > 0 else math.nan


def cpu_percent(before: Sample, after: Sample, side: Callable[[Sample], ProcessStats]) -> float:
    """A process's CPU between two samples, percent of one CPU."""
    seconds = after.elapsed - before.elapsed
    used = side(after).cpu_seconds - side(before).cpu_seconds
    return 100 * used / seconds if seconds > 0 else math.nan


def busy_percent(before: Sample, after: Sample) -> float:
    """How busy the whole machine was between two samples, percent of all CPUs."""
    seconds = (after.elapsed - before.elapsed) * len(os.sched_getaffinity(0))
    return 100 * (after.busy_seconds - before.busy_seconds) / seconds if seconds > 0 else math.nan


def process_stats(pid: int) -> ProcessStats:
    """RSS, descriptors, threads and CPU time of ``pid``.

    The descriptor count is the lowest of three reads 20 ms apart: the flow log's writer holds
    its file open only while it appends (once a second), and the gateway's registry writes open
    and close their files too; a descriptor open for one flush is not a leak.
    """
    fds = []
    for attempt in range(3):
        if attempt:
            time.sleep(0.02)
        fds.append(len(os.listdir(f"/proc/{pid}/fd")))
    threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            threads = int(line.split()[1])
    return ProcessStats(proc_memory(pid, "VmRSS"), min(fds), threads, proc_cpu_seconds(pid))


def device_rx_bytes(ns: NetNS, device: str) -> int:
    """Bytes ``device`` in ``ns`` has received (``ip -s -j link``)."""
    out = subprocess.run(
        ["ip", "-n", ns.name, "-s", "-j", "link", "show", "dev", device],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return int(json.loads(out.stdout)[0]["stats64"]["rx"]["bytes"])


def flow_log_stats(directory: Path) -> tuple[int, int]:
    """Bytes and lines of ``flows.jsonl`` and its rotated files in ``directory``."""
    size = lines = 0
    for path in directory.glob("flows.jsonl*"):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # rotated away between glob and read
            continue
        size += len(data)
        lines += data.count(b"\n")
    return size, lines
