"""Flow logs: one JSON line per finished flow, written by a pipeline stage (``--flow-logs``)."""
