"""Settings of ``tunplug-tunnel-service``: the headless client's, plus the socket and its group.

Who calls it: :mod:`tunplug.cli.tunnel_service`, and ``tunplug ctl`` for the default socket
path. Each field has a flag and a ``TUNPLUG_*`` variable (``TUNPLUG_SERVICE_SOCKET``,
``TUNPLUG_SERVICE_GROUP``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from tunplug.headless.settings import HeadlessSettings

DEFAULT_SOCKET = Path("/run/dev.tunplug.client/tunnel.sock")
DEFAULT_GROUP = "tunplug-client"
SOCKET_VARIABLE = "TUNPLUG_SERVICE_SOCKET"


class TunnelServiceSettings(HeadlessSettings):
    """Settings of the tunnel service (everything the headless client has, plus these)."""

    service_socket: Path = Field(
        DEFAULT_SOCKET, description="the Unix socket GUIs connect to (mode 0660)"
    )
    service_group: str = Field(
        DEFAULT_GROUP,
        min_length=1,
        description="group whose members (and root) may use the socket; 'root' for root only",
    )
