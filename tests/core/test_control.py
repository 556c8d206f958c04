"""The control channel's client: views applied to a running tunnel (a runner with a recording
TUN and DNS manager), the long-poll loop against a fake HTTP server on 127.0.0.1, the stub
resolver's routing with fake upstreams on 127.0.0.x, resolvectl commands for routing domains,
NRPT rules, and the service protocol's new messages."""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any

import anyio
import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest

from tunplug.app import App
from tunplug.cli.ctl import format_status
from tunplug.config import TunplugSettings, load_settings
from tunplug.control import ControlChannel, ControlError, describe, fetch_view, view_config
from tunplug.dns import DnsManager, DnsSettings
from tunplug.live_tunnel import Applied, RoutingDns
from tunplug.node import InterfaceHooks, _Runner
from tunplug.resources import ClientView, ResourceView
from tunplug.service import protocol as p
from tunplug.wgquick import parse_wg_quick
from tunplug_dns.nrpt import WindowsNrpt
from tunplug_dns.resolv_conf import EtcResolvConf
from tunplug_dns.stub import StubResolver, StubRoutes

pytestmark = pytest.mark.anyio

Network = IPv4Network | IPv6Network
KEY = base64.b64encode(os.urandom(32)).decode()
GATEWAY_KEY = base64.b64encode(os.urandom(32)).decode()
TOKEN_CONFIG = f"""[Interface]
PrivateKey = {KEY}
Address = 100.64.0.2/32

[Peer]
PublicKey = {GATEWAY_KEY}
Endpoint = 192.0.2.1:51820
AllowedIPs = 100.64.0.1/32, fd00::1/128
"""
BASE_ROUTES = ["100.64.0.1/32", "fd00::1/128"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def view(version: int, *resources: tuple[str, str], internet: bool = False) -> ClientView:
    routes = list(BASE_ROUTES)
    domains = []
    for _, target in resources:
        if target[0].isdigit():
            routes.append(target)
        else:
            domains.append(target.removeprefix("*."))
    if domains:
        routes += ["100.96.0.0/11", "fd7a:7470:6c67:d5::/64"]
    return ClientView(
        version=version,
        routes=routes,
        dns_servers=["100.64.0.1"] if domains else [],
        dns_domains=domains,
        resources=[
            ResourceView(name=name, kind="cidr" if t[0].isdigit() else "dns", target=t)
            for name, t in resources
        ]
        + ([ResourceView(name="internet", kind="internet", target="internet")] if internet else []),
        internet=internet,
    )


class RecordingTun:
    name = "tpctl0"

    def __init__(self) -> None:
        self.routes: list[Network] = []
        self.calls: list[tuple[str, list[Network]]] = []
        self.full_tunnel: list[Network] = []

    async def add_routes(self, networks: Sequence[Network]) -> None:
        self.calls.append(("add", list(networks)))
        self.routes += [n for n in networks if n not in self.routes]

    async def remove_routes(self, networks: Sequence[Network]) -> None:
        self.calls.append(("remove", list(networks)))
        self.routes = [n for n in self.routes if n not in networks]
        self.full_tunnel = [n for n in self.full_tunnel if n not in networks]

    async def route_all_traffic(self, networks: Sequence[Network], mark: int) -> None:
        self.calls.append(("all", list(networks)))
        self.full_tunnel = list(networks)


class RecordingDns(DnsManager):
    name = "recording"

    def __init__(self) -> None:
        super().__init__(Path("/nonexistent"))
        self.active: DnsSettings | None = None
        self.activations: list[DnsSettings] = []

    async def activate(self, settings: DnsSettings) -> None:
        self.active = settings
        self.activations.append(settings)

    async def deactivate(self) -> None:
        self.active = None


def make_runner(*, mark_socket: bool = True) -> tuple[_Runner, RecordingTun, RecordingDns]:
    settings = load_settings(
        {"tun_backend": "fake", "data_path": "python", "disable_plugin_autoload": True},
        model=TunplugSettings,
    )
    dns_manager = RecordingDns()
    hooks = InterfaceHooks(dns=dns_manager, mark_socket=mark_socket)
    config = parse_wg_quick(TOKEN_CONFIG, "token")
    runner = _Runner(App(settings), config, "tpctl0", "client", hooks)
    tun = RecordingTun()
    runner.tun = tun  # type: ignore[assignment]
    runner.engine = object()  # type: ignore[assignment]
    return runner, tun, dns_manager


class FakeControl:
    """A control channel on 127.0.0.1: ``GET /v1/view`` and the long poll on ``since``."""

    def __init__(self, first: ClientView, hold: float = 2.0) -> None:
        self.view = first
        self.hold = hold
        self.changed = anyio.Event()
        self.requests: list[str] = []
        self.status = 200

    def publish(self, new: ClientView) -> None:
        self.view = new
        self.changed.set()
        self.changed = anyio.Event()

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            target = data.split(b" ")[1].decode()
            self.requests.append(target)
            if "since=" in target and self.status == 200:
                since = int(target.rpartition("=")[2])
                with anyio.move_on_after(self.hold):
                    while self.view.version == since:
                        await self.changed.wait()
            body = self.view.model_dump_json().encode() if self.status == 200 else b"no"
            head = f"HTTP/1.1 {self.status} X\r\nContent-Length: {len(body)}\r\n\r\n"
            await stream.send(head.encode() + body)


@asynccontextmanager
async def control_server(first: ClientView) -> AsyncIterator[tuple[FakeControl, tuple[str, int]]]:
    fake = FakeControl(first)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, fake.handle)
        yield fake, ("127.0.0.1", port)
        tasks.cancel_scope.cancel()


