"""Command-line entry points: ``tunplug``, ``tunplug-headless-client``, ``tunplug-gateway``
and ``tunplug-tunnel-service``."""
