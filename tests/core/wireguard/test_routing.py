"""Cryptokey routing: longest-prefix match over AllowedIPs, IPv4 and IPv6, several peers."""

from __future__ import annotations

import ipaddress

from tunplug.wireguard import PeerConfig
from tunplug.wireguard.routing import AllowedIPs

from ._fakenet import FakeNet, ipv4_packet, ipv6_packet


def net_(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def test_longest_prefix_match() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(net_("0.0.0.0/0"), "default")
    table.insert(net_("10.0.0.0/8"), "ten")
    table.insert(net_("10.1.2.0/24"), "lan")
    table.insert(net_("10.1.2.3/32"), "host")
    table.insert(net_("::/0"), "default6")
    table.insert(net_("fd00::/64"), "ula")
    assert table.lookup_address("10.1.2.3") == "host"
    assert table.lookup_address("10.1.2.4") == "lan"
    assert table.lookup_address("10.200.0.1") == "ten"
    assert table.lookup_address("192.0.2.1") == "default"
    assert table.lookup_address("fd00::5") == "ula"
    assert table.lookup_address("fd00:0:0:1::5") == "default6"
    assert table.lookup_destination(ipv4_packet("1.1.1.1", "10.1.2.9")) == "lan"
    assert table.lookup_source(ipv4_packet("10.1.2.3", "1.1.1.1")) == "host"
    assert table.lookup_destination(ipv6_packet("::1", "fd00::1")) == "ula"
    assert table.lookup_source(ipv6_packet("2001:db8::1", "fd00::1")) == "default6"
    assert table.lookup_destination(b"") is None
    assert table.lookup_destination(b"\x45" + bytes(10)) is None  # truncated header
    assert table.lookup_destination(b"\x75" + bytes(40)) is None  # not IP
    assert table.lookup_packed(ipaddress.ip_address("10.1.2.3").packed) == "host"
    assert table.lookup_packed(ipaddress.ip_address("fd00::5").packed) == "ula"
    assert table.lookup_packed(None) is None


def test_prefix_moves_between_values_and_removal() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(net_("10.0.0.0/24"), "a")
    table.insert(net_("10.0.0.0/24"), "b")
    assert table.lookup_address("10.0.0.1") == "b"
    assert table.networks("a") == []
    table.insert(net_("10.0.0.128/25"), "a")
    table.insert(net_("fd00::/8"), "a")
    assert table.networks("a") == [net_("10.0.0.128/25"), net_("fd00::/8")]
    table.remove_value("a")
    assert table.lookup_address("10.0.0.200") == "b"
    assert table.lookup_address("fd00::1") is None


def test_device_routes_each_packet_to_the_most_specific_peer() -> None:
    net = FakeNet()
    hub = net.add_node("hub", ("192.0.2.1", 1), "10.0.0.1", "fd00::1")
    peers = {}
    for name, port, prefixes in [
        ("internet", 2, ("0.0.0.0/0", "::/0")),
        ("corp", 3, ("10.0.0.0/8",)),
        ("lab", 4, ("10.1.2.0/24", "fd00:1::/32")),
    ]:
        node = net.add_node(name, ("198.51.100.1", port), "10.9.9.9", "fd09::9")
        hub.device.add_peer(
            PeerConfig(
                node.public_key,
                endpoint=node.address,
                allowed_ips=tuple(net_(p) for p in prefixes),
            )
        )
        peers[name] = node
    assert hub.device.route("10.1.2.3") == peers["lab"].public_key
    assert hub.device.route("10.7.0.1") == peers["corp"].public_key
    assert hub.device.route("8.8.8.8") == peers["internet"].public_key
    assert hub.device.route("fd00:1::1") == peers["lab"].public_key
    assert hub.device.route("2001:db8::1") == peers["internet"].public_key
    out = hub.device.encrypt(
        [
            ipv4_packet("10.0.0.1", "10.1.2.3"),
            ipv4_packet("10.0.0.1", "10.7.0.1"),
            ipv4_packet("10.0.0.1", "8.8.8.8"),
            ipv6_packet("fd00::1", "fd00:1::1"),
        ],
        net.now,
    )
    # one initiation per peer, each to that peer's endpoint
    destinations = sorted(endpoint for _, endpoint in out.to_network)
    assert destinations == sorted(p.address for p in peers.values())
    hub.device.remove_peer(peers["lab"].public_key)
    assert hub.device.route("10.1.2.3") == peers["corp"].public_key


def test_networks_follow_moves_and_removals_after_being_read() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(net_("10.0.0.1/32"), "a")
    table.insert(net_("fd00::1/128"), "a")
    table.insert(net_("10.0.0.0/24"), "a")
    assert table.networks("a") == [net_("10.0.0.1/32"), net_("10.0.0.0/24"), net_("fd00::1/128")]
    table.insert(net_("10.0.0.1/32"), "b")  # moved: a's answer read before must not be reused
    assert table.networks("a") == [net_("10.0.0.0/24"), net_("fd00::1/128")]
    assert table.networks("b") == [net_("10.0.0.1/32")]
    table.remove_value("b")
    assert table.networks("b") == []
    assert table.lookup_address("10.0.0.1") == "a"  # the /24 is still a's
    table.remove_value("a")
    assert table.networks("a") == [] and table.lookup_address("fd00::1") is None
