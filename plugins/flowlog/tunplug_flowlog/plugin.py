"""The ``flow-log`` builtin plugin: hands the engine a :class:`FlowLogStage` per tunnel.

Who calls it: the plugin manager, once per tunnel (``tunplug_pipeline_stages``) and when the
tunnel goes down (``tunplug_tunnel_down``, which logs the flows still open and writes them).
With ``--flow-logs`` / ``TUNPLUG_FLOW_LOGS`` unset it returns no stage, so the data path pays
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from tunplug import hookimpl
from tunplug.config import TunplugSettings
from tunplug.events import TunnelInfo
from tunplug.exceptions import ConfigError
from tunplug.pipeline import Stage
from tunplug_flowlog.stage import FlowLogStage

#: The stages of the tunnels that are up, by interface name (closed at tunnel down).
_stages: dict[str, list[FlowLogStage]] = {}


@hookimpl
def tunplug_pipeline_stages(settings: TunplugSettings, tunnel: TunnelInfo) -> Sequence[Stage]:
    if settings.flow_logs is None:
        return []
    try:
        stage = FlowLogStage(settings.flow_logs, tunnel, max_bytes=settings.flow_logs_max_bytes)
    except OSError as exc:
        raise ConfigError(
            "--flow-logs (TUNPLUG_FLOW_LOGS)", f"cannot create {settings.flow_logs}: {exc}"
        ) from exc
    _stages.setdefault(tunnel.interface, []).append(stage)
    return [stage]


@hookimpl
def tunplug_tunnel_down(tunnel: TunnelInfo, error: BaseException | None) -> None:
    for stage in _stages.pop(tunnel.interface, []):
        stage.close()
