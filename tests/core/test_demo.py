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
def test_live_demo_reaches_the_resource_through_the_gateway_and_cleans_up():
    before = namespaces()
    result = subprocess.run(
        [TUNPLUG, "demo", "--count", "2"], capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "tunplug-gateway client add demo-laptop" in out
    assert "2 packets transmitted, 2 received" in out
    assert "the client routes only the resources into the tunnel: 10.210.0.0/24" in out
    live = [line for line in out.splitlines() if "gateway received" in line]
    assert len(live) >= 3, out  # one line per second of iperf3
    assert "handshake none yet" not in live[-1]
    assert "average 0 Mbit/s" not in out
    # Resources by name, live: added, resolved through the tunnel, reachable, removed, cut.
    assert "later the client routes the proxy range 100.96.0.0/11" in out
    assert (
        "db.corp.example at the gateway's DNS server (100.64.0.1, through the tunnel): 100.96."
        in out
    )
    assert out.count("2 packets transmitted, 2 received") == 2
    assert "no longer answers: cut" in out
    assert namespaces() == before
