"""Settings of ``tunplug-gateway``: the shared ones plus state, interface and metrics.

Who calls it: :mod:`tunplug.cli.gateway`. Each field has a flag and a ``TUNPLUG_*`` variable.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field

from tunplug.config import TunplugSettings

DEFAULT_STATE_DIR = Path("/var/lib/tunplug-gateway")
DEFAULT_INTERFACE = "tunplug-gw0"
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9586"


class GatewaySettings(TunplugSettings):
    """Settings of the gateway (``TUNPLUG_*``; ``LOG_DIR`` as for the headless client)."""

    state_dir: Path = Field(
        DEFAULT_STATE_DIR,
        validation_alias=AliasChoices("tunplug_gateway_state_dir"),
        description="the gateway's keys and SQLite database (TUNPLUG_GATEWAY_STATE_DIR)",
    )
    interface: str = Field(DEFAULT_INTERFACE, min_length=1, max_length=15)
    metrics_address: str = Field(
        DEFAULT_METRICS_ADDRESS,
        description="host:port for /healthz, /readyz and /metrics; 'off' disables them",
    )
    dns_upstream: str = Field(
        "",
        description="DNS servers (comma-separated addresses) the gateway resolves DNS "
        "resources with; empty: the nameservers of /etc/resolv.conf (TUNPLUG_DNS_UPSTREAM)",
    )
    log_dir: Path | None = Field(
        None,
        validation_alias=AliasChoices("LOG_DIR", "tunplug_log_dir"),
        description="directory for rotated log files (LOG_DIR); stderr only when unset",
    )