async def wait_until(check: Any, limit: float = 3.0) -> None:
    with anyio.fail_after(limit):
        while not check():  # noqa: ASYNC110 (polling the state of another task is the test)
            await anyio.sleep(0.01)


# -- applying views ----------------------------------------------------------------------------
def test_view_config_keeps_keys_addresses_and_endpoint_and_takes_the_views_networks():
    config = parse_wg_quick(TOKEN_CONFIG, "token")
    new = view_config(config, view(1, ("db", "10.9.0.0/16"), internet=True), internet=True)
    assert new.private_key == config.private_key and new.addresses == config.addresses
    assert new.peers[0].endpoint == config.peers[0].endpoint
    assert ip_network("10.9.0.0/16") in new.peers[0].allowed_ips
    assert ip_network("0.0.0.0/0") in new.peers[0].allowed_ips
    without = view_config(config, view(1, internet=True), internet=False)
    assert ip_network("0.0.0.0/0") not in without.peers[0].allowed_ips


def test_the_log_line_names_resources_routes_and_dns():
    old = view(1, ("old", "10.9.0.0/16"))
    new = view(2, ("db", "*.corp.example"))
    applied = Applied(
        routes_added=(ip_network("10.1.0.0/16"),) * 2,
        routes_removed=(ip_network("10.9.0.0/16"),),
        dns_changed=True,
    )
    assert describe(old, new, applied, None) == (
        "resources: +db (*.corp.example), -old (10.9.0.0/16); routes +2 -1; "
        "DNS corp.example via 100.64.0.1"
    )
    assert describe(new, new, Applied(), None) is None


