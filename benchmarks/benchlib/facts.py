"""What the figures of a run depend on, for the report: the machine, the wireguard-go builds,
the native core, iperf3 and the commit of the measured tunplug; and whether that code changed
while the run went on.

Who calls it: ``throughput.py``, ``soak.py`` and ``flood.py`` (their ``main``).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from wggo import WireguardGo

import tunplug
from benchlib.pairs import EndpointKind

#: The source tree of the tunplug that is measured (the one ``import tunplug`` finds).
CODE_ROOT = Path(tunplug.__file__).resolve().parents[2]

WGGO_FACT_NAMES: dict[EndpointKind, str] = {
    "wggo13": "wireguard-go wggo13 (the anchor: Debian 13)",
    "wggo12": "wireguard-go wggo12 (Debian 12)",
}


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


def code_changed_since(before: str) -> bool:
    """Whether the measured tree changed since ``before`` (a :func:`code_fingerprint`); when it
    did, a warning goes to stderr."""
    if code_fingerprint() == before:
        return False
    print(
        f"WARNING: Python files or native modules under {CODE_ROOT} changed during the run",
        file=sys.stderr,
    )
    return True


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
