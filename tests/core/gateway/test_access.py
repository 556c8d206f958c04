"""Who may reach what: grants from resources and groups, the nft set elements (disjoint within
each set), DNS grants that lapse, proxy allocation, and the live access state."""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address, ip_network

import anyio
import pytest

from tests.core.gateway import _records as records
from tunplug.gateway import access
from tunplug.gateway.access import (
    ACCESS_SETS,
    AccessState,
    DnsGrant,
    Grant,
    Snapshot,
    access_contents,
    resource_grants,
    valid_dns_grants,
)
from tunplug.gateway.dns_server import ProxyTable
from tunplug.gateway.registry import ClientRecord
from tunplug.resources import PROXY_V4, Resource, parse_port_rules, parse_target

GATEWAY = (IPv4Address("100.64.0.1"), IPv6Address("fd7a:7470:6c67::1"))


def client(name: str, index: int) -> ClientRecord:
    return records.client(name, f"100.64.0.{index}", f"fd7a:7470:6c67::{index:x}")


def resource(target: str, *ports: str, groups: tuple[str, ...] = (), name: str = "") -> Resource:
    parsed = parse_target(target)
    return Resource(name or str(parsed), parsed, parse_port_rules(ports), groups)


LAPTOP, PHONE = client("laptop", 2), client("phone", 3)


def only(contents: Mapping[str, frozenset[str]]) -> dict[str, set[str]]:
    """The sets that have elements."""
    return {name: set(items) for name, items in contents.items() if items}


# -- grants ------------------------------------------------------------------------------------
def test_a_client_is_granted_the_networks_of_the_resources_its_groups_allow():
    resources = [
        resource("10.10.0.0/16"),
        resource("fd10::/64", "tcp/443"),
        resource("10.20.0.0/16", groups=("eng",)),
        resource("*.corp.example"),
    ]
    assert resource_grants(LAPTOP, resources, ()) == [
        Grant(LAPTOP.address_v4, ip_network("10.10.0.0/16")),
        Grant(LAPTOP.address_v6, ip_network("fd10::/64"), parse_port_rules(["tcp/443"])),
    ]
    assert Grant(LAPTOP.address_v4, ip_network("10.20.0.0/16")) in resource_grants(
        LAPTOP, resources, ("eng",)
    )


def test_the_internet_resource_is_everything_in_both_versions():
    grants = resource_grants(LAPTOP, [resource("internet")], ())
    assert only(access_contents(grants)) == {
        "access4": {"100.64.0.2 . 0.0.0.0/0"},
        "access6": {"fd7a:7470:6c67::2 . ::/0"},
    }


# -- set elements --------------------------------------------------------------------------------
def test_port_rules_go_to_the_protocol_and_port_sets():
    grants = resource_grants(
        LAPTOP,
        [
            resource("10.10.0.7", "tcp/443", "tcp/8000-8100", "udp", "icmp"),
            resource("fd10::/64", "icmp", "udp/53"),
        ],
        (),
    )
    assert only(access_contents(grants)) == {
        "access4_proto": {"100.64.0.2 . 10.10.0.7 . udp", "100.64.0.2 . 10.10.0.7 . icmp"},
        "access4_port": {
            "100.64.0.2 . 10.10.0.7 . tcp . 443",
            "100.64.0.2 . 10.10.0.7 . tcp . 8000-8100",
        },
        "access6_proto": {"fd7a:7470:6c67::2 . fd10::/64 . ipv6-icmp"},
        "access6_port": {"fd7a:7470:6c67::2 . fd10::/64 . udp . 53"},
    }
    assert set(access_contents([])) == set(ACCESS_SETS)


def test_nested_networks_are_collapsed_so_nft_accepts_them():
    grants = [
        Grant(LAPTOP.address_v4, ip_network("10.0.1.0/24")),
        Grant(LAPTOP.address_v4, ip_network("10.0.0.0/16")),
        Grant(LAPTOP.address_v4, ip_network("0.0.0.0/0")),
        Grant(PHONE.address_v4, ip_network("10.0.1.0/24")),
    ]
    assert only(access_contents(grants)) == {
        "access4": {"100.64.0.2 . 0.0.0.0/0", "100.64.0.3 . 10.0.1.0/24"}
    }


