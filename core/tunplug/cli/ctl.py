"""``tunplug ctl connect|disconnect|status|watch`` and ``tunplug status``: the tunnel
service's client on the command line.

Who calls it: :mod:`tunplug.cli.main`, and tests. Output of ``status`` follows ``wg show``;
``--json`` prints the protocol's ``TunnelStatus`` object. Nothing here prints or logs a token.
"""

from __future__ import annotations

import getpass
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from tunplug.cli._common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from tunplug.exceptions import ConfigError
from tunplug.formatting import wg_show_age, wg_show_bytes
from tunplug.secure_files import read_private_file
from tunplug.service import protocol as p
from tunplug.service.client import CONNECT_TIMEOUT, ServiceClient, ServiceError, default_socket
from tunplug.service.status_file import DEFAULT_STATUS_FILE, STALE_AFTER, read_status_file


# -- formatting --------------------------------------------------------------------------------
def format_status(status: p.TunnelStatus, now: float | None = None) -> str:
    """The status as ``wg show`` lays it out (interface first, then each peer)."""
    now = time.time() if now is None else now
    managed = {"token_file": " (token file)", "gui": " (GUI)"}.get(status.managed_by or "", "")
    lines = [f"interface: {status.interface or '(none)'}", f"  state: {status.state}{managed}"]
    if status.client_name:
        lines.append(f"  client: {status.client_name}")
    if status.public_key:
        lines.append(f"  public key: {status.public_key}")
    if status.listen_port:
        lines.append(f"  listening port: {status.listen_port}")
    if status.addresses:
        lines.append(f"  addresses: {', '.join(status.addresses)}")
    if status.dns_servers:
        lines.append(f"  dns: {', '.join(status.dns_servers)} (via {status.dns_control})")
    if status.last_error:
        lines.append(f"  last error: {status.last_error}")
    if status.control:
        lines.append(f"  control channel: {status.control}")
    internet = status.internet_resource
    if internet is not None and (internet.offered or internet.requested):
        state = "active" if internet.active else "offered" if internet.offered else "not offered"
        asked = "requested" if internet.requested else "not requested"
        lines.append(f"  internet resource: {state} ({asked})")
    for resource in status.resources:
        ports = f" {','.join(resource.ports)}" if resource.ports else ""
        reachable = "reachable" if resource.reachable else "not reachable"
        lines.append(
            f"  resource {resource.name}: {resource.kind} {resource.target}{ports}, {reachable}"
        )
    for peer in status.peers:
        lines += ["", f"peer: {peer.public_key}"]
        lines.append(f"  endpoint: {peer.endpoint or '(none)'}")
        lines.append(f"  allowed ips: {', '.join(peer.allowed_ips) or '(none)'}")
        lines.append(f"  latest handshake: {wg_show_age(peer.latest_handshake, now)}")
        received, sent = wg_show_bytes(peer.rx_bytes), wg_show_bytes(peer.tx_bytes)
        lines.append(f"  transfer: {received} received, {sent} sent")
        if peer.persistent_keepalive:
            lines.append(f"  persistent keepalive: every {peer.persistent_keepalive} seconds")
    return "\n".join(lines)


def format_event(event: p.Reply) -> str:
    """One line per event for ``ctl watch``."""
    if isinstance(event, p.TunnelReady):
        return f"tunnel ready: {event.interface} {', '.join(event.addresses)}"
    if isinstance(event, p.StatsUpdate):
        peers = "; ".join(
            f"{peer.public_key[:8]}... rx {peer.rx_bytes} tx {peer.tx_bytes} handshake "
            f"{wg_show_age(peer.latest_handshake, time.time())}"
            for peer in event.peers
        )
        return f"stats: {event.interface}: {peers or 'no peers'}"
    if isinstance(event, p.Disconnected):
        if event.error is None:
            return "disconnected"
        return f"disconnected: {event.error}" + (
            " (a new token is needed)" if event.needs_new_token else ""
        )
    if isinstance(event, p.TerminatingGracefully):
        return "the service is stopping"
    return event.model_dump_json()


# -- commands ----------------------------------------------------------------------------------
def _fail(prog: str, exc: ServiceError) -> int:
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return EXIT_FAILURE


