"""A tunnel service running in-process (fake TUN backend, no root) for the service's tests.

The service runs on an event loop in a thread (anyio's blocking portal), so tests talk to it
with plain blocking sockets, as a GUI would. Peer credentials are injected: ``member`` and
``outsider`` decide who the service thinks is calling.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from tunplug import token
from tunplug.app import App
from tunplug.config import load_settings
from tunplug.headless.sources import ConfigSource
from tunplug.service import protocol as p
from tunplug.service.access import PeerCredentials
from tunplug.service.server import TunnelService
from tunplug.service.settings import TunnelServiceSettings
from tunplug.testing.interop import Keys

#: Not root, and in no group the tests use as the service's group.
OUTSIDER = PeerCredentials(pid=4242, uid=123456, gid=123456, groups=(123457,))


def make_token(keys: Keys | None = None, name: str = "laptop") -> str:
    keys = keys or Keys.generate()
    return token.encode(
        token.ClientToken(
            name=name,
            gateway_key=Keys.generate().public,
            # Nothing is sent there: the fake device never produces a packet.
            endpoints=["127.0.0.1:9"],
            private_key=keys.private,
            addresses=["10.99.0.2/32"],
            routes=["10.99.0.0/24"],
            persistent_keepalive=0,
        )
    )


@dataclass
class Harness:
    """The service under test and how to reach it."""

    service: TunnelService
    portal: BlockingPortal
    path: Path
    credentials: dict[str, PeerCredentials] = field(default_factory=dict)
    done: Any = None

    def raw(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(str(self.path))
        return sock

    def stop(self) -> None:
        if self.done is not None and not self.done.done():
            self.portal.call(self.service.stop)
            self.done.result(timeout=20)


def send_raw(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack(">I", len(payload)) + payload)


def recv_frame(sock: socket.socket) -> dict[str, Any] | None:
    """The next frame's JSON object, or None at the end of the connection."""
    header = _recv(sock, 4)
    if header is None:
        return None
    (length,) = struct.unpack(">I", header)
    body = _recv(sock, length)
    assert body is not None, "connection closed inside a frame"
    return json.loads(body)  # type: ignore[no-any-return]


def _recv(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            assert not data, "connection closed inside a frame"
            return None
        data += chunk
    return data


def hello(sock: socket.socket) -> dict[str, Any]:
    request = p.Hello(id=1, protocol_version=p.PROTOCOL_VERSION, client="test")
    send_raw(sock, request.model_dump_json().encode())
    reply = recv_frame(sock)
    assert reply is not None and reply["type"] == "Welcome", reply
    return reply


def start_service(
    tmp_path: Path, *, token_file: str | None = None, **kwargs: Any
) -> Iterator[Harness]:
    state = tmp_path / "state"
    token_path = tmp_path / "token"
    if token_file is not None:
        token_path.write_text(token_file)
        token_path.chmod(0o600)
    settings = load_settings(
        {"tun_backend": "fake", "dns_control": "disabled", "state_dir": state,
         "token_path": token_path, "service_socket": tmp_path / "run" / "tunnel.sock",
         "disable_plugin_autoload": True},
        model=TunnelServiceSettings,
    )  # fmt: skip
    credentials: dict[str, PeerCredentials] = {}

    def fake_credentials(stream: Any) -> PeerCredentials:
        """The test's choice (``credentials["next"]``), else a member of the group."""
        member = PeerCredentials(pid=os.getpid(), uid=4000, gid=4000, groups=(os.getgid(),))
        return credentials.get("next", member)

    service = TunnelService(
        App(settings),
        settings,
        device_id="test-device",
        source=ConfigSource(None, token_path),
        group_gid=os.getgid(),
        interface="tpsvc0",
        credentials=kwargs.pop("credentials", fake_credentials),
        handle_signals=False,
        stats_interval=0.1,
        **kwargs,
    )
    with start_blocking_portal("asyncio") as portal:
        future, _ = portal.start_task(service.serve)
        harness = Harness(service, portal, settings.service_socket, credentials, future)
        try:
            yield harness
        finally:
            harness.stop()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    yield from start_service(tmp_path)
