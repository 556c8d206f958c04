"""The gateway's DNS server for DNS resources, against a real upstream (a dnspython server on
127.0.0.1): proxy answers installed before they are sent, REFUSED outside the client's
resources, NXDOMAIN passed through, SERVFAIL without an upstream, silence to strangers."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path

import anyio
import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.core.gateway._records import client
from tunplug.exceptions import ConfigError
from tunplug.gateway.access import AccessState, Snapshot
from tunplug.gateway.dns_server import (
    MAX_TTL,
    DnsServer,
    Resolver,
    Upstream,
    parse_upstreams,
    resolv_conf_servers,
)
from tunplug.gateway.registry import ClientRecord
from tunplug.resources import PROXY_V4, PROXY_V6, Resource, parse_port_rules, parse_target
from tunplug.testing.dns_server import StaticDnsServer

pytestmark = pytest.mark.anyio

GATEWAY = (IPv4Address("100.64.0.1"), IPv6Address("fd7a:7470:6c67::1"))
RECORDS = {
    "db.corp.example": ["10.10.0.7", "fd10::7"],
    "*.corp.example": ["10.10.0.8"],
    "alias.corp.example": ["db.corp.example"],
    "evil.corp.example": ["100.64.0.3", "10.10.0.9"],
    "public.example": ["192.0.2.1"],
}


LAPTOP = client("laptop", "100.64.0.2", "fd7a:7470:6c67::2")
PHONE = client("phone", "100.64.0.3", "fd7a:7470:6c67::3")
CORP = Resource(
    "*.corp.example", parse_target("*.corp.example"), parse_port_rules(["tcp/443"]), ("eng",)
)


class RecordingFirewall:
    def __init__(self) -> None:
        self.installed: dict[str, frozenset[str]] = {}

    def update(self, contents: Mapping[str, frozenset[str]]) -> bool:
        self.installed = dict(contents)
        return True


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[StaticDnsServer, int]]:
    server = StaticDnsServer(RECORDS, ttl=300)
    async with anyio.create_task_group() as tasks:
        port = await tasks.start(server.serve, "127.0.0.1", 0)
        yield server, port
        tasks.cancel_scope.cancel()


def gateway_dns(
    port: int, *clients: ClientRecord
) -> tuple[DnsServer, AccessState, RecordingFirewall]:
    firewall = RecordingFirewall()
    state = AccessState(GATEWAY, (), firewall)
    state.load(Snapshot(1, list(clients or (LAPTOP, PHONE)), [CORP], {"laptop": ("eng",)}))
    server = DnsServer(
        state,
        Resolver([Upstream("127.0.0.1", port)], timeout=0.5),
        forbidden=(ip_network("100.64.0.0/11"), PROXY_V4, PROXY_V6),
    )
    return server, state, firewall


async def ask(server: DnsServer, name: str, rdtype: str = "A", source: str = "100.64.0.2"):
    wire = await server.handle(dns.message.make_query(name, rdtype).to_wire(), source)
    return None if wire is None else dns.message.from_wire(wire)


def addresses(response: dns.message.Message) -> list[str]:
    return [rdata.address for rrset in response.answer for rdata in rrset]


async def test_a_resource_name_is_answered_with_a_proxy_address_installed_first(upstream, caplog):
    caplog.set_level(logging.INFO, "tunplug.gateway.dns_server")
    server, _, firewall = gateway_dns(upstream[1])
    response = await ask(server, "DB.corp.example.")
    assert response.rcode() == dns.rcode.NOERROR
    assert addresses(response) == ["100.96.0.1"]
    assert response.answer[0].ttl == MAX_TTL
    assert firewall.installed["proxy4"] == {"100.96.0.1 : 10.10.0.7"}
    assert firewall.installed["access4_port"] == {"100.64.0.2 . 100.96.0.1 . tcp . 443"}
    assert (
        "client laptop: db.corp.example -> 10.10.0.7 as 100.96.0.1 (resource *.corp.example)"
        in caplog.messages
    )
    # The same answer again: the same proxy, no second log line.
    assert addresses(await ask(server, "db.corp.example")) == ["100.96.0.1"]
    assert len([m for m in caplog.messages if "as 100.96.0.1" in m]) == 1
    v6 = await ask(server, "db.corp.example", "AAAA")
    assert addresses(v6) == ["fd7a:7470:6c67:d5::1"]
    assert firewall.installed["access6_port"] == {
        "fd7a:7470:6c67::2 . fd7a:7470:6c67:d5::1 . tcp . 443"
    }


async def test_a_cname_chain_is_flattened_and_a_wildcard_covers_any_name(upstream):
    server, _, _ = gateway_dns(upstream[1])
    response = await ask(server, "alias.corp.example")
    assert [rrset.name.to_text() for rrset in response.answer] == ["alias.corp.example."]
    assert addresses(response) == ["100.96.0.1"]
    assert addresses(await ask(server, "anything.corp.example")) == ["100.96.0.2"]


async def test_names_outside_the_clients_resources_are_refused(upstream):
    server, _, _ = gateway_dns(upstream[1])
    assert (await ask(server, "public.example")).rcode() == dns.rcode.REFUSED
    # phone is not in the resource's group.
    assert (await ask(server, "db.corp.example", source="100.64.0.3")).rcode() == dns.rcode.REFUSED
    assert upstream[0].queries == []


async def test_other_types_get_no_records_and_nxdomain_passes_through(upstream):
    server, _, firewall = gateway_dns(upstream[1])
    mx = await ask(server, "db.corp.example", "MX")
    assert mx.rcode() == dns.rcode.NOERROR and mx.answer == []
    gone = await ask(server, "corp.example.")  # covered by the wildcard, unknown upstream
    assert gone.rcode() == dns.rcode.NXDOMAIN and gone.answer == []
    assert firewall.installed == {}


async def test_addresses_in_the_client_subnet_are_left_out_of_the_answer(upstream):
    server, _, firewall = gateway_dns(upstream[1])
    assert addresses(await ask(server, "evil.corp.example")) == ["100.96.0.1"]
    assert firewall.installed["proxy4"] == {"100.96.0.1 : 10.10.0.9"}


async def test_a_source_that_is_not_a_client_gets_no_answer(upstream):
    server, _, _ = gateway_dns(upstream[1])
    assert await ask(server, "db.corp.example", source="10.0.0.1") is None
    assert await server.handle(b"\x00garbage", "100.64.0.2") is None


async def test_no_upstream_answering_is_servfail():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    server, _, _ = gateway_dns(port)
    with anyio.fail_after(5):
        assert (await ask(server, "db.corp.example")).rcode() == dns.rcode.SERVFAIL
    nobody = DnsServer(server.authority, Resolver([]))
    assert (await ask(nobody, "db.corp.example")).rcode() == dns.rcode.SERVFAIL


async def test_the_server_answers_over_udp_on_its_addresses(upstream):
    local = client("local", "127.0.0.1", "::1")
    server, state, _ = gateway_dns(upstream[1], local)
    state.client_groups["local"] = ("eng",)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with anyio.create_task_group() as tasks:
        await tasks.start(server.serve, [ip_address("127.0.0.1"), ip_address("::1")], port)
        query = dns.message.make_query("db.corp.example", "A")
        response = await dns.asyncquery.udp(query, "127.0.0.1", timeout=3, port=port)
        assert addresses(response) == ["100.96.0.1"]
        tasks.cancel_scope.cancel()


def test_upstream_servers_are_addresses_with_an_optional_port(tmp_path: Path):
    assert parse_upstreams("10.0.0.53, fd00::53,10.0.0.54:5353,[fd00::54]:5353, [fd00::55]") == [
        Upstream("10.0.0.53"),
        Upstream("fd00::53"),
        Upstream("10.0.0.54", 5353),
        Upstream("fd00::54", 5353),
        Upstream("fd00::55"),
    ]
    # "²" is a digit to str.isdigit() but not to int(): one line, not a ValueError.
    for bad in ("dns.example", "10.0.0.53:0", "[fd00::1]:x", "10.0.0.1:70000", "10.0.0.1:²"):
        with pytest.raises(ConfigError, match="--dns-upstream"):
            parse_upstreams(bad)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# a comment\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nsearch x\n")
    assert resolv_conf_servers(resolv) == [Upstream("127.0.0.53"), Upstream("fe80::1")]
    assert resolv_conf_servers(tmp_path / "missing") == []
    assert str(Upstream("fd00::54", 5353)) == "[fd00::54]:5353"
