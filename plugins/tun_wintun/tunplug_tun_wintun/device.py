"""The ``wintun`` TUN backend: a WinTun adapter driven through wintun.dll (Windows only).

Who calls it: the engine, through the :class:`~tunplug.tun.Tun` contract, once the
``tun-wintun`` plugin registered :class:`WintunTun`. Tests open it over the fake wintun.dll of
:mod:`tunplug_tun_wintun.testing` with :meth:`WintunTun.open`.

How it works:

- **Creation** (a worker thread). wintun.dll is loaded by full path (the ``wintun_dll``
  setting, :mod:`.settings`, or ``wintun.dll`` next to ``python.exe``). If an adapter of the
  requested name exists, it belongs to another process and we refuse
  (:class:`~tunplug.exceptions.BusyResource`) rather than share it. The adapter is created
  with a GUID derived from its name (so Windows keeps one network profile per name, not a new
  one per run), a session is started with rings of :attr:`WintunTun.ring_capacity` bytes, and
  ``netsh`` sets the MTU and addresses.
- **Reading.** A dedicated thread (``wintun-<name>-rx``) drains the receive ring with
  ``WintunReceivePacket`` (each packet is copied out and released at once, so the ring frees
  up) until ``ERROR_NO_MORE_ITEMS``, handing batches of at most ``batch_size`` packets to the
  event loop through the bounded :class:`~tunplug.threaded.Inbound` channel of
  :class:`~tunplug.threaded.ThreadedTun` (:data:`RX_QUEUE_BATCHES` batches). When the loop does
  not keep up the thread blocks on the channel, the ring fills and WinTun drops, so memory
  stays bounded. With nothing to read it sleeps in ``WaitForMultipleObjects`` on the
  session's read-wait event and our quit event.
- **Writing** (in the event loop: two cheap calls per packet). :meth:`WintunTun.send` copies
  each packet into the send ring (``WintunAllocateSendPacket`` + ``WintunSendPacket``, which
  keep allocation order). When the ring is full (``ERROR_BUFFER_OVERFLOW``) the rest of the
  batch waits in a backlog of at most one batch, and :meth:`WintunTun.send_ready` polls
  (:data:`SEND_POLL_SECONDS`, doubling up to :data:`SEND_POLL_MAX_SECONDS`) until the backlog
  is in the ring: backpressure, never a drop. WinTun offers no "ring has room" event.
- **Shutdown.** :meth:`WintunTun.aclose` signals the quit event and closes the channel (waking
  the thread wherever it waits), joins it, ends the session and closes the adapter, which
  removes it together with its addresses and routes.

Runs on anyio's asyncio backend (the engine's).
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections import Counter
from collections.abc import Sequence
from functools import partial
from ipaddress import IPv4Network, IPv6Network
from typing import ClassVar, Self

import anyio
import anyio.lowlevel

from tunplug.commands import add_routes, check_command
from tunplug.exceptions import BackendUnavailable, TunError
from tunplug.threaded import ThreadedTun, running_asyncio_loop
from tunplug.tun import Packet, TunOptions
from tunplug_tun_wintun import netsh
from tunplug_tun_wintun._api import WindowsApi, load_windows_api
from tunplug_tun_wintun._win32 import ERROR_ALREADY_EXISTS, INFINITE, windows_error
from tunplug_tun_wintun._wintun import (
    MAX_ADAPTER_NAME_LENGTH,
    WINTUN_MAX_IP_PACKET_SIZE,
    check_ring_capacity,
    find_dll,
    forward_log,
)
from tunplug_tun_wintun.settings import WintunSettings

log = logging.getLogger(__name__)

#: Batches the receive thread may have waiting for the event loop before it blocks.
RX_QUEUE_BATCHES = 4
#: First and longest wait of :meth:`WintunTun.send_ready` while the send ring is full.
SEND_POLL_SECONDS = 0.0005
SEND_POLL_MAX_SECONDS = 0.01
#: The adapter name used when :attr:`TunOptions.name` is ``None``.
DEFAULT_NAME = "tunplug"
#: Names the adapter GUIDs (uuid5 of the adapter name), so one name keeps one GUID.
GUID_NAMESPACE = uuid.UUID("6b1f2a6e-5d39-4c7e-9a55-2f0b7f3f4e11")


class _Counters:
    """Receive counters, written by the receive thread under the channel's lock."""

    __slots__ = ("rx_bytes", "rx_packets")

    def __init__(self) -> None:
        self.rx_packets = self.rx_bytes = 0


