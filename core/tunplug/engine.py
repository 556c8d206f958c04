"""The tunnel engine: the I/O loop that joins a TUN device, a datagram transport and WireGuard.

Who calls it: the headless client, the gateway, the demo and the test fixtures. It owns no
protocol logic: the sans-IO :class:`Processor` (:class:`tunplug.wireguard.WireGuardDevice`)
turns batches of bytes into batches of bytes, and the engine moves them::

    outbound: tun.recv_many -> pipeline.outbound -> processor.encrypt -> transport.send_many
    inbound:  transport.recv_many -> processor.decrypt -> pipeline.inbound
              -> tun.send_ready / tun.send   (handshake replies -> transport.send_many)
    timers:   processor.tick at processor.next_deadline()
    floods:   processor.handshake_floods -> transport.block_handshakes, once a second

Each direction is one task; a slow device stops the inbound task at ``send_ready`` (and so
stops reading the socket), which is the backpressure the Tun contract promises.

A running tunnel's device has one owner, :class:`DeviceOwner` (:mod:`tunplug.node`'s runner):
a reload with a new private key replaces the device there, and the engines, subscribed to it,
switch at their next batch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Protocol, TypeVar, runtime_checkable

import anyio
import anyio.lowlevel

from tunplug.pipeline import Pipeline
from tunplug.transport import Datagram, DatagramTransport
from tunplug.tun import Packet, Tun
from tunplug.wireguard.flood import FloodFilter

log = logging.getLogger(__name__)

#: Longest sleep of the timer task when the processor has no deadline.
IDLE_TICK = 1.0
#: How often the processor is asked which sources flood it with handshakes.
FLOOD_CHECK_INTERVAL = 1.0
#: A busy direction task lets the others (timers, the flood check) run at least this often.
YIELD_INTERVAL = 0.005


class ProcessorOutput(Protocol):
    """What a processor returns: datagrams for the network and packets for the device."""

    @property
    def to_network(self) -> list[Datagram]: ...

    @property
    def to_tun(self) -> list[bytes]: ...


class Processor(Protocol):
    """A sans-IO tunnel protocol, driven with batches and the current time."""

    def encrypt(self, packets: Sequence[Packet], now: float) -> ProcessorOutput: ...

    def decrypt(self, datagrams: Sequence[Datagram], now: float) -> ProcessorOutput: ...

    def tick(self, now: float) -> ProcessorOutput: ...

    def next_deadline(self) -> float | None: ...


_Device_co = TypeVar("_Device_co", covariant=True)


@runtime_checkable
class DeviceOwner(Protocol[_Device_co]):
    """Who owns a running tunnel's device and is the only one to replace it
    (:class:`tunplug.live_tunnel.RunningTunnel`: a reload with a new private key).

    An engine reads :attr:`device` once when it is built and subscribes to replacements, so
    that per batch it still reads one attribute of its own.
    """

    @property
    def device(self) -> _Device_co:
        """The device the tunnel uses now."""

    def subscribe(self, on_replaced: Callable[[_Device_co], None]) -> None:
        """Call ``on_replaced(new_device)`` on the event loop each time the device is
        replaced, after the old one stopped being handed out."""


@runtime_checkable
class ReportsFloods(Protocol):
    """A processor that finds handshake floods
    (:meth:`tunplug.wireguard.WireGuardDevice.handshake_floods`)."""

    def handshake_floods(self, now: float) -> FloodFilter | None: ...


@runtime_checkable
class BlocksHandshakes(Protocol):
    """A transport that can have the kernel drop handshake messages
    (:meth:`tunplug.transport.UdpTransport.block_handshakes`)."""

    def block_handshakes(self, policy: FloodFilter) -> bool: ...


async def filter_handshake_floods(
    current_processor: Callable[[], object],
    transport: object,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Every FLOOD_CHECK_INTERVAL, hand what the processor finds of handshake floods to the
    transport's socket filter; runs until cancelled (both engines run it as a task). A new
    processor (a reload) starts with nothing filtered."""
    if not isinstance(transport, BlocksHandshakes):
        return
    current = FloodFilter()
    last: object = None
    while True:
        await anyio.sleep(FLOOD_CHECK_INTERVAL)
        processor = current_processor()
        if processor is not last:
            last = processor
            if current.active:
                current = FloodFilter()
                transport.block_handshakes(current)
        if not isinstance(processor, ReportsFloods):
            continue
        update = processor.handshake_floods(clock())
        if update is None:
            continue
        log_flood_change(current, update)
        transport.block_handshakes(update)
        current = update


def log_flood_change(before: FloodFilter, after: FloodFilter) -> None:
    """One line per source blocked or unblocked, and per change of the spread-flood sample."""
    for source in sorted(after.blocked - before.blocked):
        log.warning(
            "handshake flood from %s: its handshake messages are now dropped in the kernel "
            "(one in %d still checked; its transport data still passes)",
            describe_source(source),
            after.sample_one_in,
        )
    for source in sorted(before.blocked - after.blocked):
        log.info("handshake flood from %s is over: unblocked", describe_source(source))
    if after.others_one_in != before.others_one_in:
        if after.others_one_in > 1:
            log.warning(
                "handshake flood from many sources: only one in %d handshake messages is "
                "let through by the kernel (transport data still passes)",
                after.others_one_in,
            )
        else:
            log.info("handshake flood from many sources is over: every handshake let through")


