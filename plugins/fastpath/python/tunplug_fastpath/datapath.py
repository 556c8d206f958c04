"""The ``native`` data path: tunplug's per-packet pieces backed by the Rust core.

Who calls it: :meth:`tunplug.app.App.data_path` (``--data-path native``, or ``auto`` when this
distribution is installed), then the WireGuard device (transport AEAD) and the ``linux-mq`` TUN
backend (offload surgery) take what it hands out. Each call works on a whole batch and the Rust
side releases the GIL while it works, so a TUN reader thread splitting a super-packet does not
hold up the event loop sealing the previous batch.

- :class:`NativeAead`: ChaCha20-Poly1305 from ``ring``; :meth:`NativeAead.seal_transport`
  pads, seals and lays out a whole batch of transport messages in one call.
- :class:`NativePacketOps`: TSO/USO split with checksums completed and TCP GRO coalescing,
  cheap enough that the TUN device asks the kernel for super-packets on reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tunplug.crypto import Aead, CryptoBackend, DecryptionFailed
from tunplug.datapath import DataPath, PacketOps, TunnelRunner, Write

if TYPE_CHECKING:
    from tunplug.engine import DeviceOwner
    from tunplug.pipeline import Pipeline
    from tunplug.transport import UdpTransport
    from tunplug.tun import Tun
    from tunplug.wireguard import WireGuardDevice
    from tunplug.wireguard.peer import ReplayCheck

log = logging.getLogger(__name__)

try:
    from tunplug_fastpath import _native
except ImportError as exc:  # a source checkout without the built extension
    _native = None  # type: ignore[assignment]
    _IMPORT_ERROR: str | None = str(exc)
else:
    _IMPORT_ERROR = None


class NativeAead(Aead):
    """One session direction's ChaCha20-Poly1305, in Rust, with the session's send counter
    (shared with the native plane's threads: :meth:`reserve` is one atomic step)."""

    __slots__ = ("key",)

    owns_counter = True

    def __init__(self, key: bytes) -> None:
        #: The native key object the plane seals and opens with.
        self.key = _native.TransportKey(key)

    def reserve(self, count: int) -> int:
        return self.key.reserve(count)

    @property
    def counter(self) -> int:
        return self.key.counter

    def seal(self, counter: int, plaintext: bytes | memoryview, aad: bytes = b"") -> bytes:
        return self.key.seal(counter, plaintext, aad)

    def open(self, counter: int, ciphertext: bytes | memoryview, aad: bytes = b"") -> bytes:
        try:
            return self.key.open(counter, ciphertext, aad)
        except _native.DecryptionFailed:
            raise DecryptionFailed("ChaCha20-Poly1305 tag did not verify") from None

    def seal_transport(
        self,
        first_counter: int,
        packets: Sequence[bytes | bytearray | memoryview],
        header: bytes,
        mtu: int,
        take: Callable[[int], memoryview],
    ) -> list[memoryview]:
        # One native call for the batch: padding, sealing and layout; then one copy into the
        # caller's memory, so views behave as the reference's do (valid until the caller
        # reuses that memory).
        receiver = int.from_bytes(header[4:8], "little")
        buffer, lengths = self.key.seal_transport(receiver, first_counter, list(packets), mtu)
        memory = take(len(buffer))
        memory[:] = buffer
        views = []
        offset = 0
        for length in lengths:
            views.append(memory[offset : offset + length])
            offset += length
        return views

    def open_many(
        self, counters: Sequence[int], ciphertexts: Sequence[bytes | memoryview]
    ) -> list[bytes | None]:
        return self.key.open_many(list(counters), list(ciphertexts))


class NativePacketOps:
    """The ``virtio_net_hdr`` surgery in Rust (:class:`tunplug.datapath.PacketOps`)."""

    #: Native splitting with checksums costs less than the reads it saves.
    rx_offloads = True

    def split(self, frame: bytes | bytearray | memoryview) -> list[bytes]:
        return _native.split(frame)

    def coalesce(self, packets: Sequence[bytes], *, verify_checksums: bool = False) -> list[Write]:
        return [
            ([frame], count, size)
            for frame, count, size in _native.coalesce(list(packets), verify_checksums)
        ]


class NativeDataPath(DataPath):
    """Transport AEAD and TUN offload surgery in the Rust core (``tunplug-fastpath``)."""

    name = "native"
    description = "Rust core (PyO3): batch AEAD (ring), TSO/USO split, GRO coalescing"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if _IMPORT_ERROR is not None:
            return f"the native module did not load ({_IMPORT_ERROR})"
        return None

    def transport_aead(self, key: bytes, crypto: CryptoBackend) -> Aead:
        return NativeAead(key)

    def packet_ops(self) -> PacketOps | None:
        return NativePacketOps()

    def replay_windows(self) -> Callable[[int], ReplayCheck] | None:
        return _replay_window

    def engine(
        self,
        tun: Tun,
        transport: UdpTransport,
        tunnel: DeviceOwner[WireGuardDevice],
        pipeline: Pipeline,
    ) -> TunnelRunner | None:
        from tunplug_fastpath.engine import NativeEngine

        reason = NativeEngine.unsupported_reason(tun, transport, pipeline)
        if reason:
            log.info("native data path: per-batch calls from the Python engine (%s)", reason)
            return None
        return NativeEngine(tun, transport, tunnel)


def _replay_window(limit: int) -> ReplayCheck:
    return _native.ReplayWindow(limit=limit)
