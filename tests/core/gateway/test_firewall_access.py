"""The firewall's live access sets: the nft script of a change (only what differs), the refill
when nft refuses it, and (as root, in a throw-away namespace) that the installed nft takes the
gateway's table and the elements :mod:`tunplug.gateway.access` computes."""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address, ip_network

import pytest

from tunplug.gateway import firewall
from tunplug.gateway.access import Grant, access_contents, merge_contents, proxy_contents
from tunplug.resources import parse_port_rules
from tunplug.testing.netns import NetNS

SUBNET_V4, SUBNET_V6 = ip_network("100.64.0.0/11"), IPv6Network("fd7a:7470:6c67::/64")
GATEWAY_V4, GATEWAY_V6 = IPv4Address("100.64.0.1"), IPv6Address("fd7a:7470:6c67::1")


def test_a_change_deletes_and_adds_only_what_differs():
    old = {"access4": frozenset({"a . 1", "a . 2"}), "proxy4": frozenset({"p1 : r1"})}
    new = {"access4": frozenset({"a . 2", "a . 3"}), "proxy4": frozenset()}
    assert firewall.update_script("t", old, new).splitlines() == [
        "delete element inet t access4 { a . 1 }",
        "delete element inet t proxy4 { p1 }",  # a map element goes by its key
        "add element inet t access4 { a . 3 }",
    ]
    assert firewall.update_script("t", new, new) == ""


class FakeNft:
    def __init__(self, *codes: int) -> None:
        self.codes = list(codes)
        self.scripts: list[str] = []

    def __call__(self, *args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
        self.scripts.append(script or "")
        code = self.codes.pop(0) if self.codes else 0
        return subprocess.CompletedProcess(["nft", *args], code, "", "Error: File exists")


def test_the_firewall_sends_one_transaction_per_change_and_nothing_when_unchanged(monkeypatch):
    nft = FakeNft()
    monkeypatch.setattr(firewall, "_nft", nft)
    installed = firewall.Firewall("tpgw0")
    assert installed.update({"access4": frozenset({"100.64.0.2 . 10.0.0.0/8"})})
    assert not installed.update({"access4": frozenset({"100.64.0.2 . 10.0.0.0/8"})})
    assert installed.update({"access4": frozenset()})
    assert nft.scripts == [
        "add element inet tunplug_tpgw0 access4 { 100.64.0.2 . 10.0.0.0/8 }",
        "delete element inet tunplug_tpgw0 access4 { 100.64.0.2 . 10.0.0.0/8 }",
    ]


def test_a_refused_change_refills_the_sets_and_a_refused_refill_is_one_error(monkeypatch):
    nft = FakeNft(1, 0)
    monkeypatch.setattr(firewall, "_nft", nft)
    installed = firewall.Firewall("tpgw0")
    installed.update({"access4": frozenset({"x . y"}), "proxy4": frozenset({"p : r"})})
    assert nft.scripts[1].splitlines() == [
        "flush set inet tunplug_tpgw0 access4",
        "flush map inet tunplug_tpgw0 proxy4",
        "add element inet tunplug_tpgw0 access4 { x . y }",
        "add element inet tunplug_tpgw0 proxy4 { p : r }",
    ]
    monkeypatch.setattr(firewall, "_nft", FakeNft(1, 1))
    with pytest.raises(firewall.FirewallError, match="nft refused the gateway's access sets"):
        installed.update({"access4": frozenset()})


@pytest.mark.root
def test_the_installed_nft_takes_the_table_and_live_changes_of_overlapping_grants():
    laptop4, laptop6 = IPv4Address("100.64.0.2"), IPv6Address("fd7a:7470:6c67::2")
    tcp443, udp = parse_port_rules(["tcp/443"]), parse_port_rules(["udp", "icmp"])
    first = merge_contents(
        [
            access_contents(
                [
                    Grant(laptop4, ip_network("10.0.0.0/16"), tcp443),
                    Grant(laptop4, ip_network("10.0.1.0/24"), parse_port_rules(["tcp/400-500"])),
                    Grant(laptop4, ip_network("10.0.1.7/32"), udp),
                    Grant(laptop6, ip_network("fd10::/64"), udp),
                    Grant(laptop4, ip_network("100.96.0.1/32"), tcp443),
                ]
            ),
            proxy_contents({ip_address("100.96.0.1"): ip_address("10.10.0.7")}),
        ]
    )
    second = merge_contents(
        [
            access_contents(
                [
                    Grant(laptop4, ip_network("0.0.0.0/0")),
                    Grant(laptop4, ip_network("10.0.1.0/24")),
                    Grant(laptop4, ip_network("10.0.2.0/24"), parse_port_rules(["tcp/22"])),
                ]
            ),
            proxy_contents({}),
        ]
    )
    table = firewall.table_name("tpgw0")
    with NetNS() as ns:
        script = firewall.ruleset("tpgw0", SUBNET_V4, SUBNET_V6, GATEWAY_V4, GATEWAY_V6)
        ns.run("nft", "-f", "-", input=script)
        for old, new in (({}, first), (first, second), (second, first)):
            change = firewall.update_script(table, old, new)
            done = ns.run("nft", "-f", "-", input=change, check=False)
            assert done.returncode == 0, done.stderr + change
        listed = ns.run("nft", "list", "table", "inet", table).stdout
        assert "100.64.0.2 . 10.0.1.0/24 . tcp . 400-500" in listed
        assert "100.96.0.1 : 10.10.0.7" in listed
        refill = ns.run("nft", "-f", "-", input=firewall.flush_script(table, first), check=False)
        assert refill.returncode == 0, refill.stderr
