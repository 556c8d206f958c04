"""The native engine: the Rust data plane's threads carry a tunnel's transport data, and
Python runs WireGuard's control plane beside them.

Who calls it: :meth:`tunplug_fastpath.NativeDataPath.engine`, from :mod:`tunplug.node`, when
the tunnel has no pipeline stages and its TUN backend hands its descriptors over (``linux-mq``:
``take_descriptors``). Otherwise the Python :class:`~tunplug.engine.TunnelEngine` drives the
native pieces batch by batch.

Threads (``tunplug-<interface>-q<i>-native`` and ``tunplug-<interface>-udp-native``), each a
loop around one native call that releases the GIL for the whole batch:

- one per TUN queue (:class:`~tunplug_fastpath._native.OutboundWorker`): read (TSO/USO
  super-packets split, checksums completed), route, seal, UDP GSO send. Packets for a peer
  without a usable session come back and go to the event loop: ``device.encrypt`` stages them
  and starts a handshake, exactly as on the Python path.
- one for the socket (:class:`~tunplug_fastpath._native.InboundWorker`): UDP GRO receive,
  open, replay window, allowed source, TCP coalescing, TUN write. Handshakes, cookies and
  transport messages for sessions the plane does not know go to a bounded queue in the plane
  (4096, as wireguard-go's handshake queue: when it is full they are dropped and counted,
  never transport data), which the loop drains (``device.decrypt``).

Each thread stays in native code for up to :data:`POLL_MS` at a time, returning early only when
Python must act, so it takes the GIL about ten times a second whatever the traffic.

The event loop keeps the device and the plane in step: after every device call the peers
whose sessions, endpoint or AllowedIPs changed are pushed to the plane (``take_changes``), and
every :data:`ACTIVITY_INTERVAL` the timer task hands the plane's activity (bytes, times,
endpoints, confirmed sessions, drops) to the device, whose timers then run as on the Python
path. Sessions keep one counter and one replay window, shared by Python and the threads. A
reload with a new private key replaces the device at the tunnel's owner
(:class:`~tunplug.engine.DeviceOwner`), which tells the engine: the plane is cleared and
filled again from the new device.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.lowlevel

from tunplug.engine import DeviceOwner, EngineStats, filter_handshake_floods
from tunplug.exceptions import ClosedResource, map_os_errors
from tunplug.transport import Datagram, UdpTransport
from tunplug.wireguard import WireGuardDevice
from tunplug_fastpath import _native
from tunplug_fastpath.pieces import NativeAead

if TYPE_CHECKING:
    from tunplug.pipeline import Pipeline
    from tunplug.tun import Tun
    from tunplug.wireguard.peer import Keypair, Peer

log = logging.getLogger(__name__)

#: How long one native call waits for its descriptor (ms): the threads' stop latency.
POLL_MS = 100
#: How often the plane's activity reaches the device's timers (seconds). WireGuard's timers
#: work in seconds; a confirmed session is handed over at once instead (see the inbound loop).
ACTIVITY_INTERVAL = 0.1
#: Datagrams from the plane's control queue per device call.
CONTROL_CHUNK = 128
#: Batches the threads may have waiting for the event loop; beyond that a batch is dropped
#: (counted as ``native-backlog``) instead of queueing without bound.
MAX_PENDING = 32

#: Errors that mean the device itself is gone.
_DEVICE_GONE = frozenset({errno.EBADF, errno.EBADFD, errno.ENODEV, errno.ENXIO})

_SendSpec = tuple[_native.TransportKey, int, float, int]


class NativeEngine:
    """Runs one tunnel on the native data plane until cancelled or until a descriptor fails."""

    @staticmethod
    def unsupported_reason(tun: Tun, transport: object, pipeline: Pipeline) -> str | None:
        """Why this tunnel cannot run on the native engine, or ``None``."""
        if pipeline.stages:
            names = ", ".join(stage.name for stage in pipeline.stages)
            return f"pipeline stages ({names}) see every batch in Python"
        if not callable(getattr(tun, "take_descriptors", None)):
            return f"the {tun.backend_name} TUN backend does not hand over its descriptors"
        if not isinstance(transport, UdpTransport):
            return "the transport is not a UDP socket"
        return None

    def __init__(
        self,
        tun: Tun,
        transport: UdpTransport,
        tunnel: DeviceOwner[WireGuardDevice],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        take: Callable[[], tuple[list[int], bool]] = tun.take_descriptors  # type: ignore[attr-defined]
        fds, vnet_hdr = take()
        udp = transport.stats()
        self.tun = tun
        self.transport = transport
        self.clock = clock
        self.stats = EngineStats()
        device = self._device = tunnel.device
        self.plane = _native.Plane(
            transport.fileno(), udp.gso_enabled, udp.gro_enabled, fds, vnet_hdr, device.mtu
        )
        self._queues = len(fds)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pending = 0
        self._backlog_drops = 0
        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()
        self._inbox_ready: asyncio.Event | None = None
        self._timer_wakeup = anyio.Event()
        #: Packets the socket thread wrote to the device (only that thread adds to it).
        self._delivered = 0
        self._sync()
        tunnel.subscribe(self._replaced)
        log.info(
            "native data plane on %s: %d queue thread(s) and a socket thread, TUN offloads %s, "
            "UDP GSO %s / GRO %s",
            tun.name,
            self._queues,
            "on" if vnet_hdr else "off",
            "on" if udp.gso_enabled else "off",
            "on" if udp.gro_enabled else "off",
        )

    # -- the device, replaceable by a reload ------------------------------------------------
    def _replaced(self, device: WireGuardDevice) -> None:
        """The tunnel's owner replaced the device (a new private key)."""
        self._device = device
        self.plane.clear()  # the new device's sessions and peer ids start over
        self._sync()
        self.wake_timers()

    # -- running ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Carry traffic until cancelled; a failing descriptor ends the run with TunError."""
        loop = asyncio.get_running_loop()
        self._inbox_ready = asyncio.Event()
        name = self.tun.name
        workers: list[tuple[Any, threading.Thread]] = []
        for queue in range(self._queues):
            worker = self.plane.outbound_worker(queue)
            thread = threading.Thread(
                target=self._outbound_loop,
                args=(worker, loop),
                name=f"tunplug-{name}-q{queue}-native",
                daemon=True,
            )
            workers.append((worker, thread))
        inbound = self.plane.inbound_worker()
        thread = threading.Thread(
            target=self._inbound_loop,
            args=(inbound, loop),
            name=f"tunplug-{name}-udp-native",
            daemon=True,
        )
        workers.append((inbound, thread))
        for _, thread in workers:
            thread.start()
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._serve_inbox, name=f"{name}-native-inbox")
                tasks.start_soon(self._timers, name=f"{name}-native-timers")
                tasks.start_soon(
                    filter_handshake_floods,
                    lambda: self._device,
                    self.transport,
                    self.clock,
                    name=f"{name}-native-floods",
                )
        finally:
            self._stop.set()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_join, [thread for _, thread in workers])
            self._collect_stats([worker for worker, _ in workers])

    def wake_timers(self) -> None:
        """The device's timers changed from outside (e.g. ``connect()``): look again now."""
        self._timer_wakeup.set()

    # -- threads ----------------------------------------------------------------------------
    def _outbound_loop(self, worker: Any, loop: asyncio.AbstractEventLoop) -> None:
        stop = self._stop
        while not stop.is_set():
            try:
                leftovers, _sent = worker.run_once(POLL_MS)
            except OSError as exc:
                self._post(loop, "failed", exc, force=True)
                return
            if leftovers:
                self._post(loop, "packets", leftovers)

    def _inbound_loop(self, worker: Any, loop: asyncio.AbstractEventLoop) -> None:
        stop = self._stop
        while not stop.is_set():
            try:
                delivered, confirmed, control_ready = worker.run_once(POLL_MS)
            except OSError as exc:
                self._post(loop, "failed", exc, force=True)
                return
            self._delivered += delivered
            if confirmed:
                # The responder may send on the session now: hand the device the news at once.
                self._post(loop, "confirmed", None, force=True)
            if control_ready:
                self._post(loop, "datagrams", None, force=True)

    def _post(
        self, loop: asyncio.AbstractEventLoop, kind: str, item: Any, *, force: bool = False
    ) -> None:
        """Any thread: hand ``item`` to the event loop, or drop it when too much waits."""
        with self._lock:
            if self._pending >= MAX_PENDING and not force:
                self._backlog_drops += len(item)
                return
            self._pending += 1
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(self._deliver, kind, item)

    def _deliver(self, kind: str, item: Any) -> None:
        self._inbox.append((kind, item))
        assert self._inbox_ready is not None
        self._inbox_ready.set()

    # -- the event loop's side --------------------------------------------------------------
    async def _serve_inbox(self) -> None:
        ready = self._inbox_ready
        assert ready is not None
        while True:
            await ready.wait()
            ready.clear()
            while self._inbox:
                kind, item = self._inbox.popleft()
                with self._lock:
                    self._pending -= 1
                await self._handle(kind, item)

    async def _handle(self, kind: str, item: Any) -> None:
        device, now = self._device, self.clock()
        if kind == "packets":
            await self._emit(device.encrypt(item, now).to_network)
        elif kind == "datagrams":
            # The plane's bounded queue (handshakes, cookies, unknown sessions), drained in
            # chunks with a checkpoint between them: under a handshake flood the queue is what
            # fills and overflows, while the threads keep carrying transport data.
            while batch := self.plane.take_control(CONTROL_CHUNK):
                output = device.decrypt(batch, self.clock())
                await self._emit(output.to_network)
                if output.to_tun:
                    self._count(self.plane.write_tun([bytes(p) for p in output.to_tun]))
                    self.stats.tun_packets_written += len(output.to_tun)
                self._sync()
                await anyio.lowlevel.checkpoint()
        elif kind == "confirmed":
            await self._emit(device.confirm_sessions(self.plane.take_confirmed(), now).to_network)
        else:
            # A descriptor failed in a thread: end the run with tunplug's exception for it,
            # errno kept (as the linux-mq threads do).
            action = f"carry packets on {self.tun.name} (native data plane)"
            if item.errno in _DEVICE_GONE:
                raise ClosedResource(
                    f"failed to {action}: {item.strerror} (was the interface deleted?)", item.errno
                )
            with map_os_errors(action):
                raise item
        self._sync()
        self.wake_timers()

    async def _timers(self) -> None:
        while True:
            device = self._device
            now = self.clock()
            await self._apply_plane(device, now)
            deadline = device.next_deadline()
            if deadline is not None and deadline <= now:
                await self._emit(device.tick(now).to_network)
                deadline = device.next_deadline()
            self._sync()
            target = min(deadline if deadline is not None else math.inf, now + ACTIVITY_INTERVAL)
            delay = target - self.clock()
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._timer_wakeup.wait()
            self._timer_wakeup = anyio.Event()

    async def _apply_plane(self, device: WireGuardDevice, now: float) -> None:
        """The plane's news since the last look: confirmations, activity, drops."""
        confirmed = self.plane.take_confirmed()
        if confirmed:
            await self._emit(device.confirm_sessions(confirmed, now).to_network)
        for peer_id, tx_bytes, tx_messages, tx_last, rx_bytes, rx_messages, rx_data, rx_last, (
            endpoint
        ) in self.plane.take_activity():
            output = device.apply_activity(
                peer_id,
                (tx_bytes, tx_messages, tx_last),
                (rx_bytes, rx_messages, rx_data, rx_last),
                endpoint,
                now,
            )
            await self._emit(output.to_network)
        self._count(self.plane.take_drops())
        with self._lock:
            backlog, self._backlog_drops = self._backlog_drops, 0
        if backlog:
            device.drops["native-backlog"] += backlog

    def _count(self, drops: dict[str, int]) -> None:
        if drops:
            self._device.drops.update(drops)

    async def _emit(self, datagrams: list[Datagram]) -> None:
        if datagrams:
            await self.transport.send_many(datagrams)
            self.stats.datagrams_sent += len(datagrams)

    # -- keeping the plane in step with the device ------------------------------------------
    def _sync(self) -> None:
        device = self._device
        changed, removed = device.take_changes()
        for peer_id in removed:
            self.plane.remove_peer(peer_id)
        for peer in changed:
            push_peer(self.plane, device, peer)

    def _collect_stats(self, workers: Sequence[Any]) -> None:
        stats = self.stats
        stats.tun_packets_written += self._delivered
        for worker in workers:
            numbers = worker.stats()
            stats.tun_packets_read += numbers.get("tun_packets", 0)
            stats.datagrams_sent += numbers.get("datagrams_sent", 0)
            stats.datagrams_received += numbers.get("datagrams_received", 0)


