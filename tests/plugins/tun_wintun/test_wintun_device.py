"""WintunTun over the fake wintun.dll: adapter life cycle, rings, errors, netsh commands.

These run the backend's real code on Linux; the DLL, kernel32 and iphlpapi are the fake of
tunplug_tun_wintun.testing. Nothing here has run on Windows.
"""

from __future__ import annotations

import logging
import threading
import uuid
from ipaddress import ip_interface, ip_network

import anyio
import pytest

from tunplug.exceptions import (
    BackendUnavailable,
    BusyResource,
    ClosedResource,
    ConfigError,
    PermissionDenied,
    TunError,
)
from tunplug.testing.contract import make_packets, receive
from tunplug.tun import TunOptions
from tunplug_tun_wintun.device import RX_QUEUE_BATCHES, WintunTun
from tunplug_tun_wintun.testing import FakeWindows

pytestmark = pytest.mark.anyio

SMALL_RING = 0x20000
ADDRESSES = (ip_interface("10.8.0.2/24"), ip_interface("fd08::2/64"))


async def open_tun(fake, name="wt0", **options):
    return await WintunTun.open(
        TunOptions(name=name, **options), api=fake.api(), ring_capacity=SMALL_RING
    )


def rx_threads():
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("wintun-"))


async def test_open_creates_a_named_adapter_with_a_stable_guid_and_close_removes_it():
    fake = FakeWindows()
    tun = await open_tun(fake, addresses=ADDRESSES, mtu=1380)
    adapter = fake.adapters["wt0"]
    assert (adapter.tunnel_type, tun.name, tun.index) == ("tunplug", "wt0", adapter.index)
    assert adapter.guid == uuid.uuid5(uuid.UUID("6b1f2a6e-5d39-4c7e-9a55-2f0b7f3f4e11"), "wt0")
    assert fake.session("wt0").capacity == SMALL_RING
    assert rx_threads() == ["wintun-wt0-rx"]
    index = str(adapter.index)
    assert fake.commands == [
        ["netsh", "interface", "ipv4", "set", "subinterface", index, "mtu=1380", "store=active"],
        ["netsh", "interface", "ipv6", "set", "subinterface", index, "mtu=1380", "store=active"],
        ["netsh", "interface", "ipv4", "add", "address", f"name={index}", "address=10.8.0.2",
         "mask=255.255.255.0", "store=active"],
        ["netsh", "interface", "ipv6", "add", "address", f"interface={index}",
         "address=fd08::2/64", "store=active"],
    ]  # fmt: skip
    await tun.aclose()
    assert adapter.closed and adapter.sessions[0].ended
    assert "wt0" not in fake.adapters
    assert fake.open_events == 0
    assert rx_threads() == []
    again = await open_tun(fake)
    assert fake.adapters["wt0"].guid == adapter.guid  # one name, one network profile
    await again.aclose()


async def test_an_adapter_name_held_by_another_process_is_refused_and_left_alone():
    fake = FakeWindows()
    theirs = fake.dll.WintunCreateAdapter("wt0", "someone-else", None)
    with pytest.raises(BusyResource, match="another process holds"):
        await open_tun(fake)
    assert fake.adapters["wt0"].tunnel_type == "someone-else"
    assert not fake.adapters["wt0"].closed
    fake.dll.WintunCloseAdapter(theirs)


async def test_without_administrator_rights_creation_fails_with_permission_denied():
    with pytest.raises(PermissionDenied, match="Administrator") as caught:
        await open_tun(FakeWindows(admin=False))
    assert caught.value.errno == 5


async def test_a_refused_netsh_command_fails_creation_and_removes_the_adapter():
    fake = FakeWindows(failing_commands={"add address"})
    with pytest.raises(TunError, match="The object already exists"):
        await open_tun(fake, addresses=ADDRESSES)
    assert fake.adapters == {}
    assert rx_threads() == []


async def test_a_bad_ring_capacity_is_a_config_error_before_any_adapter_exists():
    fake = FakeWindows()
    with pytest.raises(ConfigError, match="power of two"):
        await WintunTun.open(TunOptions(name="wt0"), api=fake.api(), ring_capacity=0x30000)
    assert fake.adapters == {}


