"""A fake wintun.dll (with the kernel32 and iphlpapi bits the backend uses), for tests on any OS.

Who calls it: tunplug's own tests (``tests/plugins/tun_wintun``, ``tests/contract``) and anyone
who wants to run :class:`~tunplug_tun_wintun.device.WintunTun` without Windows::

    fake = FakeWindows()
    async with await WintunTun.open(TunOptions(name="wt0"), api=fake.api()) as tun:
        fake.inject("wt0", [packet])           # the "OS" sends a packet into the adapter
        assert await tun.recv_many() == [packet]

Every function is a real ctypes function pointer (``CFUNCTYPE`` over Python code) built from
the same prototypes the binding applies, so calls go through ctypes' argument conversion like
calls into the DLL. The rings live in ctypes buffers and follow wintun's rules: packets are
4-byte aligned behind a 4-byte size, one alignment unit stays free, a full send ring answers
``ERROR_BUFFER_OVERFLOW``, an empty receive ring ``ERROR_NO_MORE_ITEMS``, the read-wait event is
an auto-reset event set when packets arrive, and ``WintunSendPacket`` publishes packets in
allocation order. It is a model written from wintun.h and ``api/session.c``, not the DLL:
driver behaviour (dropping when the receive ring is full, NDIS, the registry) is not modelled.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from tunplug_tun_wintun._api import WindowsApi
from tunplug_tun_wintun._win32 import (
    ERROR_ACCESS_DENIED,
    ERROR_ALREADY_EXISTS,
    ERROR_BUFFER_OVERFLOW,
    ERROR_FILE_NOT_FOUND,
    ERROR_HANDLE_EOF,
    ERROR_INVALID_PARAMETER,
    ERROR_NO_MORE_ITEMS,
    INFINITE,
    IPHLPAPI_PROTOTYPES,
    KERNEL32_PROTOTYPES,
    WAIT_FAILED,
    WAIT_OBJECT_0,
    WAIT_TIMEOUT,
    Iphlpapi,
    Kernel32,
    Prototype,
)
from tunplug_tun_wintun._wintun import (
    WINTUN_MAX_IP_PACKET_SIZE,
    WINTUN_MAX_RING_CAPACITY,
    WINTUN_MIN_RING_CAPACITY,
    WintunLibrary,
    wintun_prototypes,
)

__all__ = ["FakeAdapter", "FakeRing", "FakeSession", "FakeWindows"]

_ALIGNMENT = 4  # sizeof(ULONG): packet headers and sizes are 4-byte aligned
_HEADER = 4  # TUN_PACKET.Size


def _aligned(size: int) -> int:
    return (_HEADER + size + _ALIGNMENT - 1) & ~(_ALIGNMENT - 1)


@dataclass
class _Slot:
    offset: int
    size: int
    state: str  # "allocated" -> "ready" -> "taken"


class FakeRing:
    """One ring of a session: ``capacity`` bytes of ctypes memory holding packets in order.

    Like wintun's, the buffer has room for one largest packet past ``capacity``, so a packet
    starting near the end never wraps.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._memory = ctypes.create_string_buffer(capacity + _aligned(WINTUN_MAX_IP_PACKET_SIZE))
        self.base = ctypes.addressof(self._memory)
        self._head = 0  # first byte still in use
        self._tail = 0  # where the next packet goes
        self._slots: deque[_Slot] = deque()

    @property
    def free(self) -> int:
        """Bytes an allocation may use (wintun keeps one alignment unit free)."""
        return (self._head - self._tail - _ALIGNMENT) & (self.capacity - 1)

    def allocate(self, size: int) -> _Slot | None:
        need = _aligned(size)
        if need > self.free:
            return None
        slot = _Slot(self._tail, size, "allocated")
        ctypes.c_uint32.from_address(self.base + slot.offset).value = size
        self._tail = (self._tail + need) & (self.capacity - 1)
        self._slots.append(slot)
        return slot

    def address(self, slot: _Slot) -> int:
        return self.base + slot.offset + _HEADER

    def slot_at(self, address: int) -> _Slot | None:
        for slot in self._slots:
            if self.address(slot) == address:
                return slot
        return None

    def first(self, state: str) -> _Slot | None:
        return next((slot for slot in self._slots if slot.state == state), None)

    def free_front(self, state: str) -> list[_Slot]:
        """Free the leading slots in ``state`` (in order) and return them."""
        freed = []
        while self._slots and self._slots[0].state == state:
            slot = self._slots.popleft()
            self._head = (slot.offset + _aligned(slot.size)) & (self.capacity - 1)
            freed.append(slot)
        return freed

    @property
    def packets(self) -> int:
        return len(self._slots)