class WintunTun(ThreadedTun):
    """A WinTun adapter with one receive thread; sends go straight into the ring.

    Open one with :meth:`create` (real wintun.dll) or :meth:`open` (any
    :class:`~tunplug_tun_wintun._api.WindowsApi`, e.g. the fake). The constructor takes an
    adapter and a started session, owns them from then on, and must run in the event loop.
    """

    backend_name = "wintun"
    description = "Windows WinTun adapter via ctypes, with a receive thread"
    caveat = "never run on real Windows: CI runs it over a fake wintun.dll"
    platforms = frozenset({"win32"})
    device_kind = "WinTun adapter"

    #: Bytes of each of the session's two rings: a power of two from 0x20000 (128 KiB) to
    #: 0x4000000 (64 MiB). The ``wintun_ring_capacity`` setting overrides it in :meth:`create`.
    #: 8 MiB is what wireguard-go uses.
    ring_capacity: ClassVar[int] = 0x800000
    #: The tunnel type WinTun records for the adapter.
    tunnel_type: ClassVar[str] = "tunplug"

    def __init__(
        self,
        api: WindowsApi,
        adapter: int,
        session: int,
        *,
        name: str,
        index: int,
        options: TunOptions,
    ) -> None:
        super().__init__(name=name, options=options, inbound_batches=RX_QUEUE_BATCHES)
        #: The adapter's interface index (what ``netsh`` and ``route print`` show).
        self.index = index
        self.addresses = options.addresses
        self._api = api
        self._adapter = adapter
        self._session = session
        self._closed_event = anyio.Event()
        self._backlog: list[bytes] = []
        self._routes: list[IPv4Network | IPv6Network] = []
        self._rx = _Counters()
        self.tx_packets = self.tx_bytes = 0
        #: Packets dropped on the send path, by reason (``too_large``, ``backlog_full``).
        self.drops: Counter[str] = Counter()
        self._read_event = api.wintun.read_wait_event(session)
        self._quit_event = api.kernel32.create_event(manual_reset=True)
        self._add_thread(f"wintun-{name}-rx", self._receive_loop)
        self._start_threads()

    # -- the Tun contract ---------------------------------------------------------------

    @classmethod
    def unavailable_reason(cls) -> str | None:
        # Only what needs no settings: a missing wintun.dll is create()'s to report.
        if sys.platform != "win32":
            return "runs on Windows only"
        return None

    @classmethod
    async def create(cls, options: TunOptions) -> Self:
        """Load wintun.dll (the ``wintun_dll`` setting, :mod:`.settings`) and :meth:`open`.

        :raises ~tunplug.exceptions.BackendUnavailable: not Windows, or no wintun.dll where
            it was looked for (the message says where, and where to get it).
        """
        reason = cls.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"{cls.backend_name}: {reason}")
        settings = (
            options.settings.plugin(WintunSettings)
            if options.settings is not None
            else WintunSettings()
        )
        path = find_dll(settings.wintun_dll)
        api = await anyio.to_thread.run_sync(load_windows_api, str(path))
        return await cls.open(options, api=api, ring_capacity=settings.wintun_ring_capacity)

    @classmethod
    async def open(
        cls, options: TunOptions, *, api: WindowsApi, ring_capacity: int | None = None
    ) -> Self:
        """Create the adapter and session through ``api`` and return the device.

        ``ring_capacity`` defaults to :attr:`ring_capacity`.

        :raises ~tunplug.exceptions.ConfigError: the ring capacity is not acceptable.
        :raises ~tunplug.exceptions.BusyResource: an adapter of that name exists.
        :raises ~tunplug.exceptions.PermissionDenied: not running as Administrator.
        """
        running_asyncio_loop(cls.backend_name)
        capacity = check_ring_capacity(
            cls.ring_capacity if ring_capacity is None else ring_capacity
        )
        name = options.name or DEFAULT_NAME
        if not 0 < len(name) <= MAX_ADAPTER_NAME_LENGTH:
            raise TunError(f"WinTun adapter names have 1 to {MAX_ADAPTER_NAME_LENGTH} characters")
        # Shielded: a cancellation must not strand an adapter created by the worker thread.
        with anyio.CancelScope(shield=True):
            adapter, session, index = await anyio.to_thread.run_sync(
                _open_adapter, api, name, cls.tunnel_type, capacity, options
            )
        try:
            return cls(api, adapter, session, name=name, index=index, options=options)
        except BaseException:
            api.wintun.end_session(session)
            api.wintun.close_adapter(adapter)
            raise

    async def send_ready(self) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        delay = SEND_POLL_SECONDS
        while self._backlog:
            self._flush_backlog()
            if not self._backlog:
                break
            with anyio.move_on_after(delay):
                await self._closed_event.wait()
            self._check_open()
            delay = min(delay * 2, SEND_POLL_MAX_SECONDS)

    def send(self, packets: Sequence[Packet]) -> None:
        if len(packets) > self.batch_size:
            raise ValueError(f"at most {self.batch_size} packets per send, not {len(packets)}")
        self._check_open()
        if self._backlog:
            self._flush_backlog()
        backlog = self._backlog
        for packet in packets:
            data = packet if type(packet) is bytes else bytes(packet)
            if not 0 < len(data) <= WINTUN_MAX_IP_PACKET_SIZE:
                self.drops["too_large" if data else "empty"] += 1
            elif backlog:
                self._to_backlog(data)
            elif self._write(data):
                self.tx_packets += 1
                self.tx_bytes += len(data)
            else:
                self._to_backlog(data)

    async def add_routes(self, networks: Sequence[IPv4Network | IPv6Network]) -> None:
        """Route ``networks`` into the adapter with ``netsh`` (see :mod:`.netsh`).

        Windows removes them with the adapter; a failure removes the ones this call added.
        """
        self._check_open()
        own = {address.network for address in self.addresses}
        wanted = [n for n in dict.fromkeys(networks) if n not in own and n not in self._routes]
        with anyio.CancelScope(shield=True):
            added = await anyio.to_thread.run_sync(
                add_routes, self._api.run, partial(netsh.route_command, self.index), wanted
            )
        self._routes.extend(added)

    @property
    def routes(self) -> list[IPv4Network | IPv6Network]:
        """The networks :meth:`add_routes` routed here."""
        return list(self._routes)

    # -- extras ---------------------------------------------------------------------------

    def stats(self) -> dict[str, int | dict[str, int]]:
        """Packets and bytes received and sent, and send-side drops by reason."""
        return {
            "rx_packets": self._rx.rx_packets,
            "rx_bytes": self._rx.rx_bytes,
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "drops": dict(self.drops),
        }

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.name!r} index={self.index} {state}>"

    # -- internals ------------------------------------------------------------------------

    def _write(self, packet: bytes) -> bool:
        """Put one packet in the send ring; ``False`` if the ring is full."""
        try:
            return bool(self._api.wintun.send(self._session, packet))
        except TunError as exc:
            self._fail(exc)
            raise

    def _to_backlog(self, packet: bytes) -> None:
        # Only a caller that skips send_ready() can overflow the backlog.
        if len(self._backlog) >= self.batch_size:
            self.drops["backlog_full"] += 1
            return
        self._backlog.append(packet)

    def _flush_backlog(self) -> None:
        """Move backlog packets into the ring, in order, while it has room."""
        backlog = self._backlog
        written = 0
        for packet in backlog:
            if not self._write(packet):
                break
            written += 1
            self.tx_packets += 1
            self.tx_bytes += len(packet)
        del backlog[:written]

    def _receive_loop(self) -> None:
        """Receive thread: drain the ring in batches; sleep on the read-wait and quit events."""
        wintun, kernel32 = self._api.wintun, self._api.kernel32
        session, inbound, batch_size = self._session, self._inbound, self.batch_size
        events = (self._read_event, self._quit_event)
        batch: list[bytes] = []
        try:
            while True:
                packet = wintun.receive_packet(session)
                if packet is not None:
                    batch.append(packet)
                    if len(batch) < batch_size:
                        continue
                if batch:
                    if not inbound.put(batch, self._rx):
                        return
                    batch = []
                    continue
                if kernel32.wait_any(events, INFINITE) == 1:
                    return  # the quit event
        except TunError as exc:
            if not self._closed:
                # Only receiving fails: sends go on until the send ring reports its own error.
                log.error("%s: %s", self.name, exc)
                inbound.fail(exc)

    # -- ThreadedTun ------------------------------------------------------------------------

    def _wake_threads(self) -> None:
        self._closed_event.set()
        self._backlog.clear()
        self._api.kernel32.set_event(self._quit_event)

    def _release(self) -> None:
        stuck = self._join_threads()
        if stuck:
            # Ending the session under a live thread could touch freed ring memory; leak it
            # instead (the process exit releases it).
            log.error("thread %s did not stop, leaving the WinTun session open", ", ".join(stuck))
            return
        wintun = self._api.wintun
        wintun.end_session(self._session)
        wintun.close_adapter(self._adapter)
        self._api.kernel32.close_handle(self._quit_event)


def _open_adapter(
    api: WindowsApi, name: str, tunnel_type: str, capacity: int, options: TunOptions
) -> tuple[int, int, int]:
    """Worker thread: create the adapter and session, then MTU and addresses via netsh."""
    wintun = api.wintun
    if not wintun.has_logger:
        wintun.set_logger(forward_log)
    existing = wintun.open_adapter(name)
    if existing is not None:
        wintun.close_adapter(existing)
        action = f"create WinTun adapter {name!r} (another process holds one of that name)"
        raise windows_error(ERROR_ALREADY_EXISTS, action)
    guid = uuid.uuid5(GUID_NAMESPACE, name)
    adapter = wintun.create_adapter(name, tunnel_type, guid)
    session = None
    try:
        index = api.iphlpapi.luid_to_index(wintun.adapter_luid(adapter))
        session = wintun.start_session(adapter, capacity)
        for command in netsh.interface_commands(index, options.addresses, options.mtu):
            check_command(api.run, command)
    except BaseException:
        if session is not None:
            wintun.end_session(session)
        wintun.close_adapter(adapter)
        raise
    return adapter, session, index