def describe_source(source: bytes) -> str:
    """A blocked source for a log line: an IPv4 address, or an IPv6 /64."""
    if len(source) == 4:
        return str(IPv4Address(source))
    return f"{IPv6Address(source + bytes(16 - len(source)))}/64"


@dataclass(slots=True)
class EngineStats:
    """Counts the engine keeps (per batch, not per packet)."""

    tun_packets_read: int = 0
    tun_packets_written: int = 0
    datagrams_sent: int = 0
    datagrams_received: int = 0
    batches_out: int = 0
    batches_in: int = 0


class TunnelEngine:
    """Runs one tunnel until cancelled or until the device or transport fails.

    ``processor`` is the device itself when nothing replaces it (the test fixtures, the
    in-process demo), or its :class:`DeviceOwner` when a reload may (a node's runner).
    """

    def __init__(
        self,
        tun: Tun,
        transport: DatagramTransport,
        processor: Processor | DeviceOwner[Processor],
        pipeline: Pipeline | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tun = tun
        self.transport = transport
        if isinstance(processor, DeviceOwner):
            processor.subscribe(self._replaced)
            processor = processor.device
        self._processor: Processor = processor
        self.pipeline = pipeline or Pipeline()
        self.clock = clock
        self.stats = EngineStats()
        self._timer_target = math.inf
        self._timer_wakeup = anyio.Event()
        self._yield_at = -math.inf

    async def run(self) -> None:
        """Carry traffic until cancelled. Errors of the device or transport end the run."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._outbound, name=f"{self.tun.name}-outbound")
            tasks.start_soon(self._inbound, name=f"{self.tun.name}-inbound")
            tasks.start_soon(self._timers, name=f"{self.tun.name}-timers")
            tasks.start_soon(
                filter_handshake_floods,
                lambda: self._processor,
                self.transport,
                self.clock,
                name=f"{self.tun.name}-floods",
            )

    @property
    def processor(self) -> Processor:
        """The processor the engine drives now."""
        return self._processor

    def _replaced(self, processor: Processor) -> None:
        """The owner replaced the device: the next batch and the timers use the new one."""
        self._processor = processor
        self._deadline_may_have_moved()

    async def _outbound(self) -> None:
        tun, pipeline, stats = self.tun, self.pipeline, self.stats
        while True:
            packets = list(await tun.recv_many())
            stats.tun_packets_read += len(packets)
            stats.batches_out += 1
            if pipeline.stages:
                packets = pipeline.outbound(packets)
            # self._processor per batch, not once: a reload may replace it (new private key).
            output = self._processor.encrypt(packets, self.clock())
            await self._emit(output.to_network)
            self._deadline_may_have_moved()
            await self._let_others_run()

    async def _inbound(self) -> None:
        tun, pipeline, stats = self.tun, self.pipeline, self.stats
        batch = tun.batch_size
        while True:
            datagrams = await self.transport.recv_many(batch)
            stats.datagrams_received += len(datagrams)
            stats.batches_in += 1
            output = self._processor.decrypt(datagrams, self.clock())
            if output.to_network:
                await self._emit(output.to_network)
            packets: list[Packet] = list(output.to_tun)
            if packets and pipeline.stages:
                packets = pipeline.inbound(packets)
            for start in range(0, len(packets), batch):
                await tun.send_ready()
                chunk = packets[start : start + batch]
                tun.send(chunk)
                stats.tun_packets_written += len(chunk)
            self._deadline_may_have_moved()
            await self._let_others_run()

    async def _let_others_run(self) -> None:
        """While datagrams or packets keep coming (a flood), none of a direction task's awaits
        has to wait, so without this the timers and the flood check would never run. At most
        every YIELD_INTERVAL of real time (whatever clock the device has), not per batch."""
        if time.monotonic() >= self._yield_at:
            await anyio.lowlevel.checkpoint()
            self._yield_at = time.monotonic() + YIELD_INTERVAL

    async def _timers(self) -> None:
        last_stage_tick = -math.inf
        while True:
            now = self.clock()
            deadline = self._processor.next_deadline()
            self._timer_target = deadline if deadline is not None else now + IDLE_TICK
            delay = min(max(self._timer_target - now, 0.0), IDLE_TICK)
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._timer_wakeup.wait()
                self._timer_wakeup = anyio.Event()
            # The timer task also wakes when a batch moves a deadline: stages are ticked at
            # most about once per IDLE_TICK (10% slack for timer jitter), not per wake-up.
            if self.pipeline.stages and self.clock() - last_stage_tick >= 0.9 * IDLE_TICK:
                last_stage_tick = self.clock()
                self.pipeline.tick()
            # Read again after the wait: a reload may have replaced the processor meanwhile.
            processor, now = self._processor, self.clock()
            deadline = processor.next_deadline()
            if deadline is not None and deadline <= now:
                await self._emit(processor.tick(now).to_network)

    async def _emit(self, datagrams: list[Datagram]) -> None:
        if datagrams:
            await self.transport.send_many(datagrams)
            self.stats.datagrams_sent += len(datagrams)

    def wake_timers(self) -> None:
        """The processor's timers changed from outside (e.g. ``connect()``): look again now."""
        self._deadline_may_have_moved()

    def _deadline_may_have_moved(self) -> None:
        deadline = self._processor.next_deadline()
        if deadline is not None and deadline < self._timer_target:
            self._timer_target = deadline
            self._timer_wakeup.set()
