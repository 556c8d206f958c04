"""``tunplug demo``, the README's first command, as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TUNPLUG = str(Path(sys.executable).with_name("tunplug"))


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_in_process_demo_answers_every_ping():
    result = subprocess.run(
        [TUNPLUG, "demo", "--in-process", "--count", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "3 pings sent, 3 replies" in result.stdout
    assert result.stdout.count("reply from 10.99.0.1") == 3


@pytest.mark.root
def test_live_demo_carries_traffic_between_namespaces_and_cleans_up():
    before = namespaces()
    result = subprocess.run(
        [TUNPLUG, "demo", "--count", "2"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("2 packets transmitted, 2 received") == 2  # IPv4 and IPv6
    assert result.stdout.count("Mbit/s through the tunnel") == 2
    assert namespaces() == before
