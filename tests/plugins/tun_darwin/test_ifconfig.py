"""The ifconfig and route command lines built for a utun device (never run here: no macOS)."""

from __future__ import annotations

from ipaddress import ip_interface, ip_network

from tunplug.commands import run_command
from tunplug_tun_darwin import ifconfig


def test_interface_commands_for_both_families():
    commands = ifconfig.interface_commands(
        "utun4",
        (ip_interface("10.7.0.2/24"), ip_interface("fd07::2/64"), ip_interface("10.9.9.9/32")),
        1380,
    )
    assert commands == [
        ["ifconfig", "utun4", "mtu", "1380", "up"],
        ["ifconfig", "utun4", "inet", "10.7.0.2/24", "10.7.0.2", "alias"],
        ["ifconfig", "utun4", "inet6", "fd07::2/64", "alias"],
        ["ifconfig", "utun4", "inet", "10.9.9.9/32", "10.9.9.9", "alias"],
        # point-to-point: the IPv4 prefix is routed explicitly (not a /32, not IPv6)
        ["route", "-q", "-n", "add", "-inet", "10.7.0.0/24", "-interface", "utun4"],
    ]


def test_route_commands():
    assert ifconfig.route_command("utun4", ip_network("0.0.0.0/1")) == [
        "route", "-q", "-n", "add", "-inet", "0.0.0.0/1", "-interface", "utun4",
    ]  # fmt: skip
    assert ifconfig.route_command("utun4", ip_network("::/1"), delete=True) == [
        "route", "-q", "-n", "delete", "-inet6", "::/1", "-interface", "utun4",
    ]  # fmt: skip


def test_own_routes_are_the_address_prefixes():
    addresses = (ip_interface("10.7.0.2/24"), ip_interface("10.7.0.3/24"))
    assert ifconfig.own_routes(addresses) == [ip_network("10.7.0.0/24")]


def test_run_command_reports_status_and_output():
    assert run_command(["sh", "-c", "echo out; echo err >&2; exit 3"]) == (
        3,
        "out\nerr",
    )
    status, output = run_command(["/nonexistent/ifconfig"])
    assert status == 1
    assert "nonexistent" in output
