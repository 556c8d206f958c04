"""The gateway: issues client tokens, keeps clients in SQLite, and serves them.

Who calls it: :mod:`tunplug.cli.gateway` (``tunplug-gateway``) and the live demo.
:mod:`.registry` is the state (keys, clients, addresses); :mod:`.server` runs the tunnel for
every registered client, forwards and NATs to the resources, and serves health and metrics.
"""
