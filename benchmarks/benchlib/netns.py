"""Other network namespaces on the machine (someone's tests, competing for the CPUs), and
waiting for them to go before a test.

Who calls it: the throughput run (:mod:`benchlib.throughput.measure`), ``flood.py`` and the
soak (:mod:`benchlib.soak.traffic`).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

#: How long a test waits for other namespaces (someone's tests) to go before running anyway,
#: and how long all tests of a benchmark wait together at most.
QUIET_WAIT_SECONDS = 30.0
QUIET_WAIT_TOTAL_SECONDS = 300.0


def netns_names() -> list[str]:
    """The names of every network namespace (``ip netns list``)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def foreign_namespaces(ours: set[str]) -> set[str]:
    return set(netns_names()) - ours


def wait_for_quiet(
    ours: set[str], log: Callable[..., None], timeout: float = QUIET_WAIT_SECONDS
) -> bool:
    """Wait while other namespaces exist (someone's tests, competing for the CPUs); True: none."""
    deadline = time.monotonic() + timeout
    foreign = foreign_namespaces(ours)
    if foreign:
        log(f" waiting for other namespaces ({', '.join(sorted(foreign))})...", end="")
    while foreign and time.monotonic() < deadline:
        time.sleep(0.5)
        foreign = foreign_namespaces(ours)
    return not foreign
