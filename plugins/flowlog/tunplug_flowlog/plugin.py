"""Registers the flow-log pipeline stage (being built; no stage yet)."""

from __future__ import annotations

from collections.abc import Sequence

from tunplug import hookimpl
from tunplug.config import TunplugSettings
from tunplug.events import TunnelInfo
from tunplug.pipeline import Stage


@hookimpl
def tunplug_pipeline_stages(settings: TunplugSettings, tunnel: TunnelInfo) -> Sequence[Stage]:
    return []
