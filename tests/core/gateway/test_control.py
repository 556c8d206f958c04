"""The control channel: a client's view as JSON, the long poll (answered when the registry
version moves, or after the timeout), 403 for strangers, 404 for anything else, over real
TCP on loopback."""

from __future__ import annotations

import json
import socket
from ipaddress import IPv4Address, IPv6Address, ip_address

import anyio
import pytest

from tests.core.gateway._records import client
from tunplug.exceptions import TunplugError
from tunplug.gateway import control
from tunplug.gateway.access import AccessState, Snapshot
from tunplug.gateway.control import answer, serve_control
from tunplug.gateway.registry import ClientRecord
from tunplug.resources import ClientView, Resource, parse_port_rules, parse_target

pytestmark = pytest.mark.anyio

GATEWAY = (IPv4Address("100.64.0.1"), IPv6Address("fd7a:7470:6c67::1"))


LAPTOP = client("laptop", "100.64.0.2", "fd7a:7470:6c67::2")
DB = Resource("db", parse_target("10.10.0.0/16"), parse_port_rules(["tcp/5432"]), ("eng",))
CORP = Resource("corp", parse_target("*.corp.example"))


def state(version: int = 3, *clients: ClientRecord) -> AccessState:
    access = AccessState(GATEWAY, (ip_address("10.10.0.53"),))
    access.load(Snapshot(version, list(clients or (LAPTOP,)), [DB, CORP], {"laptop": ("eng",)}))
    return access


async def test_a_client_gets_its_view_as_json_at_once():
    status, content_type, body = await answer(state(), "100.64.0.2", b"GET", "/v1/view")
    assert (status, content_type) == ("200 OK", "application/json")
    view = ClientView.model_validate_json(body)
    assert view.version == 3
    assert view.routes == [
        "100.64.0.1/32",
        "fd7a:7470:6c67::1/128",
        "10.10.0.0/16",
        "100.96.0.0/11",
        "fd7a:7470:6c67:d5::/64",
    ]
    assert view.dns_servers == ["100.64.0.1"] and view.dns_domains == ["corp.example"]
    assert view.default_dns_servers == ["10.10.0.53"]
    assert [(r.name, r.ports) for r in view.resources] == [("db", ["tcp/5432"]), ("corp", [])]
    # Over IPv6 the same client.
    assert (await answer(state(), "fd7a:7470:6c67::2", b"GET", "/v1/view"))[0] == "200 OK"


async def test_strangers_get_403_and_other_requests_404_405_400():
    access = state()
    status, _, body = await answer(access, "100.64.0.9", b"GET", "/v1/view")
    assert status == "403 Forbidden" and body.count(b"\n") == 1 and b"100.64.0.9" in body
    assert (await answer(access, "100.64.0.2", b"GET", "/v2/view"))[0] == "404 Not Found"
    assert (await answer(access, "100.64.0.2", b"GET", ""))[0] == "404 Not Found"
    assert (await answer(access, "100.64.0.2", b"POST", "/v1/view"))[0].startswith("405")
    assert (await answer(access, "100.64.0.2", b"GET", "/v1/view?since=x"))[0].startswith("400")


async def test_a_long_poll_answers_when_the_version_changes():
    access = state(3)
    # An old version: at once.
    with anyio.fail_after(1):
        _, _, body = await answer(access, "100.64.0.2", b"GET", "/v1/view?since=2")
    assert json.loads(body)["version"] == 3
    answers: list[bytes] = []

    async def poll() -> None:
        answers.append((await answer(access, "100.64.0.2", b"GET", "/v1/view?since=3"))[2])

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(poll)
            await anyio.sleep(0.1)
            assert answers == []
            access.load(Snapshot(4, [LAPTOP], [CORP], {}))
            access.notify_changed()
    view = ClientView.model_validate_json(answers[0])
    assert view.version == 4 and [r.name for r in view.resources] == ["corp"]


async def test_a_long_poll_answers_the_unchanged_view_after_the_timeout(monkeypatch):
    monkeypatch.setattr(control, "LONG_POLL_SECONDS", 0.1)
    with anyio.fail_after(2):
        status, _, body = await answer(state(3), "100.64.0.2", b"GET", "/v1/view?since=3")
    assert status == "200 OK" and json.loads(body)["version"] == 3


async def test_a_client_revoked_during_its_long_poll_gets_403():
    access = state(3)
    results: list[str] = []

    async def poll() -> None:
        results.append((await answer(access, "100.64.0.2", b"GET", "/v1/view?since=3"))[0])

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(poll)
            await anyio.sleep(0.05)
            access.load(Snapshot(4, [], [], {}))
            access.notify_changed()
    assert results == ["403 Forbidden"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def http_get(host: str, port: int, path: str) -> bytes:
    async with await anyio.connect_tcp(host, port) as stream:
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())
        data = b""
        while True:
            try:
                data += await stream.receive()
            except anyio.EndOfStream:
                return data


async def test_the_channel_serves_http_over_tcp_and_closes_each_connection():
    access = state(3, client("local", "127.0.0.1", "::1"))
    port = free_port()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            await tasks.start(
                serve_control, access, [ip_address("127.0.0.1"), ip_address("::1")], port
            )
            raw = await http_get("127.0.0.1", port, "/v1/view")
            head, _, body = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"Connection: close" in head and b"Content-Type: application/json" in head
            assert ClientView.model_validate_json(body).version == 3
            assert (await http_get("::1", port, "/v1/view")).startswith(b"HTTP/1.1 200")
            assert (await http_get("127.0.0.1", port, "/nope")).startswith(b"HTTP/1.1 404")
            tasks.cancel_scope.cancel()


async def test_a_taken_port_on_the_first_address_fails_with_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(TunplugError, match=r"control channel: cannot listen on 127\.0\.0\.1:"):
            await serve_control(state(), [ip_address("127.0.0.1")], port)
