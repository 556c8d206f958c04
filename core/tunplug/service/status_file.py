"""A status file for tunnels that have no socket: what ``tunplug status`` reads for them.

Who calls it: the tunnel service's server (:func:`peer_statuses`, shared with ``StatusReply``
and ``StatsUpdate``); ``tunplug status --status-file`` (:func:`read_status_file`); and a
headless client that wants to be asked, by adding :func:`status_file_task` to its
``InterfaceHooks.background``. The file holds the protocol's ``TunnelStatus`` as JSON (public
keys, endpoints, counters: nothing secret), is replaced atomically every second with mode 0640,
and is removed when the tunnel stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from tunplug.service import protocol as p
from tunplug.wireguard import WireGuardDevice
from tunplug.wireguard.keys import format_key
from tunplug.wireguard.peer import PeerStats

if TYPE_CHECKING:
    from tunplug.control import ControlChannel
    from tunplug.live_tunnel import LiveTunnel

DEFAULT_STATUS_FILE = Path("/run/dev.tunplug.client/status.json")
STATUS_INTERVAL = 1.0
#: A file older than this is shown as stale (its writer is probably gone).
STALE_AFTER = 10.0


def _endpoint(peer: PeerStats) -> str | None:
    if peer.endpoint is None:
        return None
    host, port = peer.endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_statuses(device: WireGuardDevice) -> list[p.PeerStatus]:
    """Each peer as ``wg show`` shows it; handshake times as Unix time."""
    offset = time.time() - time.monotonic()  # the device's clock is time.monotonic
    return [
        p.PeerStatus(
            public_key=format_key(peer.public_key),
            endpoint=_endpoint(peer),
            allowed_ips=[str(network) for network in peer.allowed_ips],
            latest_handshake=None if peer.last_handshake is None else peer.last_handshake + offset,
            rx_bytes=peer.rx_bytes,
            tx_bytes=peer.tx_bytes,
            persistent_keepalive=peer.persistent_keepalive,
        )
        for peer in device.peer_stats()
    ]


def write_status_file(path: Path, status: p.TunnelStatus) -> None:
    """Replace ``path`` atomically with ``status`` (mode 0640)."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(status.model_dump_json())
    os.replace(temporary, path)


def control_statuses(control: ControlChannel | None) -> dict[str, Any]:
    """The ``TunnelStatus`` fields that come from the control channel (none without one)."""
    if control is None:
        return {}
    host, port = control.address
    return {
        "control": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "resources": control.resources(),
        "internet_resource": control.internet_status(),
    }


def tunnel_status(
    tunnel: LiveTunnel, client_name: str | None = None, control: ControlChannel | None = None
) -> p.TunnelStatus:
    """The running ``tunnel`` as ``tunplug status`` shows it: its interface, the configuration
    and device it runs now (its current public key), and with ``control`` the resources and
    the Internet resource."""
    config, device = tunnel.config, tunnel.device
    return p.TunnelStatus(
        state="connected",
        managed_by="token_file" if client_name else None,
        client_name=client_name,
        interface=tunnel.interface,
        public_key=format_key(device.public_key),
        addresses=[str(address) for address in config.addresses],
        dns_servers=[str(server) for server in config.dns_servers],
        peers=peer_statuses(device),
        **control_statuses(control),
    )


def status_file_task(
    path: Path, client_name: str | None = None, control: ControlChannel | None = None
) -> Callable[[LiveTunnel], Coroutine[Any, Any, None]]:
    """A background task for :class:`~tunplug.node.InterfaceHooks`: writes ``path`` every
    second while the tunnel runs (:func:`tunnel_status`, read afresh each time: a reload may
    change the configuration and the device), and removes it at the end."""

    async def write_status(tunnel: LiveTunnel) -> None:
        await anyio.to_thread.run_sync(lambda: path.parent.mkdir(mode=0o755, exist_ok=True))
        try:
            while True:
                status = tunnel_status(tunnel, client_name, control)
                await anyio.to_thread.run_sync(write_status_file, path, status)
                await anyio.sleep(STATUS_INTERVAL)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove, path)

    return write_status


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def read_status_file(path: Path) -> tuple[p.TunnelStatus, float]:
    """The status in ``path`` and its age in seconds.

    :raises FileNotFoundError: no such file. :raises ValueError: not a status file.
    """
    text = path.read_text(encoding="utf-8")
    age = time.time() - path.stat().st_mtime
    try:
        return p.TunnelStatus.model_validate(json.loads(text)), age
    except ValueError as exc:
        raise ValueError(f"{path} is not a tunplug status file: {exc}") from None