def read_token(token_file: Path | None, stdin: TextIO | None = None) -> str:
    """The token from ``--token-file`` (private file) or standard input (hidden on a terminal).

    :raises ConfigError: the file is open to others, or nothing was given.
    """
    if token_file is not None:
        return read_private_file(token_file, "--token-file").strip()
    stdin = stdin or sys.stdin
    text = getpass.getpass("token: ") if stdin.isatty() else stdin.read()
    if not text.strip():
        raise ConfigError("stdin", "no token: pass --token-file FILE or pipe the token in")
    return text.strip()


def ctl_connect(
    path: Path, token_file: Path | None, *, wait: float = CONNECT_TIMEOUT, prog: str = "tunplug"
) -> int:
    """Connect with a token and wait for ``TunnelReady`` (or the reason it failed)."""
    secret = read_token(token_file)
    try:
        with ServiceClient(path) as client:
            client.request(p.Subscribe())
            client.request(p.Connect(token=secret))
            deadline = time.monotonic() + wait
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServiceError(f"no TunnelReady within {wait:g} s", "timeout")
                try:
                    event = client.next_event(remaining)
                except TimeoutError:
                    continue
                if isinstance(event, p.TunnelReady):
                    print(f"connected: {format_event(event)}")
                    return EXIT_OK
                if isinstance(event, p.Disconnected | p.TerminatingGracefully):
                    raise ServiceError(format_event(event), "disconnected")
    except ServiceError as exc:
        if exc.code == p.ErrorCode.INVALID_TOKEN:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        return _fail(prog, exc)


def ctl_disconnect(path: Path, *, prog: str = "tunplug") -> int:
    try:
        with ServiceClient(path) as client:
            client.request(p.Disconnect())
    except ServiceError as exc:
        return _fail(prog, exc)
    print("disconnected")
    return EXIT_OK


def ctl_status(path: Path, *, as_json: bool = False, prog: str = "tunplug") -> int:
    try:
        with ServiceClient(path) as client:
            status = client.status()
            welcome = client.welcome
    except ServiceError as exc:
        return _fail(prog, exc)
    if as_json:
        data = {
            "service": {
                "socket": str(path),
                "service_version": welcome.service_version,
                "protocol_version": welcome.protocol_version,
                "device_id": welcome.device_id,
            },
            **status.model_dump(mode="json"),
        }
        print(json.dumps(data, indent=2))
    else:
        print(format_status(status))
    return EXIT_OK


def ctl_watch(path: Path, *, as_json: bool = False, prog: str = "tunplug") -> int:
    """Print the status, then one line (or JSON object) per event until the service stops."""
    try:
        with ServiceClient(path) as client:
            client.request(p.Subscribe())
            status = client.status()
            print(status.model_dump_json() if as_json else format_status(status), flush=True)
            while True:
                try:
                    event = client.next_event(timeout=3600)
                except TimeoutError:
                    continue
                print(event.model_dump_json() if as_json else format_event(event), flush=True)
                if isinstance(event, p.TerminatingGracefully):
                    return EXIT_OK
    except ServiceError as exc:
        if exc.code == "closed":
            return EXIT_OK
        return _fail(prog, exc)
    except KeyboardInterrupt:
        return EXIT_OK


def status_command(
    path: Path | None,
    *,
    as_json: bool = False,
    gateway_state: Path | None = None,
    status_file: Path | None = None,
) -> int:
    """``tunplug status``: the tunnel service's tunnel, a gateway's (``--gateway-state``), or
    a tunnel that writes a status file (a headless client with one).
    """
    if gateway_state is not None:
        from tunplug.cli.gateway import main as gateway_main

        return gateway_main(
            ["status", "--state-dir", str(gateway_state), *(["--json"] if as_json else [])]
        )
    path = path or default_socket()
    if status_file is None and path.exists():
        return ctl_status(path, as_json=as_json)
    file = status_file or DEFAULT_STATUS_FILE
    try:
        status, age = read_status_file(file)
    except FileNotFoundError:
        print(
            f"tunplug: error: no tunnel service at {path} and no status file at {file}. For "
            "a gateway: tunplug status --gateway-state DIR (or tunplug-gateway status); a "
            "headless client reports in its log (journalctl -u tunplug-headless-client).",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except (OSError, ValueError) as exc:
        print(f"tunplug: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if as_json:
        data = {"source": {"status_file": str(file), "age": round(age, 1)}}
        print(json.dumps({**data, **status.model_dump(mode="json")}, indent=2))
        return EXIT_OK
    print(format_status(status))
    if age > STALE_AFTER:
        print(f"(written {int(age)} s ago: the tunnel is probably not running)")
    return EXIT_OK
