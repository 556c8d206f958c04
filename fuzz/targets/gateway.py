"""The gateway's control inputs: the HTTP request head of ``/healthz``, ``/readyz`` and
``/metrics`` (:func:`tunplug.gateway.server.parse_request_head`), and what an operator types
into ``init``, ``client add``, ``resource add`` and ``run``
(:mod:`tunplug.gateway.validation`, :mod:`tunplug.resources`,
:func:`tunplug.gateway.server.parse_address`).

Input: the first byte picks the function, the rest is its argument; command-line arguments are
decoded with ``surrogateescape`` as Python decodes ``sys.argv``; NUL separates list items.

Contract: ``parse_request_head`` never raises (it sees any bytes a TCP client sends); the
validators and ``parse_address`` document ``ConfigError`` only.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

from tunplug.exceptions import ConfigError
from tunplug.gateway import validation
from tunplug.gateway.resource_store import check_network
from tunplug.gateway.server import MAX_REQUEST, parse_address, parse_request_head
from tunplug.resources import name_matches, parse_port_rules, parse_target, routing_domain

HANDLED: tuple[type[BaseException], ...] = (ConfigError,)

_SUBNET_V4 = IPv4Network("100.64.0.0/16")
_SUBNET_V6 = IPv6Network("fd7a:115c:a1e0::/64")


def _http(head: bytes) -> None:
    method, path = parse_request_head(head[:MAX_REQUEST])
    assert b" " not in method and " " not in path


def _argument(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _items(data: bytes) -> list[str]:
    return [_argument(item) for item in data.split(b"\0")]


def _subnets(data: bytes) -> None:
    v4, _, v6 = data.partition(b"\0")
    network_v4, network_v6 = validation.validate_subnets(_argument(v4), _argument(v6))
    assert network_v6.num_addresses >= network_v4.num_addresses


def _resources(data: bytes) -> None:
    """``resource add TARGET --port ...``: what is accepted reads back the same, and a name
    that matches the pattern is one the client would send to the gateway."""
    target_text, _, rules_text = data.partition(b"\0")
    rules = parse_port_rules(_items(rules_text))
    assert all(str(parse_port_rules([str(rule)])[0]) == str(rule) for rule in rules)
    target = parse_target(_argument(target_text))
    check_network(target, _SUBNET_V4, _SUBNET_V6)
    assert str(parse_target(str(target))) == str(target)
    if target.network is not None:
        subnet = _SUBNET_V4 if target.network.version == 4 else _SUBNET_V6
        assert not target.network.overlaps(subnet)
    if target.pattern is not None:
        example = target.pattern.replace("*", "x")
        assert name_matches(target.pattern, example)
        assert example.endswith(routing_domain(target.pattern))


def _endpoint(data: bytes) -> None:
    endpoint = validation.validate_endpoint(_argument(data))
    host, _, port = endpoint.rpartition(":")
    assert host and 1 <= int(port) <= 65535


def _address(data: bytes) -> None:
    host, port = parse_address(_argument(data))
    assert host and 0 < port < 65536


def _name(data: bytes) -> None:
    assert validation.validate_client_name(_argument(data))


def _dns(data: bytes) -> None:
    assert len(validation.validate_dns(_items(data))) == data.count(b"\0") + 1


_FUNCTIONS = (_http, _name, _endpoint, _subnets, _resources, _dns, _address)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    function = _FUNCTIONS[data[0] % len(_FUNCTIONS)]
    try:
        function(data[1:])
    except HANDLED:
        if function is _http:
            raise
