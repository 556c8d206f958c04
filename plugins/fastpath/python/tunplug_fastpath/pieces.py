"""The per-batch pieces of the native data path, each backed by the Rust core.

Who calls it: :class:`tunplug_fastpath.datapath.NativeDataPath` hands them out; the WireGuard
device seals and opens with :class:`NativeAead`, the ``linux-mq`` backend splits and coalesces
with :class:`NativePacketOps`, and the native engine (:mod:`tunplug_fastpath.engine`) recognises
sessions it can run by their :class:`NativeAead`. Each call works on a whole batch and the Rust
side releases the GIL while it works, so a TUN reader thread splitting a super-packet does not
hold up the event loop sealing the previous batch.

- :class:`NativeAead`: ChaCha20-Poly1305 from ``ring``; :meth:`NativeAead.seal_transport`
  pads, seals and lays out a whole batch of transport messages in one call.
- :class:`NativePacketOps`: TSO/USO split with checksums completed and TCP GRO coalescing,
  cheap enough that the TUN device asks the kernel for super-packets on reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tunplug.crypto import Aead, DecryptionFailed
from tunplug.datapath import Write

if TYPE_CHECKING:
    from tunplug.wireguard.peer import ReplayCheck

try:
    from tunplug_fastpath import _native
except ImportError as exc:  # a source checkout without the built extension
    _native = None  # type: ignore[assignment]
    IMPORT_ERROR: str | None = str(exc)
else:
    IMPORT_ERROR = None


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


def replay_window(limit: int) -> ReplayCheck:
    """A replay window of ``limit`` counters, in Rust."""
    return _native.ReplayWindow(limit=limit)
