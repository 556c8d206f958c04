"""``nrpt`` against the in-memory registry: the keys and values written, and what is removed.

These run on any OS; the real registry (:class:`~tunplug_dns.nrpt.WinRegistry`) has never run
(see docs/dns.md).
"""

from __future__ import annotations

import json
import logging
from ipaddress import ip_address
from pathlib import Path

import pytest

from tunplug.dns import DnsSettings
from tunplug_dns._common import DnsError
from tunplug_dns.nrpt import (
    GROUP_POLICY_PATH,
    LOCAL_POLICY_PATH,
    STATE_FILE,
    MemoryRegistry,
    RegType,
    RegValue,
    WindowsNrpt,
    rule_interface,
)

pytestmark = pytest.mark.anyio

FOREIGN_RULE = LOCAL_POLICY_PATH + r"\{6C0507CB-C884-4A78-BC55-0ACEE21227F6}"
FOREIGN_VALUES = {
    "Name": RegValue(RegType.MULTI_SZ, (".",)),
    "GenericDNSServers": RegValue(RegType.SZ, "100.100.111.1"),
    "Comment": RegValue(RegType.SZ, "someone else's rule"),
}


def settings(
    *servers: str, domains: tuple[str, ...] = (), full: bool = False, iface: str = "tunplug 0"
) -> DnsSettings:
    return DnsSettings(iface, tuple(ip_address(s) for s in servers), domains, full)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def registry() -> MemoryRegistry:
    registry = MemoryRegistry()
    registry.write_key(FOREIGN_RULE, FOREIGN_VALUES)
    # Not ours either: no prefix, a look-alike prefix, and a second tunplug tunnel.
    for name in ("tunplug", "tunplugger:tunplug 0:0", "tunplug:other:0"):
        registry.write_key(f"{LOCAL_POLICY_PATH}\\{name}", FOREIGN_VALUES)
    return registry


def foreign_keys_untouched(registry: MemoryRegistry) -> bool:
    names = ("{6C0507CB-C884-4A78-BC55-0ACEE21227F6}", "tunplug", "tunplugger:tunplug 0:0",
             "tunplug:other:0")  # fmt: skip
    return all(registry.values(f"{LOCAL_POLICY_PATH}\\{name}") == FOREIGN_VALUES for name in names)


def our_keys(registry: MemoryRegistry) -> list[str]:
    return [
        key
        for key in registry.key_paths()
        if rule_interface(key.rsplit("\\", 1)[-1]) == "tunplug 0"
    ]


async def test_split_dns_writes_one_rule_with_dotted_namespaces(registry, state_dir):
    manager = WindowsNrpt(state_dir, registry=registry)
    await manager.activate(settings("10.0.0.53", "fd00::53", domains=("corp.example", "lab.test.")))
    rule = LOCAL_POLICY_PATH + r"\tunplug:tunplug 0:0"
    assert our_keys(registry) == [rule]
    assert registry.values(rule) == {
        "Version": RegValue(RegType.DWORD, 2),
        "Name": RegValue(RegType.MULTI_SZ, (".corp.example", ".lab.test")),
        "GenericDNSServers": RegValue(RegType.SZ, "10.0.0.53;fd00::53"),
        "ConfigOptions": RegValue(RegType.DWORD, 8),
        "Comment": RegValue(
            RegType.SZ, f"tunplug tunplug 0: removed on exit (state in {state_dir})"
        ),
        "DisplayName": RegValue(RegType.SZ, "tunplug tunplug 0"),
        "IPSECCARestriction": RegValue(RegType.SZ, ""),
    }
    assert not registry.key_exists(GROUP_POLICY_PATH)  # never created
    assert (registry.flushes, registry.policy_refreshes) == (1, 0)
    assert json.loads((state_dir / STATE_FILE).read_text())["interfaces"] == ["tunplug 0"]

    await manager.deactivate()
    assert our_keys(registry) == []
    assert foreign_keys_untouched(registry)
    assert registry.flushes == 2
    assert not (state_dir / STATE_FILE).exists()


async def test_full_tunnel_claims_every_name(registry, state_dir):
    manager = WindowsNrpt(state_dir, registry=registry)
    await manager.activate(settings("10.0.0.53", domains=("corp.example",), full=True))
    values = registry.values(LOCAL_POLICY_PATH + r"\tunplug:tunplug 0:0")
    assert values["Name"] == RegValue(RegType.MULTI_SZ, (".",))
    await manager.deactivate()
    assert our_keys(registry) == []


