"""Fixtures for the linux-mq tests: a throw-away namespace and the device-side agent.

Root tests never create devices in the test process: :func:`run_agent` and
:func:`start_agent` run ``_helpers/tun_agent.py`` inside the test's own namespace.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tunplug.testing.netns import NetNS, python_in_ns

AGENT = str(Path(__file__).parent / "_helpers" / "tun_agent.py")
AGENT_TIMEOUT = 60


@pytest.fixture
def netns() -> Iterator[NetNS]:
    with NetNS() as ns:
        yield ns


class Agent:
    """Runs ``_helpers/tun_agent.py`` scenarios inside one namespace (see that script)."""

    def __init__(self, ns: NetNS) -> None:
        self.ns = ns

    def start(self, scenario: str, **args: Any) -> subprocess.Popen[str]:
        """Start a scenario that talks back: read its lines with :meth:`read_line`."""
        return python_in_ns(
            self.ns,
            AGENT,
            scenario,
            json.dumps(args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @staticmethod
    def read_line(proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            proc.wait(AGENT_TIMEOUT)
            assert proc.stderr is not None
            raise AssertionError(f"agent ended early ({proc.returncode}): {proc.stderr.read()}")
        result: dict[str, Any] = json.loads(line)
        return result

    @staticmethod
    def tell(proc: subprocess.Popen[str], line: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()

    def run(self, scenario: str, **args: Any) -> dict[str, Any]:
        """Run a scenario to its end and return its last JSON line."""
        proc = self.start(scenario, **args)
        out, err = proc.communicate(timeout=AGENT_TIMEOUT)
        assert proc.returncode == 0, err
        lines = out.strip().splitlines()
        assert lines, f"agent printed nothing; stderr: {err}"
        result: dict[str, Any] = json.loads(lines[-1])
        return result


@pytest.fixture
def agent(netns: NetNS) -> Agent:
    return Agent(netns)
