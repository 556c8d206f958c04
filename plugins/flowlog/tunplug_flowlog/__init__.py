"""Flow logs: one JSON line per finished flow, written by a pipeline stage (``--flow-logs``).

:class:`FlowLogStage` is the stage (usable directly, e.g. in a test's pipeline); the
``flow-log`` builtin plugin (:mod:`tunplug_flowlog.plugin`) declares the settings
(:class:`~tunplug_flowlog.plugin.FlowLogSettings`: ``--flow-logs`` / ``TUNPLUG_FLOW_LOGS``) and
creates one stage per tunnel when a directory is set. The format is in ``docs/flow-logs.md``.
"""

from tunplug_flowlog.stage import FlowLogStage

__all__ = ["FlowLogStage"]
