"""The linux-mq backend on real TUN devices, each inside a throw-away network namespace.

The device side runs in ``_helpers/tun_agent.py``, started inside the test's namespace, so
the host's network namespace is never touched. Needs root.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tunplug.testing.netns import NetNS

pytestmark = pytest.mark.root


def link_exists(ns: NetNS, name: str) -> bool:
    return ns.run("ip", "link", "show", name, check=False).returncode == 0


def wait_until_gone(ns: NetNS, name: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not link_exists(ns, name):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("queues", [1, 2])
def test_a_device_whose_descriptors_a_native_plane_takes_starts_no_threads(netns, agent, queues):
    proc = agent.start("hold", name="tp1", queues=queues, take_descriptors=True)
    ready = agent.read_line(proc)
    assert ready["taken"] == queues
    assert ready["threads"] == []
    agent.tell(proc, "close")
    closed = agent.read_line(proc)
    assert closed["link_exists"] is False
    assert closed["errors"] == ["ClosedResource"] * 3


@pytest.mark.parametrize("queues", [1, 2])
def test_create_gives_an_up_multiqueue_device_that_vanishes_on_close(netns, agent, queues):
    proc = agent.start("hold", name="tp0", queues=queues, mtu=1380)
    ready = agent.read_line(proc)
    assert ready["name"] == "tp0"
    assert ready["queues"] == queues
    assert ready["threads"] == sorted(
        f"tun-tp0-q{i}-{role}" for i in range(queues) for role in ("rx", "tx")
    )
    details = netns.run("ip", "-d", "link", "show", "tp0").stdout
    assert "multi_queue" in details
    assert f"numqueues {queues}" in details
    assert "persist off" in details
    assert "mtu 1380" in details
    assert "qlen 10000" in details
    assert ",UP," in details
    addresses = netns.run("ip", "addr", "show", "tp0").stdout
    assert "10.9.0.1/24" in addresses
    assert "fd09::1/64" in addresses

    agent.tell(proc, "close")
    closed = agent.read_line(proc)
    assert closed == {
        "closed": True,
        "link_exists": False,
        "threads": [],
        "errors": ["ClosedResource"] * 3,
    }
    assert proc.wait(30) == 0
    assert not link_exists(netns, "tp0")


def test_default_name_is_chosen_by_the_kernel(netns, agent):
    proc = agent.start("hold", name=None, addresses=False)
    ready = agent.read_line(proc)
    assert ready["name"].startswith("tunplug")
    assert ready["name"][len("tunplug") :].isdigit()
    assert link_exists(netns, ready["name"])
    agent.tell(proc, "close")
    assert agent.read_line(proc)["link_exists"] is False


def test_a_name_held_by_another_process_is_refused_with_busy_resource(netns, agent):
    holder = agent.start("hold", name="tp0", queues=2)
    agent.read_line(holder)
    result = agent.run("create_error", name="tp0", queues=2, addresses=False)
    assert result["error"] == "BusyResource"
    assert result["message"] == (
        "interface 'tp0' already exists (another process or a persistent device); "
        "choose another name"
    )
    assert result["errno"] == 16  # EBUSY
    assert result["threads"] == []
    # The holder's device was not joined: still exactly its own two queues.
    assert "numqueues 2" in netns.run("ip", "-d", "link", "show", "tp0").stdout


def test_a_second_create_in_the_same_process_is_refused(netns, agent):
    result = agent.run("twice", name="tp0")
    assert result["error"] == "BusyResource"
    assert "'tp0' already exists" in result["message"]


@pytest.mark.parametrize("mode", [[], ["multi_queue"]])
def test_a_persistent_device_of_that_name_is_refused_not_joined(netns, agent, mode):
    netns.run("ip", "tuntap", "add", "dev", "tpp", "mode", "tun", *mode)
    try:
        result = agent.run("create_error", name="tpp", queues=2, addresses=False)
        assert result["error"] == "BusyResource"
        assert "'tpp' already exists" in result["message"]
        details = netns.run("ip", "-d", "link", "show", "tpp").stdout
        assert "persist on" in details
        assert "numqueues 2" not in details
    finally:
        netns.run("ip", "tuntap", "del", "dev", "tpp", "mode", "tun", *mode, check=False)


def test_the_device_vanishes_when_its_process_is_killed(netns, agent):
    proc = agent.start("hold", name="tp0", queues=2)
    agent.read_line(proc)
    assert link_exists(netns, "tp0")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert wait_until_gone(netns, "tp0")


def test_packets_the_kernel_routes_into_the_device_arrive_through_recv_many(netns, agent):
    result = agent.run("read", name="tp0", queues=2, count=3000)
    assert result["udp4"] == 3000
    assert result["udp6"] == 3000
    assert result["in_order"]
    assert result["echo_requests"] >= 3
    assert result["largest_batch"] > 1, "under load, reads should come in batches"
    assert result["largest_batch"] <= 100
    assert result["stats"]["rx_packets"] >= 6003
    print("read path:", result["packets_per_second"], "packets/s,", result["batches"], "batches")


@pytest.mark.parametrize("queues", [1, 4])
def test_packets_written_reach_the_kernel_in_order_per_flow(netns, agent, queues):
    result = agent.run("write", name="tp0", queues=queues, flows=8, per_flow=200)
    assert result["flows"] == 16  # 8 from 10.9.0.2 and 8 from fd09::2
    assert result["all_in_order"]
    assert result["echo_replies"] == [4, 6]
    assert result["stats"]["drops"] == {"write_einval": 1}  # the version-0 packet
    assert result["stats"]["tx_packets"] == 2 * 8 * 200 + 2
    if queues > 1:
        assert result["queues_used"] >= 2


def test_deleting_the_interface_fails_the_device_with_closed_resource(netns, agent):
    result = agent.run("deleted", name="tp0", queues=2)
    assert result["recv"].startswith("ClosedResource: failed to read from tp0")
    assert "was the interface deleted?" in result["recv"]
    assert result["send"].startswith("ClosedResource")
    assert result["threads"] == []


def test_routes_are_added_once_skipped_when_connected_and_removed(netns, agent):
    netns.run("ip", "route", "add", "10.77.0.0/16", "dev", "lo")
    result = agent.run(
        "routes",
        name="tp0",
        networks=["10.9.0.0/24", "10.9.0.5/32", "10.20.0.0/16", "fd20::/48", "10.20.0.0/16"],
        clash=["10.77.0.0/16"],
    )
    assert result["added"] == ["10.20.0.0/16", "fd20::/48"]
    assert result["again"] == []  # identical routes already there: not an error, not ours
    assert "10.20.0.0/16" in result["table"]
    assert "fd20::/48" in result["table"]
    assert result["clash_error"] == {
        "message": "failed to add route 10.77.0.0/16 dev tp0: 10.77.0.0/16 already goes through lo",
        "errno": 17,
    }
    assert "10.20.0.0/16" not in result["after"]
    assert "fd20::/48" not in result["after"]
    assert "10.9.0.0/24" in result["after"]  # the kernel's own route stays
    assert result["recorded"] == ["10.30.0.0/16 dev tp0"]  # Tun.add_routes keeps track
    assert result["pyroute2_imported"] is False  # the work was done in child processes
