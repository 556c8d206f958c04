"""Whole tunnels in one process: fake devices, real WireGuard, the engine in between."""

from __future__ import annotations

import anyio
import pytest

from tunplug import hookimpl
from tunplug.config import load_settings
from tunplug.events import TunnelInfo
from tunplug.testing.network import MemoryNetwork
from tunplug.testing.packets import icmp_echo, parse, udp
from tunplug.testing.tunnel import open_tunnel_pair
from tunplug.wireguard.flood import FloodFilter
from tunplug_crypto_cryptography.backend import CryptographyBackend

pytestmark = pytest.mark.anyio


async def test_ping_crosses_the_tunnel(tunnel_pair):  # the README's example, verbatim
    client, gateway = tunnel_pair.client, tunnel_pair.gateway
    await client.tun.inject([icmp_echo(client.address, gateway.address, 1, 1)])
    assert (await gateway.tun.delivered(1))[0][12:16] == bytes([10, 99, 0, 2])


async def test_udp_over_ipv4_and_ipv6_both_ways(tunnel_pair):
    client, gateway = tunnel_pair.client, tunnel_pair.gateway
    out = [
        udp("10.99.0.2", "10.99.0.1", 5000, 53, b"v4"),
        udp("fd99::2", "fd99::1", 5000, 53, b"v6"),
    ]
    await client.tun.inject(out)
    assert await gateway.tun.delivered(2) == out
    back = [udp("fd99::1", "fd99::2", 53, 5000, b"v6 answer")]
    await gateway.tun.inject(back)
    assert await client.tun.delivered(1) == back
    # Wire traffic is encrypted: the payloads never appear on the memory network.
    assert tunnel_pair.network.delivered >= 4


async def test_thousands_of_packets_arrive_in_order(tunnel_pair):
    client, gateway = tunnel_pair.client, tunnel_pair.gateway
    await tunnel_pair.connect()
    sent = [udp("10.99.0.2", "10.99.0.1", 4000, 4001, i.to_bytes(4, "big")) for i in range(3000)]
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(client.tun.inject, sent)
            received = [p for _ in range(30) for p in await gateway.tun.delivered(100)]
    assert received == sent


async def test_stages_run_per_batch_and_the_hook_runs_once(tunplug_plugin_host):
    class Counter:
        name = "counter"
        calls = 0
        packets = 0

        def outbound(self, packets):
            self.calls += 1
            self.packets += len(packets)
            return packets

        def inbound(self, packets):
            return packets

    stage = Counter()
    hook_calls = 0

    class Plugin:
        @hookimpl
        def tunplug_pipeline_stages(self, settings, tunnel):
            nonlocal hook_calls
            hook_calls += 1
            return [stage]

    host = tunplug_plugin_host(Plugin())
    info = TunnelInfo(interface="client-fake", tun_backend="fake", role="test")
    pipeline = host.pipeline(load_settings(), info)
    async with open_tunnel_pair(CryptographyBackend(), client_pipeline=pipeline) as pair:
        await pair.connect()
        packets = [udp("10.99.0.2", "10.99.0.1", 1, 2, bytes(32)) for _ in range(1000)]
        await pair.client.tun.inject(packets)
        with anyio.fail_after(10):
            for _ in range(10):
                await pair.gateway.tun.delivered(100)
    assert hook_calls == 1
    assert stage.packets == 1001  # with connect()'s ping
    assert stage.calls <= 1000 // 10, f"{stage.calls} stage calls: batches are not being used"


async def test_a_stage_can_drop_packets(tunplug_plugin_host):
    class DropDns:
        name = "drop-dns"

        def outbound(self, packets):
            return [p for p in packets if parse(p).payload[2:4] != (53).to_bytes(2, "big")]

        def inbound(self, packets):
            return packets

    async with open_tunnel_pair(
        CryptographyBackend(), client_pipeline=_pipeline(DropDns())
    ) as pair:
        dns, web = (
            udp("10.99.0.2", "10.99.0.1", 9, 53, b"q"),
            udp("10.99.0.2", "10.99.0.1", 9, 80, b"w"),
        )
        await pair.client.tun.inject([dns, web])
        with anyio.fail_after(5):
            assert await pair.gateway.tun.delivered(1) == [web]
        await anyio.sleep(0.05)
        assert pair.gateway.tun.pending_out == 0


