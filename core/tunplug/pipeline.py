"""Pipeline stages: plugin code that sees every packet, one batch at a time.

Who calls it: the tunnel engine, once per batch in each direction. Plugins supply stages at
startup through the ``tunplug_pipeline_stages`` hook; after that no hook is called, the engine
calls the stages' methods directly, so a stage costs one Python call per batch.

Outbound batches come from the TUN device and go on to WireGuard encryption; inbound batches
come from WireGuard decryption (already authenticated and source-checked) and go on to the
device. A stage returns the packets to pass on: it may drop (return fewer), rewrite, or observe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from tunplug.tun import Packet


@runtime_checkable
class Stage(Protocol):
    """One step of the packet pipeline. Both methods take and return a batch.

    A stage must not block (it runs on the event loop) and must not keep references to the
    packets it is given beyond the call unless it copies them: backends reuse their buffers.
    A stage may also have a ``tick()`` method for timed work: the engine calls it about once a
    second (see :meth:`Pipeline.tick`).
    """

    #: Shown in logs and ``tunplug status``.
    name: str

    def outbound(self, packets: list[Packet]) -> list[Packet]:
        """Packets read from the device, on their way to the peer."""
        ...

    def inbound(self, packets: list[Packet]) -> list[Packet]:
        """Packets from the peer, on their way to the device."""
        ...


@dataclass(frozen=True, slots=True)
class Pipeline:
    """The stages of one tunnel, in hook order outbound and in reverse order inbound.

    Reversing inbound keeps stages nested like middleware: the first stage is the outermost on
    both paths, nearest to the device.
    """

    stages: Sequence[Stage] = field(default_factory=tuple)

    def outbound(self, packets: list[Packet]) -> list[Packet]:
        for stage in self.stages:
            if not packets:
                break
            packets = stage.outbound(packets)
        return packets

    def inbound(self, packets: list[Packet]) -> list[Packet]:
        for stage in reversed(self.stages):
            if not packets:
                break
            packets = stage.inbound(packets)
        return packets

    def tick(self) -> None:
        """Let stages that have a ``tick()`` do timed work (flush logs, expire state).

        The engine calls it from its timer task, about once a second, never per packet.
        """
        for stage in self.stages:
            tick = getattr(stage, "tick", None)
            if tick is not None:
                tick()

    @property
    def names(self) -> list[str]:
        return [stage.name for stage in self.stages]