def test_nested_networks_with_different_ports_are_split_and_port_ranges_merged():
    tcp443 = parse_port_rules(["tcp/443"])
    grants = [
        Grant(LAPTOP.address_v4, ip_network("10.0.0.0/30"), tcp443),
        Grant(LAPTOP.address_v4, ip_network("10.0.0.1/32"), parse_port_rules(["tcp/440-450"])),
        Grant(LAPTOP.address_v4, ip_network("10.0.0.1/32"), parse_port_rules(["tcp/451"])),
    ]
    assert only(access_contents(grants)) == {
        "access4_port": {
            "100.64.0.2 . 10.0.0.0 . tcp . 443",
            "100.64.0.2 . 10.0.0.2/31 . tcp . 443",
            "100.64.0.2 . 10.0.0.1 . tcp . 440-451",
        }
    }


def test_elements_of_one_set_never_overlap_for_one_client():
    """What nft needs: within a set, no element starts or ends inside another."""
    grants = [
        Grant(LAPTOP.address_v4, ip_network(net), parse_port_rules([ports]))
        for net, ports in [
            ("10.0.0.0/8", "tcp/1-100"),
            ("10.1.0.0/16", "tcp/50-200"),
            ("10.1.2.0/24", "tcp/300"),
            ("10.1.2.3/32", "tcp/90-95"),
            ("10.2.0.0/16", "udp/53"),
        ]
    ]
    boxes = []
    for element in access_contents(grants)["access4_port"]:
        _, net, protocol, ports = element.split(" . ")
        first, _, last = ports.partition("-")
        boxes.append((ip_network(net), protocol, int(first), int(last or first)))
    for index, (net, protocol, first, last) in enumerate(boxes):
        for other, other_protocol, other_first, other_last in boxes[index + 1 :]:
            assert not (
                protocol == other_protocol
                and net.overlaps(other)
                and first <= other_last
                and other_first <= last
            ), (net, other)
    # Every port that was granted still is.
    for address, port in [("10.9.9.9", 1), ("10.1.0.1", 200), ("10.1.2.3", 300), ("10.1.2.3", 92)]:
        assert any(
            ip_address(address) in net and first <= port <= last and protocol == "tcp"
            for net, protocol, first, last in boxes
        ), (address, port)
    assert not any(
        ip_address("10.3.0.1") in net and first <= 150 <= last for net, _, first, last in boxes
    )


# -- DNS grants ----------------------------------------------------------------------------------
def test_dns_grants_lapse_with_the_resource_the_group_or_the_client():
    corp = resource("*.corp.example", groups=("eng",), name="corp")
    grant = DnsGrant(LAPTOP.public_key, "corp", "db.corp.example", ip_address("100.96.0.1"))
    clients = {LAPTOP.public_key: LAPTOP}
    assert valid_dns_grants([grant], clients, [corp], {"laptop": ("eng",)}) == {grant}
    assert valid_dns_grants([grant], clients, [corp], {}) == set()
    assert valid_dns_grants([grant], clients, [], {"laptop": ("eng",)}) == set()
    assert valid_dns_grants([grant], {}, [corp], {"laptop": ("eng",)}) == set()
    # A resource of the same name that no longer covers the name.
    other = resource("*.other.example", name="corp")
    assert valid_dns_grants([grant], clients, [other], {"laptop": ("eng",)}) == set()


def test_proxy_addresses_are_given_in_order_and_kept():
    table = ProxyTable()
    first = table.proxy_for(ip_address("10.10.0.7"))
    assert first == ip_address("100.96.0.1")
    assert table.proxy_for(ip_address("10.10.0.8")) == ip_address("100.96.0.2")
    assert table.proxy_for(ip_address("10.10.0.7")) == first
    assert table.proxy_for(ip_address("fd10::7")) == ip_address("fd7a:7470:6c67:d5::1")
    assert table.real(first) == ip_address("10.10.0.7")
    assert len(table) == 3
    small = ProxyTable(pool_v4=IPv4Network("100.96.0.0/30"))
    small.proxy_for(ip_address("10.0.0.1"))
    small.proxy_for(ip_address("10.0.0.2"))
    with pytest.raises(LookupError):
        small.proxy_for(ip_address("10.0.0.3"))
    assert PROXY_V4.network_address not in small.mapping()


# -- the live state ------------------------------------------------------------------------------
class FakeFirewall:
    def __init__(self) -> None:
        self.updates: list[dict[str, frozenset[str]]] = []

    def update(self, contents: Mapping[str, frozenset[str]]) -> bool:
        self.updates.append(dict(contents))
        return True


def state_with(*resources: Resource, groups: dict[str, tuple[str, ...]] | None = None):
    firewall = FakeFirewall()
    state = AccessState(GATEWAY, (ip_address("10.10.0.53"),), firewall)
    state.load(Snapshot(7, [LAPTOP, PHONE], list(resources), groups or {}))
    return state, firewall