async def test_stages_with_a_tick_are_ticked_by_the_timer_without_traffic():
    class Ticking:
        name = "ticking"
        ticks = 0

        def outbound(self, packets):
            return packets

        def inbound(self, packets):
            return packets

        def tick(self):
            Ticking.ticks += 1

    async with open_tunnel_pair(CryptographyBackend(), client_pipeline=_pipeline(Ticking())):
        await anyio.sleep(2.3)  # no packet at all: only the engine's timer task runs
    assert 2 <= Ticking.ticks <= 6  # about once a second (IDLE_TICK), not in a busy loop


def _pipeline(*stages):
    from tunplug.pipeline import Pipeline

    return Pipeline(stages)


async def test_a_full_device_pushes_back_instead_of_buffering():
    network = MemoryNetwork(queue_limit=256)
    async with open_tunnel_pair(CryptographyBackend(), network=network, tun_capacity=200) as pair:
        client, gateway = pair.client, pair.gateway
        await pair.connect()
        flood = [udp("10.99.0.2", "10.99.0.1", 1, 2, bytes(64)) for _ in range(2000)]
        with anyio.move_on_after(2):
            await client.tun.inject(flood)
        await anyio.sleep(0.2)
        # Nobody drains the gateway's device: it holds at most its capacity, the engine stops
        # reading the network, and the excess is dropped at the (bounded) socket queue.
        assert gateway.tun.pending_out <= gateway.tun.capacity
        assert network.drops["queue-full"] > 0
        # Once drained, traffic flows again. The marker may still meet the full socket queue
        # (drained while it is sent), so it is sent again until it arrives.
        marker = udp("10.99.0.2", "10.99.0.1", 7, 7, b"after")
        arrived = False
        with anyio.fail_after(5):
            while not arrived:
                gateway.tun.take_all()
                await client.tun.inject([marker])
                with anyio.move_on_after(0.2):
                    while not arrived:
                        arrived = marker in await gateway.tun.delivered(1)


class _FloodingProcessor:
    """Reports a new flood filter at each call, from a script."""

    def __init__(self, script: list[FloodFilter | None]) -> None:
        self.script = script

    def handshake_floods(self, now: float) -> FloodFilter | None:
        return self.script.pop(0) if self.script else None


class _FilteringTransport:
    def __init__(self) -> None:
        self.calls: list[FloodFilter] = []
        self.called = anyio.Event()

    def block_handshakes(self, policy):
        self.calls.append(policy)
        self.called.set()
        return True

    async def wait_for_calls(self, count: int) -> None:
        while len(self.calls) < count:
            self.called = anyio.Event()
            await self.called.wait()


async def test_flooding_sources_reach_the_transport_filter_and_a_reload_clears_it(
    monkeypatch, caplog
):
    import tunplug.engine as engine

    monkeypatch.setattr(engine, "FLOOD_CHECK_INTERVAL", 0.01)
    first = _FloodingProcessor([FloodFilter(frozenset({b"\xc0\x00\x02\x09"}))])
    second = _FloodingProcessor([FloodFilter(frozenset({bytes(8)}), others_one_in=16)])
    transport, current = _FilteringTransport(), [first]
    with anyio.move_on_after(0.2):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(engine.filter_handshake_floods, lambda: current[0], transport)
            await transport.wait_for_calls(1)
            current[0] = second  # a reload: the old device's block is lifted first
            await transport.wait_for_calls(3)
            tasks.cancel_scope.cancel()
    assert transport.calls == [
        FloodFilter(frozenset({b"\xc0\x00\x02\x09"})),
        FloodFilter(),
        FloodFilter(frozenset({bytes(8)}), others_one_in=16),
    ]
    assert "handshake flood from 192.0.2.9" in caplog.text
    assert "handshake flood from ::/64" in caplog.text
    assert "only one in 16 handshake messages is let through" in caplog.text
