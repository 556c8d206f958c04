"""The TUN device contract that every backend implements.

Who calls it: the tunnel engine (:mod:`tunplug.engine`) reads batches of IP packets from a
:class:`Tun`, sends them through the pipeline and WireGuard, and writes decrypted packets back.
Who implements it: the TUN backends (``linux-mq``, ``wintun``, ``darwin``, ``fake`` and any
third-party backend), registered through the ``tunplug_register_tun_backends`` hook.

The contract follows Firezone's ``Tun`` trait: batch receive, explicit send-readiness
(backpressure) and send. A backend never buffers without bound: when the device cannot keep up,
:meth:`Tun.send_ready` waits, and the engine stops reading from the network meanwhile.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from typing import TYPE_CHECKING, ClassVar, Self

from anyio.abc import AsyncResource

from tunplug.exceptions import BackendUnavailable

if TYPE_CHECKING:
    from tunplug.config import TunplugSettings
    from tunplug.datapath import PacketOps

#: A packet handed to :meth:`Tun.send`: any bytes-like object holding one IP packet.
Packet = bytes | bytearray | memoryview

#: The largest batch :meth:`Tun.recv_many` returns by default (Firezone's figure).
DEFAULT_BATCH = 100

#: The MTU WireGuard uses by default: 1500 minus 80 bytes of IPv6 + UDP + WireGuard overhead.
#: The one definition: the WireGuard device sizes its buffers with it too. It lives here, not in
#: :mod:`tunplug.wireguard.constants`, so that the device contract does not load the protocol.
DEFAULT_MTU = 1420


@dataclass(frozen=True, slots=True)
class TunOptions:
    """What the engine asks of a backend when it opens a device.

    ``name`` is the interface name (``None`` lets the backend choose, e.g. ``tunplug0`` or
    ``utunN``). ``queues`` is the number of device queues and threads: what users set as
    ``--tun-threads`` / ``TUNPLUG_TUN_THREADS`` (the name Firezone's users know; the node passes
    it here, the one place the two names meet); backends without multi-queue support ignore
    values above 1 and report ``queues == 1``. ``batch_size`` bounds
    :meth:`Tun.recv_many` and the batch :meth:`Tun.send` accepts. ``offloads`` asks for
    segmentation offloads when the backend and kernel support them (silently off otherwise; the
    device says which in :attr:`Tun.offloads`). ``packet_ops`` are the data path's offload
    functions (:class:`tunplug.datapath.PacketOps`); ``None``: the backend's own. ``settings``
    are the application's settings (:meth:`tunplug.app.App.open_tun` passes them), where a
    backend finds its own declared settings with ``settings.plugin(MySettings)``; ``None``
    (tests, embedding): every plugin setting at its default.
    """

    name: str | None = None
    mtu: int = DEFAULT_MTU
    queues: int = 1
    batch_size: int = DEFAULT_BATCH
    offloads: bool = False
    addresses: tuple[IPv4Interface | IPv6Interface, ...] = field(default_factory=tuple)
    packet_ops: PacketOps | None = field(default=None, compare=False)
    settings: TunplugSettings | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 576 <= self.mtu <= 65535:
            raise ValueError(f"mtu must be between 576 and 65535, not {self.mtu}")
        if self.queues < 1:
            raise ValueError(f"queues must be at least 1, not {self.queues}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {self.batch_size}")


class Tun(AsyncResource):
    """An open TUN device carrying IP packets (no link-layer header) in both directions.

    Open one with the backend's :meth:`create`, and use it as an async context manager, or call
    :meth:`aclose` yourself::

        async with await LinuxMultiQueueTun.create(TunOptions(name="tunplug0")) as tun:
            packets = await tun.recv_many()

    Concurrency: one task may wait in :meth:`recv_many` while another uses :meth:`send_ready` and
    :meth:`send`. Two tasks receiving at once, or two sending at once, is not supported.

    Errors: every method may raise :class:`~tunplug.exceptions.ClosedResource` once the device is
    closed (by :meth:`aclose`, or from outside, e.g. the interface was deleted), and
    :class:`~tunplug.exceptions.TunError` (with ``errno``) for any other failure of the device.
    Backends translate :class:`OSError` with :func:`~tunplug.exceptions.map_os_errors`; no
    ``OSError`` escapes a backend.
    """

    #: The backend's registered name, e.g. ``"linux-mq"``. Unique across installed plugins.
    backend_name: ClassVar[str]
    #: One line for ``tunplug plugins``.
    description: ClassVar[str] = ""
    #: What users must know about how far the backend was tested (shown by ``tunplug
    #: plugins``), e.g. that it never ran on the platform it is for. ``None``: nothing to say.
    caveat: ClassVar[str | None] = None
    #: The operating systems (``sys.platform`` values) the backend serves: ``tun_backend =
    #: "auto"`` picks the backend that declares the running one. Empty: never picked by
    #: ``auto`` (test and replay backends), only by name.
    platforms: ClassVar[frozenset[str]] = frozenset()

    #: The interface name the operating system knows the device by.
    name: str
    #: The device MTU in bytes.
    mtu: int
    #: How many queues (and I/O threads) the device is driven with.
    queues: int
    #: The largest batch :meth:`recv_many` returns and :meth:`send` accepts.
    batch_size: int
    #: Whether segmentation offloads are on. They stay inside the backend: packets crossing
    #: this contract are always ordinary IP packets of at most :attr:`mtu` bytes.
    offloads: bool = False

    def batch_limit(self, max_packets: int | None) -> int:
        """``max_packets`` of :meth:`recv_many` checked: :attr:`batch_size` when ``None``.

        For backends. :raises ValueError: not between 1 and :attr:`batch_size`.
        """
        if max_packets is None:
            return self.batch_size
        if not 1 <= max_packets <= self.batch_size:
            raise ValueError(
                f"max_packets must be between 1 and {self.batch_size}, not {max_packets}"
            )
        return max_packets

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Say why this backend cannot run here, or return ``None`` when it can.

        Called before :meth:`create` and by ``tunplug plugins``. It must not need privileges and
        must not open anything.
        """
        return None

    @classmethod
    @abstractmethod
    async def create(cls, options: TunOptions) -> Self:
        """Create (or attach to the backend's own) device and return it open.

        :raises ~tunplug.exceptions.BackendUnavailable: the backend cannot run on this system.
        :raises ~tunplug.exceptions.BusyResource: the interface name is held by another process;
            backends never silently join a device they did not create.
        :raises ~tunplug.exceptions.PermissionDenied: a privilege is missing (``CAP_NET_ADMIN``).
        :raises ~tunplug.exceptions.TunError: any other failure, with ``errno`` kept.
        """

    @abstractmethod
    async def recv_many(self, max_packets: int | None = None) -> Sequence[Packet]:
        """Wait until at least one packet has arrived, then return up to ``max_packets``.

        ``max_packets`` defaults to :attr:`batch_size` and may not exceed it. The returned
        packets may be views into buffers the backend reuses: they stay valid until the next
        call to ``recv_many``; copy what must outlive it.

        :raises ~tunplug.exceptions.ClosedResource: the device is closed.
        :raises ~tunplug.exceptions.TunError: reading from the device failed.
        """

    @abstractmethod
    async def send_ready(self) -> None:
        """Wait until the device can take a batch of up to :attr:`batch_size` packets.

        This is the backpressure point: a caller that awaits it before every :meth:`send`
        never makes the backend buffer more than a bounded amount.

        :raises ~tunplug.exceptions.ClosedResource: the device is closed.
        """

    @abstractmethod
    def send(self, packets: Sequence[Packet]) -> None:
        """Hand up to :attr:`batch_size` packets to the device, without waiting.

        Call :meth:`send_ready` first. Packets of one flow (same addresses, protocol and ports)
        are written in the order given. A packet the kernel rejects (malformed, too large) is
        dropped and counted by the backend; it does not fail the batch.

        :raises ValueError: more than :attr:`batch_size` packets were given.
        :raises ~tunplug.exceptions.ClosedResource: the device is closed.
        :raises ~tunplug.exceptions.TunError: the device failed.
        """

    @abstractmethod
    async def aclose(self) -> None:
        """Close the device and stop its threads. Idempotent; never raises for a closed device.

        A device the backend created disappears from the system once it is closed.
        """

    async def add_routes(self, networks: Sequence[IPv4Network | IPv6Network]) -> None:
        """Route ``networks`` (the peers' AllowedIPs) into this device.

        The routes go away when the device closes. Networks already routed here (e.g. the
        prefix of the device's own address) are skipped. Backends that cannot manage routes
        keep this default.

        :raises ~tunplug.exceptions.BackendUnavailable: the backend does not manage routes.
        :raises ~tunplug.exceptions.TunError: the system refused a route (the message names
            it); routes added by this call before the failure are removed again.
        """
        raise BackendUnavailable(f"TUN backend {self.backend_name!r} cannot manage routes")

    async def remove_routes(self, networks: Sequence[IPv4Network | IPv6Network]) -> None:
        """Remove routes that :meth:`add_routes` added for ``networks`` (others are ignored).

        Used when a reloaded configuration drops AllowedIPs.

        :raises ~tunplug.exceptions.BackendUnavailable: the backend does not manage routes.
        :raises ~tunplug.exceptions.TunError: the system refused to remove a route.
        """
        raise BackendUnavailable(f"TUN backend {self.backend_name!r} cannot manage routes")

    async def route_all_traffic(
        self, networks: Sequence[IPv4Network | IPv6Network], mark: int
    ) -> None:
        """Full tunnel: send all traffic of ``networks``' families (``0.0.0.0/0``, ``::/0``)
        through this device, except packets carrying firewall mark ``mark``.

        The tunnel's own UDP socket sets ``mark``, so its packets (and the peer endpoints)
        still take the physical path; other routes of the main table (the local network) keep
        working. On Linux this is policy routing: the default route in table ``mark`` and two
        rules, like ``wg-quick``. Everything is removed when the device closes.

        :raises ~tunplug.exceptions.BackendUnavailable: the backend cannot do a full tunnel.
        :raises ~tunplug.exceptions.TunError: the system refused (e.g. the table is in use by
            another tunnel); what this call added is removed again.
        """
        raise BackendUnavailable(f"TUN backend {self.backend_name!r} cannot route all traffic")
