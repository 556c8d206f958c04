"""Settings of ``tunplug-headless-client``: the shared ones plus token, identity, logs, DNS.

Who calls it: :mod:`tunplug.cli.headless`. Each field has a flag and a variable; the token
itself is not a setting (``TUNPLUG_TOKEN`` is read once and removed from the environment, see
:mod:`tunplug.headless.sources`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field

from tunplug.config import TunplugSettings

DEFAULT_TOKEN_PATH = Path("/etc/dev.tunplug.client/token")
DEFAULT_STATE_DIR = Path("/var/lib/dev.tunplug.client")


class HeadlessSettings(TunplugSettings):
    """Settings of the headless client (``TUNPLUG_*``, and ``LOG_DIR`` as Firezone names it)."""

    token_path: Path = Field(
        DEFAULT_TOKEN_PATH, description="file holding the token (root-owned, mode 0400/0600)"
    )
    id: str | None = Field(None, description="device id (default: generated once and stored)")
    state_dir: Path = Field(
        DEFAULT_STATE_DIR, description="where the device id and DNS backups are kept"
    )
    log_dir: Path | None = Field(
        None,
        validation_alias=AliasChoices("LOG_DIR", "tunplug_log_dir"),
        description="directory for rotated log files (LOG_DIR); stderr only when unset",
    )
    log_max_bytes: int = Field(
        10 * 1024 * 1024, ge=4096, description="size at which a log file is rotated"
    )
    log_backups: int = Field(5, ge=0, le=100, description="rotated log files kept")
    dns_control: str = Field(
        "auto",
        min_length=1,
        description="DNS manager: systemd-resolved, etc-resolv-conf, disabled, or auto "
        "(systemd-resolved when it runs, else etc-resolv-conf)",
    )
    full_tunnel_table: int = Field(
        51820,
        ge=1,
        le=0xFFFFFFFF,
        description="routing table and fwmark used for a full tunnel (0.0.0.0/0 in AllowedIPs)",
    )
    activate_internet_resource: bool = Field(
        False,
        description="route all traffic through the gateway when it offers the Internet "
        "resource (tokens with a control channel)",
    )