def test_the_view_is_the_clients_own_and_unknown_addresses_get_none():
    state, _ = state_with(
        resource("10.10.0.0/16"),
        resource("10.20.0.0/16", groups=("eng",)),
        groups={"laptop": ("eng",)},
    )
    laptop = state.view("100.64.0.2")
    assert laptop is not None and laptop.version == 7
    assert "10.20.0.0/16" in laptop.routes and laptop.default_dns_servers == ["10.10.0.53"]
    phone = state.view("fd7a:7470:6c67::3")
    assert phone is not None and "10.20.0.0/16" not in phone.routes
    assert state.view("100.64.0.9") is None


@pytest.mark.anyio
async def test_a_dns_grant_is_installed_before_it_returns_and_lapses_with_the_group():
    corp = resource("*.corp.example", "tcp/443", groups=("eng",), name="corp")
    state, firewall = state_with(corp, groups={"laptop": ("eng",)})
    assert state.dns_resources(LAPTOP) == [corp] and state.dns_resources(PHONE) == []
    real = ip_address("10.10.0.7")
    granted = await state.grant(LAPTOP, [corp], "db.corp.example", [real])
    assert granted == [(real, ip_address("100.96.0.1"), True)]
    installed = firewall.updates[-1]
    assert installed["proxy4"] == {"100.96.0.1 : 10.10.0.7"}
    assert installed["access4_port"] == {"100.64.0.2 . 100.96.0.1 . tcp . 443"}
    # Asking again changes nothing and is not new.
    assert await state.grant(LAPTOP, [corp], "db.corp.example", [real]) == [
        (real, ip_address("100.96.0.1"), False)
    ]
    assert len(firewall.updates) == 1
    # Out of the group: the grant goes at the next registry change; the proxy stays mapped.
    state.load(Snapshot(8, [LAPTOP, PHONE], [corp], {}))
    await state.apply()
    assert firewall.updates[-1]["access4_port"] == frozenset()
    assert firewall.updates[-1]["proxy4"] == {"100.96.0.1 : 10.10.0.7"}


@pytest.mark.anyio
async def test_an_internet_client_with_a_dns_grant_gets_elements_nft_accepts():
    corp = resource("*.corp.example", name="corp")
    state, firewall = state_with(corp, resource("internet"))
    await state.grant(LAPTOP, [corp], "db.corp.example", [ip_address("10.10.0.7")])
    assert "100.64.0.2 . 100.96.0.1" not in firewall.updates[-1]["access4"]
    assert "100.64.0.2 . 0.0.0.0/0" in firewall.updates[-1]["access4"]


@pytest.mark.anyio
async def test_waiting_for_a_change_returns_when_the_version_moves():
    state, _ = state_with()
    await state.wait_changed(6)  # already different: at once
    woke = []

    async def waiter() -> None:
        await state.wait_changed(7)
        woke.append(state.version)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(waiter)
        await anyio.sleep(0.05)
        assert woke == []
        state.notify_changed()  # a wake-up without a new version keeps it waiting
        await anyio.sleep(0.05)
        assert woke == []
        state.load(Snapshot(8, [LAPTOP], [], {}))
        state.notify_changed()
    assert woke == [8]


@pytest.mark.anyio
@pytest.mark.parametrize("offload", [False, True], ids=["in-loop", "worker-thread"])
async def test_a_registry_change_reaches_exactly_the_clients_it_concerns(monkeypatch, offload):
    if offload:
        monkeypatch.setattr(access, "OFFLOAD_CLIENTS", 0)
    lan = resource("10.10.0.0/16", groups=("eng",), name="lan")
    state, firewall = state_with(lan, groups={"laptop": ("eng",)})
    await state.apply()
    assert firewall.updates[-1]["access4"] == {"100.64.0.2 . 10.10.0.0/16"}
    # phone joins the group; a new client without groups arrives.
    tablet = client("tablet", 4)
    groups = {"laptop": ("eng",), "phone": ("eng",)}
    state.load(Snapshot(8, [LAPTOP, PHONE, tablet], [lan], groups))
    await state.apply()
    assert firewall.updates[-1]["access4"] == {
        "100.64.0.2 . 10.10.0.0/16",
        "100.64.0.3 . 10.10.0.0/16",
    }
    # The resource opens to everyone.
    state.load(Snapshot(9, [LAPTOP, PHONE, tablet], [resource("10.10.0.0/16", name="lan")], {}))
    await state.apply()
    assert len(firewall.updates[-1]["access4"]) == 3
    # laptop revoked.
    state.load(Snapshot(10, [PHONE, tablet], [resource("10.10.0.0/16", name="lan")], {}))
    await state.apply()
    assert "100.64.0.2 . 10.10.0.0/16" not in firewall.updates[-1]["access4"]
