"""The ``flow-log`` builtin plugin: declares ``--flow-logs`` and hands each tunnel a
:class:`FlowLogStage`.

Who calls it: the plugin manager, once per application (``tunplug_add_settings``) and once per
tunnel (``tunplug_pipeline_stages``). The stage is the tunnel's flow-log state; the engine
closes it when the tunnel goes down (:meth:`tunplug.pipeline.Pipeline.close`), which logs the
flows still open as ``shutdown``. With ``--flow-logs`` / ``TUNPLUG_FLOW_LOGS`` unset it returns
no stage, so the data path pays nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from tunplug import hookimpl
from tunplug.config import PluginSettings, TunplugSettings
from tunplug.events import TunnelInfo
from tunplug.exceptions import ConfigError
from tunplug.pipeline import Stage
from tunplug_flowlog.stage import FlowLogStage


class FlowLogSettings(PluginSettings):
    """``--flow-logs DIR`` / ``TUNPLUG_FLOW_LOGS`` and ``--flow-logs-max-bytes``."""

    flow_logs: Path | None = Field(
        default=None,
        description="append one JSON line per finished flow to DIR/flows.jsonl; off when unset",
        json_schema_extra={"metavar": "DIR"},
    )
    flow_logs_max_bytes: int = Field(
        default=50 * 1024 * 1024,
        ge=4096,
        description="size at which the flow log file is rotated",
        json_schema_extra={"metavar": "BYTES"},
    )


@hookimpl
def tunplug_add_settings() -> type[PluginSettings]:
    return FlowLogSettings


@hookimpl
def tunplug_pipeline_stages(settings: TunplugSettings, tunnel: TunnelInfo) -> Sequence[Stage]:
    own = settings.plugin(FlowLogSettings)
    if own.flow_logs is None:
        return []
    try:
        return [FlowLogStage(own.flow_logs, tunnel, max_bytes=own.flow_logs_max_bytes)]
    except OSError as exc:
        raise ConfigError(
            "--flow-logs (TUNPLUG_FLOW_LOGS)", f"cannot create {own.flow_logs}: {exc}"
        ) from exc