@dataclass
class FakeAdapter:
    """An adapter created through the fake DLL."""

    name: str
    tunnel_type: str
    guid: uuid.UUID | None
    luid: int
    index: int
    closed: bool = False
    terminating: bool = False
    sessions: list[FakeSession] = field(default_factory=list)


@dataclass
class FakeSession:
    """A session's two rings: ``to_app`` (WintunReceivePacket) and ``to_os`` (WintunSendPacket)."""

    adapter: FakeAdapter
    capacity: int
    read_event: int
    to_app: FakeRing
    to_os: FakeRing
    ended: bool = False


@dataclass
class _Event:
    manual_reset: bool
    signalled: bool = False


class FakeWindows:
    """wintun.dll, kernel32 and iphlpapi stand-ins sharing one handle table.

    :meth:`api` gives the :class:`~tunplug_tun_wintun._api.WindowsApi` to pass to
    :meth:`WintunTun.open <tunplug_tun_wintun.device.WintunTun.open>`. The "operating
    system" side is :meth:`inject`, :meth:`take_sent` and :meth:`terminate`. ``admin=False``
    plays a process without Administrator rights; ``failing_commands`` holds words that make
    a ``netsh`` command containing one of them fail. Commands run are kept in
    :attr:`commands`, log lines from the DLL's logger in :attr:`log_lines`.
    """

    def __init__(self, *, admin: bool = True, failing_commands: Iterable[str] = ()) -> None:
        self.admin = admin
        self.failing_commands = set(failing_commands)
        self.commands: list[list[str]] = []
        self.adapters: dict[str, FakeAdapter] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._handles = itertools.count(0x1000, 4)
        self._adapter_handles: dict[int, tuple[FakeAdapter, bool]] = {}  # handle -> (a, owner)
        self._sessions: dict[int, FakeSession] = {}
        self._events: dict[int, _Event] = {}
        self._errors = threading.local()
        self._logger: Any = None
        self.dll = self._library(wintun_prototypes(ctypes.CFUNCTYPE), self._wintun_functions())
        self.kernel32 = self._library(KERNEL32_PROTOTYPES, self._kernel32_functions())
        self.iphlpapi = self._library(IPHLPAPI_PROTOTYPES, self._iphlpapi_functions())

    def api(self) -> WindowsApi:
        """The backend's view of this fake Windows."""
        return WindowsApi(
            wintun=WintunLibrary(self.dll, functype=ctypes.CFUNCTYPE, last_error=self.last_error),
            kernel32=Kernel32(self.kernel32, self.last_error),
            iphlpapi=Iphlpapi(self.iphlpapi),
            run=self.run,
        )

    def last_error(self) -> int:
        """The calling thread's last error (what ``ctypes.get_last_error`` returns on Windows)."""
        code: int = getattr(self._errors, "code", 0)
        return code

    # -- the operating system's side ---------------------------------------------------------
    def session(self, adapter_name: str) -> FakeSession:
        """The open session of an adapter."""
        with self._lock:
            adapter = self.adapters[adapter_name]
            return next(s for s in adapter.sessions if not s.ended)

    def inject(self, adapter_name: str, packets: Sequence[bytes]) -> int:
        """Put packets in the adapter's receive ring; return how many fit (in order)."""
        with self._lock:
            session = next(s for s in self.adapters[adapter_name].sessions if not s.ended)
            count = 0
            for packet in packets:
                slot = session.to_app.allocate(len(packet))
                if slot is None:
                    break
                ctypes.memmove(session.to_app.address(slot), bytes(packet), len(packet))
                slot.state = "ready"
                count += 1
            if count:
                self._events[session.read_event].signalled = True
                self._changed.notify_all()
            return count

    def take_sent(self, adapter_name: str, max_packets: int | None = None) -> list[bytes]:
        """Take the packets the adapter sent (published, in order), freeing ring space."""
        with self._lock:
            session = next(s for s in self.adapters[adapter_name].sessions if not s.ended)
            ring = session.to_os
            taken: list[bytes] = []
            for slot in list(ring._slots):
                if slot.state != "ready" or (max_packets is not None and len(taken) >= max_packets):
                    break
                taken.append(ctypes.string_at(ring.address(slot), slot.size))
                slot.state = "taken"
            ring.free_front("taken")
            return taken

    def terminate(self, adapter_name: str) -> None:
        """Play the adapter going away: its sessions answer ``ERROR_HANDLE_EOF`` from now on."""
        with self._lock:
            adapter = self.adapters[adapter_name]
            adapter.terminating = True
            for session in adapter.sessions:
                self._events[session.read_event].signalled = True
            self._changed.notify_all()

    def run(self, argv: Sequence[str]) -> tuple[int, str]:
        self.commands.append(list(argv))
        if any(word in " ".join(argv) for word in self.failing_commands):
            return 1, "The object already exists."
        return 0, "Ok."

    @property
    def open_events(self) -> int:
        """Event handles neither closed nor owned by a live session (to catch leaks)."""
        with self._lock:
            session_events = {s.read_event for s in self._sessions.values()}
            return len(set(self._events) - session_events)

    # -- building the libraries ---------------------------------------------------------------
    @staticmethod
    def _library(
        prototypes: dict[str, Prototype] | Any, functions: dict[str, Callable[..., Any]]
    ) -> SimpleNamespace:
        pointers = {}
        for name, prototype in prototypes.items():
            pointer_type = ctypes.CFUNCTYPE(prototype.restype, *prototype.argtypes)
            pointers[name] = pointer_type(functions[name])
        return SimpleNamespace(**pointers)

    def _fail(self, code: int) -> None:
        self._errors.code = code

    def _log(self, message: str) -> None:
        if self._logger:
            self._logger(0, 0, message)

    # -- wintun.dll ---------------------------------------------------------------------------
    def _wintun_functions(self) -> dict[str, Callable[..., Any]]:
        def create_adapter(name: str, tunnel_type: str, guid: Any) -> int | None:
            if not self.admin:
                self._fail(ERROR_ACCESS_DENIED)
                return None
            with self._lock:
                if name in self.adapters:
                    self._fail(ERROR_ALREADY_EXISTS)
                    return None
                requested = uuid.UUID(bytes_le=bytes(guid.contents)) if guid else None
                handle = next(self._handles)
                adapter = FakeAdapter(name, tunnel_type, requested, 0x1000 + handle, handle % 97)
                self.adapters[name] = adapter
                self._adapter_handles[handle] = (adapter, True)
            self._log(f"Created adapter {name}")
            return handle

        def open_adapter(name: str) -> int | None:
            with self._lock:
                adapter = self.adapters.get(name)
                if adapter is None:
                    self._fail(ERROR_FILE_NOT_FOUND)
                    return None
                handle = next(self._handles)
                self._adapter_handles[handle] = (adapter, False)
                return handle

        def close_adapter(handle: int | None) -> None:
            with self._lock:
                adapter, owner = self._adapter_handles.pop(handle or 0, (None, False))
                if adapter is not None and owner:
                    adapter.closed = True
                    del self.adapters[adapter.name]

        def get_adapter_luid(handle: int, luid: Any) -> None:
            with self._lock:
                luid.contents.Value = self._adapter_handles[handle][0].luid

        def start_session(handle: int, capacity: int) -> int | None:
            valid = WINTUN_MIN_RING_CAPACITY <= capacity <= WINTUN_MAX_RING_CAPACITY
            if not valid or capacity & (capacity - 1):
                self._fail(ERROR_INVALID_PARAMETER)
                return None
            with self._lock:
                adapter = self._adapter_handles[handle][0]
                event = next(self._handles)
                self._events[event] = _Event(manual_reset=False)
                session = FakeSession(
                    adapter, capacity, event, FakeRing(capacity), FakeRing(capacity)
                )
                adapter.sessions.append(session)
                number = next(self._handles)
                self._sessions[number] = session
                return number

        def end_session(number: int) -> None:
            with self._lock:
                session = self._sessions.pop(number)
                session.ended = True
                del self._events[session.read_event]

        def get_read_wait_event(number: int) -> int:
            with self._lock:
                return self._sessions[number].read_event

        def receive_packet(number: int, size: Any) -> int | None:
            with self._lock:
                session = self._sessions.get(number)
                if session is None or session.adapter.terminating:
                    self._fail(ERROR_HANDLE_EOF)
                    return None
                slot = session.to_app.first("ready")
                if slot is None:
                    self._fail(ERROR_NO_MORE_ITEMS)
                    return None
                slot.state = "taken"  # handed out, not yet released
                size[0] = slot.size
                return session.to_app.address(slot)

        def release_receive_packet(number: int, address: int) -> None:
            with self._lock:
                ring = self._sessions[number].to_app
                slot = ring.slot_at(address)
                if slot is not None:
                    slot.state = "released"
                ring.free_front("released")

        def allocate_send_packet(number: int, size: int) -> int | None:
            with self._lock:
                session = self._sessions.get(number)
                if session is None or session.adapter.terminating:
                    self._fail(ERROR_HANDLE_EOF)
                    return None
                slot = session.to_os.allocate(size)
                if slot is None:
                    self._fail(ERROR_BUFFER_OVERFLOW)
                    return None
                return session.to_os.address(slot)

        def send_packet(number: int, address: int) -> None:
            with self._lock:
                slot = self._sessions[number].to_os.slot_at(address)
                if slot is not None:
                    slot.state = "ready"

        def set_logger(callback: Any) -> None:
            self._logger = callback

        return {
            "WintunCreateAdapter": create_adapter,
            "WintunOpenAdapter": open_adapter,
            "WintunCloseAdapter": close_adapter,
            "WintunDeleteDriver": lambda: 1,
            "WintunGetAdapterLUID": get_adapter_luid,
            "WintunGetRunningDriverVersion": lambda: 0x0000000E,  # 0.14
            "WintunSetLogger": set_logger,
            "WintunStartSession": start_session,
            "WintunEndSession": end_session,
            "WintunGetReadWaitEvent": get_read_wait_event,
            "WintunReceivePacket": receive_packet,
            "WintunReleaseReceivePacket": release_receive_packet,
            "WintunAllocateSendPacket": allocate_send_packet,
            "WintunSendPacket": send_packet,
        }

    # -- kernel32 and iphlpapi ------------------------------------------------------------------
    def _kernel32_functions(self) -> dict[str, Callable[..., Any]]:
        def create_event(attributes: Any, manual_reset: int, initial: int, name: Any) -> int:
            with self._lock:
                handle = next(self._handles)
                self._events[handle] = _Event(bool(manual_reset), bool(initial))
                return handle

        def set_event(handle: int) -> int:
            with self._lock:
                event = self._events.get(handle)
                if event is None:
                    self._fail(6)  # ERROR_INVALID_HANDLE
                    return 0
                event.signalled = True
                self._changed.notify_all()
                return 1

        def wait_for_multiple_objects(count: int, handles: Any, wait_all: int, ms: int) -> int:
            timeout = None if ms == INFINITE else ms / 1000
            with self._lock:
                while True:
                    for index in range(count):
                        event = self._events.get(handles[index])
                        if event is None:
                            self._fail(6)  # ERROR_INVALID_HANDLE
                            return WAIT_FAILED
                        if event.signalled:
                            if not event.manual_reset:
                                event.signalled = False
                            return WAIT_OBJECT_0 + index
                    if not self._changed.wait(timeout) and timeout is not None:
                        return WAIT_TIMEOUT

        def close_handle(handle: int) -> int:
            with self._lock:
                return 1 if self._events.pop(handle, None) is not None else 0

        return {
            "CreateEventW": create_event,
            "SetEvent": set_event,
            "WaitForMultipleObjects": wait_for_multiple_objects,
            "CloseHandle": close_handle,
        }

    def _iphlpapi_functions(self) -> dict[str, Callable[..., Any]]:
        def luid_to_index(luid: Any, index: Any) -> int:
            with self._lock:
                for adapter in self.adapters.values():
                    if adapter.luid == luid.contents.Value:
                        index[0] = adapter.index
                        return 0
            return ERROR_FILE_NOT_FOUND

        return {"ConvertInterfaceLuidToIndex": luid_to_index}