async def test_group_policy_rules_are_written_too_when_group_policy_is_in_use(registry, state_dir):
    registry.write_key(GROUP_POLICY_PATH + r"\{domain-rule}", FOREIGN_VALUES)
    manager = WindowsNrpt(state_dir, registry=registry)
    await manager.activate(settings("10.0.0.53", domains=("corp.example",)))
    assert our_keys(registry) == [
        LOCAL_POLICY_PATH + r"\tunplug:tunplug 0:0",
        GROUP_POLICY_PATH + r"\tunplug:tunplug 0:0",
    ]
    assert registry.policy_refreshes == 1

    await manager.deactivate()
    assert our_keys(registry) == []
    assert registry.policy_refreshes == 2
    assert registry.values(GROUP_POLICY_PATH + r"\{domain-rule}") == FOREIGN_VALUES
    assert registry.key_exists(GROUP_POLICY_PATH)  # the policy key is not ours to delete


async def test_more_than_fifty_domains_are_split_into_rules(registry, state_dir):
    domains = tuple(f"d{i}.example" for i in range(120))
    manager = WindowsNrpt(state_dir, registry=registry)
    await manager.activate(settings("10.0.0.53", domains=domains))
    keys = our_keys(registry)
    assert [key.rsplit(":", 1)[-1] for key in keys] == ["0", "1", "2"]
    sizes = [len(registry.values(key)["Name"].data) for key in keys]
    assert sizes == [50, 50, 20]
    await manager.deactivate()
    assert our_keys(registry) == []


async def test_deactivate_is_idempotent(registry, state_dir):
    manager = WindowsNrpt(state_dir, registry=registry)
    await manager.deactivate()
    await manager.activate(settings("10.0.0.53"))
    await manager.deactivate()
    flushes = registry.flushes
    await manager.deactivate()
    assert registry.flushes == flushes
    assert foreign_keys_untouched(registry)


async def test_activate_removes_the_rules_a_crashed_run_left(registry, state_dir, caplog):
    await WindowsNrpt(state_dir, registry=registry).activate(
        settings("10.0.0.53", domains=tuple(f"d{i}.example" for i in range(60)), iface="old")
    )
    # No deactivate: the process died. The next run uses another interface name.
    with caplog.at_level(logging.WARNING):
        await WindowsNrpt(state_dir, registry=registry).activate(settings("10.0.0.54"))
    assert "removed NRPT rules of old left by a previous run" in caplog.text
    leftovers = [key for key in registry.key_paths() if ":old:" in key]
    assert leftovers == []
    assert our_keys(registry) == [LOCAL_POLICY_PATH + r"\tunplug:tunplug 0:0"]
    assert json.loads((state_dir / STATE_FILE).read_text())["interfaces"] == ["tunplug 0"]
    assert foreign_keys_untouched(registry)


async def test_rules_of_this_interface_are_removed_even_without_a_state_file(registry, state_dir):
    await WindowsNrpt(state_dir, registry=registry).activate(settings("10.0.0.53"))
    (state_dir / STATE_FILE).unlink()  # state directory wiped, registry not
    await WindowsNrpt(state_dir, registry=registry).activate(settings("10.0.0.54"))
    rules = our_keys(registry)
    assert len(rules) == 1
    assert registry.values(rules[0])["GenericDNSServers"].data == "10.0.0.54"


async def test_a_failed_write_removes_what_was_written_and_raises(registry, state_dir):
    registry.write_key(GROUP_POLICY_PATH + r"\{domain-rule}", FOREIGN_VALUES)
    registry.fail_after_writes = registry.writes + 1  # the local rule works, the GP one not
    manager = WindowsNrpt(state_dir, registry=registry)
    with pytest.raises(DnsError) as caught:
        await manager.activate(settings("10.0.0.53"))
    assert str(caught.value) == (
        rf"NRPT: cannot write {GROUP_POLICY_PATH}\tunplug:tunplug 0:0: Access is denied"
    )
    assert our_keys(registry) == []
    assert foreign_keys_untouched(registry)
    assert not (state_dir / STATE_FILE).exists()


async def test_no_servers_writes_no_rule(registry, state_dir):
    await WindowsNrpt(state_dir, registry=registry).activate(settings(domains=("corp.example",)))
    assert our_keys(registry) == []
    assert registry.flushes == 0


def test_rule_interface_only_recognises_our_key_names():
    assert rule_interface("tunplug:wg0:0") == "wg0"
    assert rule_interface("tunplug:a:b:12") == "a:b"
    for name in ("tunplug", "tunplug:wg0", "tunplug::0", "tunplug:wg0:x", "{GUID}", "Tunplug:a:0"):
        assert rule_interface(name) is None


def test_unavailable_off_windows():
    assert WindowsNrpt.unavailable_reason() == "runs on Windows only"
    assert "never run on real Windows" in (WindowsNrpt.caveat or "")
