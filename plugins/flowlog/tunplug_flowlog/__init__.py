"""Flow logs: one JSON line per finished flow, written by a pipeline stage (``--flow-logs``).

:class:`FlowLogStage` is the stage (usable directly, e.g. in a test's pipeline); the
``flow-log`` builtin plugin (:mod:`tunplug_flowlog.plugin`) creates one per tunnel when
``TunplugSettings.flow_logs`` is set. The format is described in ``docs/flow-logs.md``.
"""

from tunplug_flowlog.stage import FlowLogStage

__all__ = ["FlowLogStage"]
