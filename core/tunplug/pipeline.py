"""Pipeline stages: plugin code that sees every packet, one batch at a time.

Who calls it: the tunnel engine, once per batch in each direction. Plugins supply stages at
startup through the ``tunplug_pipeline_stages`` hook; after that no hook is called, the engine
calls the stages' methods directly, so a stage costs one Python call per batch.

Outbound batches come from the TUN device and go on to WireGuard encryption; inbound batches
come from WireGuard decryption (already authenticated and source-checked) and go on to the
device. A stage returns the packets to pass on: it may drop (return fewer), rewrite, or observe.

The lifecycle of a stage is the tunnel's: the hook creates it when the tunnel starts, the
engine calls :meth:`Ticking.tick` about once a second while it runs, and :meth:`Pipeline.close`
closes it once when the tunnel goes down. A plugin keeps its per-tunnel state in its stages,
so two tunnels in one process never share it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from tunplug.tun import Packet

log = logging.getLogger(__name__)


@runtime_checkable
class Stage(Protocol):
    """One step of the packet pipeline. Both methods take and return a batch.

    A stage must not block (it runs on the event loop) and must not keep references to the
    packets it is given beyond the call unless it copies them: backends reuse their buffers.

    Two methods are optional parts of the protocol, found once when the pipeline is built:
    ``tick()`` for timed work (see :class:`Ticking`) and ``close()`` to release what the stage
    holds when its tunnel goes down (see :class:`Closing`).
    """

    #: Shown in logs and ``tunplug status``.
    name: str

    def outbound(self, packets: list[Packet]) -> list[Packet]:
        """Packets read from the device, on their way to the peer."""
        ...

    def inbound(self, packets: list[Packet]) -> list[Packet]:
        """Packets from the peer, on their way to the device."""
        ...


@runtime_checkable
class Ticking(Protocol):
    """A stage with timed work (flush a log, expire idle state)."""

    def tick(self) -> None:
        """Called about once a second from the engine's timer task, never per packet. Must not
        block; an exception is logged and the stage stays in the pipeline."""
        ...


@runtime_checkable
class Closing(Protocol):
    """A stage holding something to release (a file, a socket) when its tunnel goes down."""

    def close(self) -> None:
        """Called once, when the tunnel goes down: after the data path stopped (no batch
        arrives after it) and before the ``tunplug_tunnel_down`` hook. An exception is logged
        and the other stages are still closed."""
        ...


class Pipeline:
    """The stages of one tunnel, in hook order outbound and in reverse order inbound.

    Reversing inbound keeps stages nested like middleware: the first stage is the outermost on
    both paths, nearest to the device. :meth:`close` closes the stages in reverse order.
    """

    __slots__ = ("_closed", "_closers", "_tickers", "stages")

    def __init__(self, stages: Sequence[Stage] = ()) -> None:
        self.stages: tuple[Stage, ...] = tuple(stages)
        # The optional parts of the protocol, found once.
        self._tickers = [(s.name, s.tick) for s in self.stages if isinstance(s, Ticking)]
        self._closers = [(s.name, s.close) for s in reversed(self.stages) if isinstance(s, Closing)]
        self._closed = False

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
        """Let the stages that have a ``tick()`` do timed work.

        The engine calls it from its timer task, about once a second, never per packet.
        """
        for name, tick in self._tickers:
            try:
                tick()
            except Exception:
                log.exception("pipeline stage %s failed in tick()", name)

    def close(self) -> None:
        """Close the stages that have a ``close()``, last first; once (later calls do nothing).

        Never raises: a stage failing to close is logged and the others are still closed.
        """
        if self._closed:
            return
        self._closed = True
        for name, close in self._closers:
            try:
                close()
            except Exception:
                log.exception("pipeline stage %s failed in close()", name)

    @property
    def names(self) -> list[str]:
        return [stage.name for stage in self.stages]
