"""A TCP exchange crosses a real WireGuard tunnel between fake devices; both flow logs agree."""

from __future__ import annotations

import anyio
import pytest

from tunplug.config import load_settings
from tunplug.events import TunnelInfo
from tunplug.testing.tunnel import open_tunnel_pair
from tunplug_crypto_cryptography.backend import CryptographyBackend
from tunplug_flowlog.plugin import FlowLogSettings

from ._helpers import ACK, FIN, PSH, SYN, read_log, tcp

pytestmark = pytest.mark.anyio

CLIENT, GATEWAY = "10.99.0.2", "10.99.0.1"  # open_tunnel_pair's addresses


async def test_the_gateway_logs_the_clients_tcp_transfer_with_exact_counts(
    tunplug_plugin_host, tmp_path
):
    host = tunplug_plugin_host(builtins=["flow-log"])
    settings = load_settings({"flow_logs": tmp_path}, plugins=[FlowLogSettings], environ={})
    names = {CLIENT: "laptop"}
    gateway_info = TunnelInfo("gateway-fake", "fake", "gateway", peer_name=names.get)
    client_info = TunnelInfo("client-fake", "fake", "client")
    c, g = CLIENT, GATEWAY
    # (sender, segment): the client uploads 3000 bytes, the gateway answers 1200 + 800.
    exchange = [
        ("client", tcp(c, g, 45000, 8080, SYN)),
        ("gateway", tcp(g, c, 8080, 45000, SYN | ACK)),
        ("client", tcp(c, g, 45000, 8080, ACK)),
        *[("client", tcp(c, g, 45000, 8080, ACK, bytes([n]) * 1000)) for n in range(3)],
        ("gateway", tcp(g, c, 8080, 45000, ACK, b"r" * 1200)),
        ("gateway", tcp(g, c, 8080, 45000, PSH | ACK, b"s" * 800)),
        ("client", tcp(c, g, 45000, 8080, FIN | ACK)),
        ("gateway", tcp(g, c, 8080, 45000, FIN | ACK)),
        ("client", tcp(c, g, 45000, 8080, ACK)),
    ]
    async with open_tunnel_pair(
        CryptographyBackend(),
        client_pipeline=host.pipeline(settings, client_info),
        gateway_pipeline=host.pipeline(settings, gateway_info),
    ) as pair:
        with anyio.fail_after(10):
            for sender, segment in exchange:
                source, sink = (
                    (pair.client, pair.gateway)
                    if sender == "client"
                    else (pair.gateway, pair.client)
                )
                await source.tun.inject([segment])
                assert await sink.tun.delivered(1) == [segment]

    lines = [line for line in read_log(tmp_path) if line["protocol"] == "tcp"]
    by_side = {line["interface"]: line for line in lines}
    assert len(lines) == 2 and set(by_side) == {"gateway-fake", "client-fake"}
    up = sum(len(s) for who, s in exchange if who == "client")
    down = sum(len(s) for who, s in exchange if who == "gateway")

    gateway = by_side["gateway-fake"]
    assert (gateway["src"], gateway["sport"], gateway["dst"], gateway["dport"]) == (
        CLIENT,
        45000,
        GATEWAY,
        8080,
    )
    assert (gateway["client"], gateway["role"], gateway["reason"]) == ("laptop", "gateway", "fin")
    assert (gateway["payload_in"], gateway["payload_out"]) == (3000, 2000)
    assert (gateway["bytes_in"], gateway["bytes_out"]) == (up, down)
    assert (gateway["packets_in"], gateway["packets_out"]) == (7, 4)

    client = by_side["client-fake"]
    assert (client["src"], client["dst"], client["client"], client["reason"]) == (
        CLIENT,
        GATEWAY,
        GATEWAY,  # no peer_name on the client side: the far address
        "fin",
    )
    assert (client["payload_out"], client["payload_in"]) == (3000, 2000)
    assert (client["bytes_out"], client["bytes_in"]) == (up, down)
