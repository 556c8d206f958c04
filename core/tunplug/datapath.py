"""Data paths: who does the per-packet work of a tunnel, the pure-Python reference or a native
core.

Who calls it: :meth:`tunplug.app.App.data_path` picks one at startup (``--data-path`` /
``TUNPLUG_DATA_PATH``: ``auto``, ``native`` or ``python``); :func:`tunplug.node.build_device`
takes the transport AEAD from it and hands its :class:`PacketOps` to the TUN backend. Who
implements it: :class:`PythonDataPath` here (always there), and the ``tunplug-fastpath``
distribution's ``native`` data path (Rust, PyO3), registered through the
``tunplug_register_data_paths`` hook like any plugin.

The control plane (handshakes, timers, cookies, configuration) is the same Python code on every
data path; a data path supplies only the per-packet pieces, each working on a whole batch:

- :meth:`DataPath.transport_aead`: the ChaCha20-Poly1305 of a session's transport messages
  (:class:`~tunplug.crypto.Aead`: ``seal_many_into``/``open_many`` on a batch);
- :meth:`DataPath.packet_ops`: the TUN offload surgery (split TSO/USO super-packets with their
  checksums completed, coalesce TCP segments for one write), or ``None`` to let the TUN backend
  use its own Python code.

Both data paths put the same bytes on the wire (differential tests in
``tests/plugins/fastpath``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol

from tunplug._marker import hookimpl
from tunplug.crypto import Aead, CryptoBackend

if TYPE_CHECKING:
    from tunplug.engine import DeviceOwner, EngineStats
    from tunplug.pipeline import Pipeline
    from tunplug.transport import UdpTransport
    from tunplug.tun import Tun
    from tunplug.wireguard import WireGuardDevice
    from tunplug.wireguard.peer import ReplayCheck

#: One TUN write the TUN backend hands to ``writev``: buffers (header first), packets in it,
#: and their IP bytes.
Write = tuple[list[bytes | bytearray | memoryview], int, int]


class PacketOps(Protocol):
    """The ``virtio_net_hdr`` surgery of a TUN device with offloads, as batch functions.

    The reference implementation is ``tunplug_tun_linux_mq.offload`` (pure Python); a native
    data path supplies the same functions. ``split`` raises a :class:`ValueError` whose first
    argument is the drop reason.
    """

    #: Whether splitting is cheap enough to ask the kernel for TSO/USO super-packets on reads
    #: (measured: not in CPython, where per-segment checksums cost more than the reads saved).
    rx_offloads: bool

    def split(self, frame: bytes | bytearray | memoryview) -> list[bytes]:
        """The IP packets of one read (vnet header first), checksums complete."""
        ...

    def coalesce(self, packets: Sequence[bytes], *, verify_checksums: bool = False) -> list[Write]:
        """``packets`` as writes: same-flow TCP runs merged, everything else one each."""
        ...


class DataPath(ABC):
    """The per-packet pieces of one tunnel; one instance per application."""

    #: The registered name: ``python``, ``native``...
    name: ClassVar[str]
    #: One line for ``tunplug plugins`` and the startup log.
    description: ClassVar[str] = ""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Say why this data path cannot run here (e.g. its native module is missing)."""
        return None

    @abstractmethod
    def transport_aead(self, key: bytes, crypto: CryptoBackend) -> Aead:
        """The AEAD for one direction of a session (``crypto`` is the configured backend)."""

    def packet_ops(self) -> PacketOps | None:
        """The TUN offload functions, or ``None``: the backend's own (Python) ones."""
        return None

    def replay_windows(self) -> Callable[[int], ReplayCheck] | None:
        """What makes a session's replay window from its counter limit, or ``None``: the
        reference :class:`~tunplug.wireguard.replay.ReplayWindow`."""
        return None

    def engine(
        self,
        tun: Tun,
        transport: UdpTransport,
        tunnel: DeviceOwner[WireGuardDevice],
        pipeline: Pipeline,
    ) -> TunnelRunner | None:
        """An engine that carries this tunnel's traffic itself (the native data plane's threads),
        or ``None``: the Python :class:`~tunplug.engine.TunnelEngine` drives the pieces above
        batch by batch. Called once the device and socket are open; ``tunnel`` has the device
        and tells the engine when a reload replaces it."""
        return None


class TunnelRunner(Protocol):
    """What the node needs of an engine (:class:`~tunplug.engine.TunnelEngine` is one)."""

    stats: EngineStats

    async def run(self) -> None: ...

    def wake_timers(self) -> None: ...


class PythonDataPath(DataPath):
    """The reference: every per-packet step in Python (AEAD through the crypto backend)."""

    name = "python"
    description = "pure Python: the reference data path, runs everywhere"

    def transport_aead(self, key: bytes, crypto: CryptoBackend) -> Aead:
        return crypto.aead(key)


@hookimpl
def tunplug_register_data_paths() -> Sequence[type[DataPath]]:
    return [PythonDataPath]
