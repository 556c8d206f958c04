"""The privileged tunnel service for GUIs: its protocol, server, access checks and client.

Who calls it: ``tunplug-tunnel-service run`` (:mod:`tunplug.cli.tunnel_service`) runs the
server; ``tunplug ctl`` and ``tunplug status`` (:mod:`tunplug.cli.main`) use the client. The
protocol is documented for GUI authors in ``docs/ipc.md``.
"""