def push_peer(plane: _native.Plane, device: WireGuardDevice, peer: Peer) -> None:
    """Tell ``plane`` everything about ``peer``: endpoint, AllowedIPs, the session to send with
    (current) and the sessions to receive on (current, previous, next; a ``next`` one carries
    the send side its first packet confirms)."""
    timing = device.timing

    def send_spec(keypair: Keypair | None) -> _SendSpec | None:
        if keypair is None or not isinstance(keypair.send, NativeAead):
            return None
        expires = keypair.created + timing.reject_after_time
        return (keypair.send.key, keypair.remote_index, expires, timing.reject_after_messages)

    receivers = [
        (
            keypair.local_index,
            keypair.receive.key,
            cast(_native.ReplayWindow, keypair.replay),  # the data path's replay_windows
            keypair.created + timing.reject_after_time,
            send_spec(keypair) if keypair is peer.next else None,
        )
        for keypair in peer.keypairs()
        if isinstance(keypair.receive, NativeAead)
    ]
    networks = [
        (network.network_address.packed, network.prefixlen)
        for network in device.allowed_networks(peer)
    ]
    plane.update_peer(peer.id, peer.endpoint, networks, send_spec(peer.current), receivers)


def _join(threads: Sequence[threading.Thread]) -> None:
    for thread in threads:
        thread.join(5.0)
        if thread.is_alive():
            log.error("native thread %s did not stop", thread.name)
