"""The ``native`` data path: tunplug's per-packet pieces backed by the Rust core.

Who calls it: :meth:`tunplug.app.App.data_path` (``--data-path native``, or ``auto`` when this
distribution is installed), then the WireGuard device (transport AEAD) and the ``linux-mq`` TUN
backend (offload surgery) take what it hands out (:mod:`tunplug_fastpath.pieces`), and the node
asks it for the native engine (:mod:`tunplug_fastpath.engine`) when the tunnel allows one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from tunplug.crypto import Aead, CryptoBackend
from tunplug.datapath import DataPath, PacketOps, TunnelRunner
from tunplug_fastpath.pieces import IMPORT_ERROR, NativeAead, NativePacketOps, replay_window

if TYPE_CHECKING:
    from tunplug.engine import DeviceOwner
    from tunplug.pipeline import Pipeline
    from tunplug.transport import UdpTransport
    from tunplug.tun import Tun
    from tunplug.wireguard import WireGuardDevice
    from tunplug.wireguard.peer import ReplayCheck

log = logging.getLogger(__name__)


class NativeDataPath(DataPath):
    """Transport AEAD and TUN offload surgery in the Rust core (``tunplug-fastpath``)."""

    name = "native"
    description = "Rust core (PyO3): batch AEAD (ring), TSO/USO split, GRO coalescing"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if IMPORT_ERROR is not None:
            return f"the native module did not load ({IMPORT_ERROR})"
        return None

    def transport_aead(self, key: bytes, crypto: CryptoBackend) -> Aead:
        return NativeAead(key)

    def packet_ops(self) -> PacketOps | None:
        return NativePacketOps()

    def replay_windows(self) -> Callable[[int], ReplayCheck] | None:
        return replay_window

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