async def test_views_change_the_running_tunnel_without_new_sessions(caplog):
    caplog.set_level(logging.INFO, "tunplug.control")
    runner, tun, dns_manager = make_runner()
    peer_before = runner.device._peers[runner.config.peers[0].public_key]
    control = ControlChannel(("127.0.0.1", 1))
    control._tunnel = runner
    await control._apply(view(1, ("net", "10.9.0.0/16"), ("db", "*.corp.example")))
    assert ip_network("10.9.0.0/16") in tun.routes and ip_network("100.96.0.0/11") in tun.routes
    assert dns_manager.active is not None
    assert dns_manager.active.routing_domains == ("corp.example",)
    assert dns_manager.active.routing_servers == (ip_address("100.64.0.1"),)
    assert dns_manager.active.servers == ()
    (stats,) = runner.device.peer_stats()
    assert ip_network("10.9.0.0/16") in stats.allowed_ips
    assert runner.device._peers[runner.config.peers[0].public_key] is peer_before
    # The endpoint the device uses now (roamed, failed over) is not reset by a view.
    runner.device._peers[runner.config.peers[0].public_key].endpoint = ("192.0.2.9", 51820)

    activations = len(dns_manager.activations)
    await control._apply(view(2, ("db", "*.corp.example"), ("web", "10.8.0.0/24")))
    assert ip_network("10.9.0.0/16") not in tun.routes and ip_network("10.8.0.0/24") in tun.routes
    assert len(dns_manager.activations) == activations  # DNS unchanged: not applied again
    assert runner.device.peer_stats()[0].endpoint == ("192.0.2.9", 51820)
    assert "resources: +web (10.8.0.0/24), -net (10.9.0.0/16); routes +1 -1" in caplog.text

    await control._apply(view(3, ("web", "10.8.0.0/24")))
    assert dns_manager.active is None  # no routing domains left, no servers: DNS put back
    assert ip_network("100.96.0.0/11") not in tun.routes


async def test_the_internet_resource_turns_the_full_tunnel_on_and_off_at_run_time():
    runner, tun, _ = make_runner()
    runner.mark = 51820
    control = ControlChannel(("127.0.0.1", 1), internet=False)
    control._tunnel = runner
    await control._apply(view(1, internet=True))
    assert tun.full_tunnel == [] and not control.internet_active
    await control.set_internet(True)
    assert tun.full_tunnel == [ip_network("0.0.0.0/0"), ip_network("::/0")]
    assert control.internet_active and runner.full_tunnel
    assert ip_network("0.0.0.0/0") not in tun.routes  # main table: only the specific routes
    await control._apply(view(2, internet=False))  # the gateway withdrew it
    assert tun.full_tunnel == [] and not control.internet_active and not runner.full_tunnel
    assert control.internet_status() == p.InternetResourceStatus(requested=True)


async def test_without_a_marked_socket_the_full_tunnel_is_refused():
    runner, _, _ = make_runner(mark_socket=False)
    runner.mark = None
    control = ControlChannel(("127.0.0.1", 1), internet=True)
    control._tunnel = runner
    with pytest.raises(Exception, match="full tunnel"):
        await control._apply(view(1, internet=True))


# -- the long poll -----------------------------------------------------------------------------
async def test_the_loop_fetches_applies_and_follows_changes_by_long_poll():
    runner, tun, _ = make_runner()
    async with control_server(view(1, ("net", "10.9.0.0/16"))) as (fake, address):
        control = ControlChannel(address, retry=(0.05, 0.2))
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(control.run, runner)
            await wait_until(lambda: ip_network("10.9.0.0/16") in tun.routes)
            await wait_until(lambda: any("since=1" in r for r in fake.requests))
            started = anyio.current_time()
            fake.publish(view(2, ("net", "10.7.0.0/16")))
            await wait_until(lambda: ip_network("10.7.0.0/16") in tun.routes)
            assert anyio.current_time() - started < 0.5  # the held request answered at once
            assert ip_network("10.9.0.0/16") not in tun.routes
            tasks.cancel_scope.cancel()
    assert fake.requests[0] == "/v1/view"


async def test_failures_are_retried_and_logged_once_per_state(caplog):
    caplog.set_level(logging.INFO, "tunplug.control")
    runner, tun, _ = make_runner()
    async with control_server(view(1, ("net", "10.9.0.0/16"))) as (fake, address):
        fake.status = 403
        control = ControlChannel(address, retry=(0.02, 0.05))
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(control.run, runner)
            await wait_until(lambda: len(fake.requests) >= 5)
            fake.status = 200
            await wait_until(lambda: ip_network("10.9.0.0/16") in tun.routes)
            tasks.cancel_scope.cancel()
    assert caplog.text.count("refused this client (403)") == 1
    assert caplog.text.count("control channel: working again") == 1


