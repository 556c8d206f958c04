"""The resource model: targets, port rules, name matching, and the view a client is sent."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_network

import pytest

from tunplug.exceptions import ConfigError
from tunplug.resources import (
    PROXY_V4,
    PROXY_V6,
    ClientView,
    PortRule,
    Resource,
    client_view,
    name_matches,
    parse_port_rules,
    parse_target,
    routing_domain,
)

GATEWAY = (IPv4Address("100.64.0.1"), IPv6Address("fd7a:7470:6c67::1"))


@pytest.mark.parametrize(
    ("text", "kind", "shown"),
    [
        ("10.10.0.0/16", "cidr", "10.10.0.0/16"),
        ("10.10.0.7", "cidr", "10.10.0.7/32"),
        ("fd10::/64", "cidr", "fd10::/64"),
        ("fd10::7", "cidr", "fd10::7/128"),
        ("DB.Internal.", "dns", "db.internal"),
        ("*.corp.example", "dns", "*.corp.example"),
        ("Internet", "internet", "internet"),
    ],
)
def test_targets_are_recognised_and_normalised(text, kind, shown):
    target = parse_target(text)
    assert (target.kind, str(target)) == (kind, shown)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("10.10.0.300", "not a network"),
        ("10.10.0.1/16", "host bits set"),
        ("0.0.0.0/0", "'internet'"),
        ("db", "at least two labels"),
        ("*.", "not a DNS name"),
        ("a.*.example", "not a DNS name"),
        ("bad_host!.example", "not a DNS name"),
        ("x." * 130 + "example", "not a DNS name"),
    ],
)
def test_bad_targets_are_one_line_errors(text, fragment):
    with pytest.raises(ConfigError) as info:
        parse_target(text)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_port_rules():
    assert parse_port_rules(["tcp/443", "udp/53,icmp", "tcp/8000-8100", "TCP/443", "udp"]) == (
        PortRule("tcp", 443, 443),
        PortRule("udp", 53, 53),
        PortRule("icmp"),
        PortRule("tcp", 8000, 8100),
        PortRule("udp"),
    )
    assert [str(r) for r in parse_port_rules(["tcp/8000-8100", "tcp/22", "icmp"])] == [
        "tcp/8000-8100",
        "tcp/22",
        "icmp",
    ]
    for bad in ("tcp/0", "tcp/70000", "tcp/90-80", "icmp/8", "ftp", "tcp/", "tcp/²"):
        with pytest.raises(ConfigError, match="--port"):
            parse_port_rules([bad])


def test_wildcards_match_the_domain_and_everything_under_it():
    assert name_matches("*.corp.example", "db.corp.example.")
    assert name_matches("*.corp.example", "a.b.CORP.example")
    assert name_matches("*.corp.example", "corp.example")
    assert not name_matches("*.corp.example", "notcorp.example")
    assert not name_matches("*.corp.example", "corp.example.org")
    assert name_matches("db.internal", "DB.internal.")
    assert not name_matches("db.internal", "x.db.internal")
    assert routing_domain("*.corp.example") == "corp.example"
    assert routing_domain("db.internal") == "db.internal"


def resource(target: str, *groups: str, ports: tuple[str, ...] = ()) -> Resource:
    return Resource(target, parse_target(target), parse_port_rules(ports), groups)


def test_a_client_sees_only_the_resources_of_its_groups():
    resources = [
        resource("10.10.0.0/16"),
        resource("10.20.0.0/16", "eng"),
        resource("*.corp.example", "eng", ports=("tcp/443",)),
        resource("db.internal"),
        resource("internet", "exit"),
    ]
    everyone = client_view(5, resources, (), GATEWAY)
    assert everyone.version == 5
    assert [r.name for r in everyone.resources] == ["10.10.0.0/16", "db.internal"]
    assert everyone.routes == [
        "100.64.0.1/32",
        "fd7a:7470:6c67::1/128",
        "10.10.0.0/16",
        str(PROXY_V4),
        str(PROXY_V6),
    ]
    assert (everyone.dns_servers, everyone.dns_domains) == (["100.64.0.1"], ["db.internal"])
    assert not everyone.internet

    eng = client_view(5, resources, ("eng", "exit"), GATEWAY, [IPv4Address("10.10.0.53")])
    assert [r.name for r in eng.resources] == [r.name for r in resources]
    assert eng.dns_domains == ["corp.example", "db.internal"]
    assert eng.default_dns_servers == ["10.10.0.53"]
    assert eng.internet
    assert eng.resources[2].ports == ["tcp/443"]
    # The Internet resource is routed only when the client opted in.
    assert ip_network("0.0.0.0/0") not in eng.networks()
    assert {ip_network("0.0.0.0/0"), ip_network("::/0")} <= set(eng.networks(internet=True))
    assert ip_network("0.0.0.0/0") not in everyone.networks(internet=True)


def test_without_dns_resources_there_is_no_proxy_route_and_no_dns():
    view = client_view(1, [resource("10.10.0.0/16")], (), GATEWAY)
    assert str(PROXY_V4) not in view.routes
    assert view.dns_servers == [] and view.dns_domains == []


def test_the_view_survives_json_and_ignores_fields_it_does_not_know():
    view = client_view(3, [resource("*.corp.example", ports=("tcp/443",))], (), GATEWAY)
    text = view.model_dump_json()
    assert ClientView.model_validate_json(text) == view
    newer = view.model_dump() | {"something_new": 1}
    assert ClientView.model_validate(newer) == view