async def test_create_off_windows_is_unavailable():
    with pytest.raises(BackendUnavailable, match="wintun: runs on Windows only"):
        await WintunTun.create(TunOptions())


async def test_a_full_send_ring_holds_packets_back_instead_of_dropping_them():
    fake = FakeWindows()
    async with await open_tun(fake, batch_size=32) as tun:
        # 1000-byte packets: 1004 bytes each in the ring, so 130 fit in 128 KiB.
        sent = make_packets(160, size=1000)
        for start in range(0, 160, 32):
            await tun.send_ready()
            tun.send(sent[start : start + 32])
        assert fake.session("wt0").to_os.packets == 130
        with anyio.move_on_after(0.1) as wait:
            await tun.send_ready()
        assert wait.cancelled_caught, "send_ready returned with packets still held back"
        got = fake.take_sent("wt0")
        await tun.send_ready()
        got += fake.take_sent("wt0")
        assert got == sent
        assert tun.stats()["drops"] == {}
        assert tun.stats()["tx_packets"] == 160


async def test_packets_wintun_cannot_carry_are_dropped_and_counted():
    fake = FakeWindows()
    async with await open_tun(fake) as tun:
        good = make_packets(1)
        tun.send([bytes(0x10000), b"", *good])
        assert fake.take_sent("wt0") == good
        assert tun.drops == {"too_large": 1, "empty": 1}


async def test_the_receive_thread_stops_draining_when_the_loop_does_not_keep_up():
    fake = FakeWindows()
    async with await open_tun(fake, batch_size=4) as tun:
        sent = make_packets(200)
        assert fake.inject("wt0", sent) == 200
        await anyio.sleep(0.2)  # nobody calls recv_many
        # The thread holds RX_QUEUE_BATCHES batches and one in hand; the rest stays in the ring.
        assert fake.session("wt0").to_app.packets >= 200 - (RX_QUEUE_BATCHES + 1) * 4
        assert await receive(tun, 200) == sent
        assert fake.session("wt0").to_app.packets == 0  # every packet was released


async def test_an_adapter_going_away_fails_readers_and_writers_with_closed_resource():
    fake = FakeWindows()
    async with await open_tun(fake) as tun:
        failures = []

        async def reader():
            try:
                await tun.recv_many()
            except ClosedResource as exc:
                failures.append(exc)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(reader)
            await anyio.sleep(0.05)
            fake.terminate("wt0")
        assert len(failures) == 1
        assert failures[0].errno == 38  # ERROR_HANDLE_EOF
        with pytest.raises(ClosedResource, match="terminating"):
            tun.send(make_packets(1))


async def test_add_routes_uses_netsh_skips_known_networks_and_rolls_back_on_failure():
    fake = FakeWindows(failing_commands={"prefix=10.99.0.0/16"})
    async with await open_tun(fake, addresses=ADDRESSES) as tun:
        index = tun.index
        await tun.add_routes([ip_network("10.8.0.0/24"), ip_network("10.1.0.0/16")])
        await tun.add_routes([ip_network("10.1.0.0/16"), ip_network("::/0")])
        assert tun.routes == [ip_network("10.1.0.0/16"), ip_network("::/0")]
        del fake.commands[:]
        with pytest.raises(TunError, match=r"failed to add the route to 10\.99\.0\.0/16"):
            await tun.add_routes([ip_network("10.2.0.0/16"), ip_network("10.99.0.0/16")])
        verbs = [(c[2], c[3], c[5]) for c in fake.commands]
        assert verbs == [
            ("ipv4", "add", "prefix=10.2.0.0/16"),
            ("ipv4", "add", "prefix=10.99.0.0/16"),
            ("ipv4", "delete", "prefix=10.2.0.0/16"),
        ]
        assert fake.commands[0][-2:] == [f"interface={index}", "store=active"]
        assert tun.routes == [ip_network("10.1.0.0/16"), ip_network("::/0")]


async def test_the_dll_log_goes_to_python_logging(caplog):
    fake = FakeWindows()
    with caplog.at_level(logging.INFO, logger="tunplug_tun_wintun"):
        async with await open_tun(fake):
            pass
    assert "wintun: Created adapter wt0" in caplog.messages