async def test_fetch_view_says_why_it_failed():
    with pytest.raises(ControlError, match=r"cannot connect to 127\.0\.0\.1:1"):
        await fetch_view(("127.0.0.1", 1))


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        (b"HTTP/1.1 \xb200 OK\r\n\r\n", "not an HTTP answer"),  # latin-1: "²00"
        (b"SSH-2.0-x\r\n\r\n", "not an HTTP answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n{}", "no valid view"),
    ],
)
async def test_a_garbled_answer_is_a_control_error_not_a_crash(answer, fragment):
    """Whatever the other end sends ends as ControlError (the loop retries it), never as
    another exception that would end the tunnel."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive()
            await stream.send(answer)

    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, handle)
        with pytest.raises(ControlError, match=fragment):
            await fetch_view(("127.0.0.1", port), answer_timeout=5)
        tasks.cancel_scope.cancel()


# -- the stub resolver -------------------------------------------------------------------------
@contextmanager
def fake_upstream(host: str, answer: str) -> Iterator[list[str]]:
    """A UDP DNS server on ``host``:0 answering every A query with ``answer``."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(0.1)
    asked: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, client = sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            asked.append(str(query.question[0].name))
            response = dns.message.make_response(query)
            response.answer.append(
                dns.rrset.from_text(query.question[0].name, 60, "IN", "A", answer)
            )
            sock.sendto(response.to_wire(), client)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    asked.insert(0, str(sock.getsockname()[1]))
    try:
        yield asked
    finally:
        stop.set()
        thread.join()
        sock.close()


def test_the_stub_sends_routing_domains_to_the_gateway_and_the_rest_to_the_original():
    with (
        fake_upstream("127.0.0.11", "100.96.0.5") as gateway,
        fake_upstream("127.0.0.12", "192.0.2.80") as original,
    ):
        routes = StubRoutes(
            routing_domains=("corp.example",),
            routing_servers=(("127.0.0.11", int(gateway.pop(0))),),
            default_servers=(("127.0.0.12", int(original.pop(0))),),
        )
        stub = StubResolver(routes, ("127.0.0.13", 0))
        stub.start()
        try:
            host, port = stub.address

            def ask(name: str, tcp: bool = False) -> str:
                query = dns.message.make_query(name, "A")
                send = dns.query.tcp if tcp else dns.query.udp
                return str(send(query, host, port=port, timeout=3).answer[0][0])

            assert ask("db.corp.example") == "100.96.0.5"
            assert ask("corp.example") == "100.96.0.5"
            assert ask("www.example.org") == "192.0.2.80"
            assert ask("notcorp.example") == "192.0.2.80"
            assert ask("x.corp.example", tcp=True) == "100.96.0.5"
        finally:
            stub.stop()
    assert gateway == ["db.corp.example.", "corp.example.", "x.corp.example."]
    assert original == ["www.example.org.", "notcorp.example."]


def test_the_stub_answers_servfail_when_no_upstream_answers():
    routes = StubRoutes(("corp.example",), (("127.0.0.14", 9),), ())
    stub = StubResolver(routes, ("127.0.0.13", 0), timeout=0.2)
    stub.start()
    try:
        query = dns.message.make_query("db.corp.example", "A")
        answer = dns.query.udp(query, "127.0.0.13", port=stub.address[1], timeout=3)
        assert answer.rcode() == dns.rcode.SERVFAIL
    finally:
        stub.stop()


