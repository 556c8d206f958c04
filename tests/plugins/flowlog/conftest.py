"""Fixtures of the flow-log tests: a settable clock and stages on it, closed afterwards."""

from __future__ import annotations

from typing import Any

import pytest

from tunplug.events import TunnelInfo
from tunplug_flowlog.stage import FlowLogStage

from ._helpers import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log_dir(tmp_path):
    return tmp_path / "logs"


@pytest.fixture
def make_stage(log_dir, clock):
    """``make_stage(tunnel=None, **kwargs)``: a stage logging to ``log_dir`` on ``clock``."""
    stages: list[FlowLogStage] = []

    def build(tunnel: TunnelInfo | None = None, **kwargs: Any) -> FlowLogStage:
        tunnel = tunnel or TunnelInfo(interface="tun-test", tun_backend="fake", role="client")
        stage = FlowLogStage(log_dir, tunnel, clock=clock, **kwargs)
        stages.append(stage)
        return stage

    yield build
    for stage in stages:
        stage.close()
