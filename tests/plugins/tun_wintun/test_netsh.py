"""The netsh command lines built for a WinTun adapter (never run here: no Windows)."""

from __future__ import annotations

from ipaddress import ip_interface, ip_network

from tunplug_tun_wintun import netsh


def test_a_small_mtu_is_set_for_ipv4_only():
    assert netsh.interface_commands(7, (), 1000) == [
        ["netsh", "interface", "ipv4", "set", "subinterface", "7", "mtu=1000", "store=active"],
    ]


def test_addresses_name_the_interface_by_index():
    commands = netsh.interface_commands(
        12, (ip_interface("192.168.5.9/30"), ip_interface("fd00:5::9/126")), 1420
    )
    assert commands[2:] == [
        ["netsh", "interface", "ipv4", "add", "address", "name=12", "address=192.168.5.9",
         "mask=255.255.255.252", "store=active"],
        ["netsh", "interface", "ipv6", "add", "address", "interface=12",
         "address=fd00:5::9/126", "store=active"],
    ]  # fmt: skip


def test_route_commands_add_and_delete_both_families():
    assert netsh.route_command(3, ip_network("0.0.0.0/0")) == [
        "netsh", "interface", "ipv4", "add", "route", "prefix=0.0.0.0/0", "interface=3",
        "store=active",
    ]  # fmt: skip
    assert netsh.route_command(3, ip_network("fd00::/8"), delete=True) == [
        "netsh", "interface", "ipv6", "delete", "route", "prefix=fd00::/8", "interface=3",
        "store=active",
    ]  # fmt: skip