async def test_etc_resolv_conf_names_the_stub_and_restores_the_file(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.12\nsearch lan\noptions ndots:2\n")
    manager = EtcResolvConf(tmp_path / "state", path=resolv, stub_address=("127.0.0.15", 0))
    (tmp_path / "state").mkdir()
    settings = DnsSettings(
        "tpctl0", routing_servers=(ip_address("100.64.0.1"),), routing_domains=("corp.example",)
    )
    await manager.activate(settings)
    try:
        text = resolv.read_text()
        assert "nameserver 127.0.0.15\nsearch lan\noptions ndots:2\n" in text
        assert manager.stub is not None
        assert manager.stub.routes.default_servers == (("127.0.0.12", 53),)
        assert manager.stub.routes.routing_servers == (("100.64.0.1", 53),)
    finally:
        await manager.deactivate()
    assert resolv.read_text() == "nameserver 127.0.0.12\nsearch lan\noptions ndots:2\n"
    assert manager.stub is None


# -- resolvectl and NRPT -----------------------------------------------------------------------
async def test_resolved_sets_routing_domains_and_the_gateway_on_the_link(tmp_path, monkeypatch):
    from tests.plugins.dns.test_resolved import FakeResolvectl
    from tunplug_dns.resolved import SystemdResolved

    fake = FakeResolvectl(tmp_path)
    monkeypatch.setattr(SystemdResolved, "resolvectl", str(fake.dir / "resolvectl"))
    manager = SystemdResolved(tmp_path / "state")
    settings = DnsSettings(
        "tun0", routing_servers=(ip_address("100.64.0.1"),), routing_domains=("corp.example",)
    )
    await manager.activate(settings)
    assert fake.calls() == [
        ["dns", "tun0", "100.64.0.1"],
        ["domain", "tun0", "~corp.example"],
        ["default-route", "tun0", "no"],
    ]


def test_nrpt_has_one_rule_for_the_routing_domains(tmp_path):
    from tunplug_dns.nrpt import LOCAL_POLICY_PATH, MemoryRegistry

    registry = MemoryRegistry()
    manager = WindowsNrpt(tmp_path, registry=registry)
    settings = DnsSettings(
        "tun0",
        servers=(ip_address("10.0.0.53"),),
        routing_servers=(ip_address("100.64.0.1"),),
        routing_domains=("corp.example",),
    )
    manager._activate(settings)
    keys = [
        f"{LOCAL_POLICY_PATH}\\{name}".lower() for name in registry.subkey_names(LOCAL_POLICY_PATH)
    ]
    values = [registry._keys[key][1] for key in keys]
    rules = {v["Name"].data: v["GenericDNSServers"].data for v in values}
    assert rules == {(".corp.example",): "100.64.0.1", (".",): "10.0.0.53"}


# -- the service protocol and status -----------------------------------------------------------
def test_set_internet_resource_and_the_status_fields_round_trip():
    request = p.decode_request(b'{"type": "SetInternetResource", "id": 4, "active": true}')
    assert request == p.SetInternetResource(id=4, active=True)
    status = p.TunnelStatus(
        state="connected",
        interface="tunplug0",
        control="100.64.0.1:51820",
        resources=[
            p.ResourceStatus(
                name="db", kind="dns", target="*.corp.example", ports=["tcp/5432"], reachable=True
            )
        ],
        internet_resource=p.InternetResourceStatus(offered=True, requested=True, active=True),
    )
    frame = p.encode(p.StatusReply(id=1, status=status))
    assert p.decode_reply(frame[4:]) == p.StatusReply(id=1, status=status)
    text = format_status(status)
    assert "  resource db: dns *.corp.example tcp/5432, reachable" in text
    assert "  internet resource: active (requested)" in text
    assert json.loads(status.model_dump_json())["internet_resource"]["active"] is True


async def test_routing_dns_alone_activates_dns_at_start():
    runner, _, _ = make_runner()
    runner.routing_dns = RoutingDns((ip_address("100.64.0.1"),), ("corp.example",))
    assert runner._wants_dns(runner.config)
