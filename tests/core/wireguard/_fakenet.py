"""A fake network for WireGuard device tests: devices, addresses, a clock and a wire.

Two (or more) :class:`~tunplug.wireguard.WireGuardDevice` objects exchange datagrams through
:class:`FakeNet`, which records every datagram, can lose or rewrite them, and advances a fake
monotonic clock (the wall clock used for TAI64N follows it).

The devices' transport AEAD follows ``TUNPLUG_DATA_PATH`` as tunplug does: the native core's
when it is installed (``auto``, ``native``), the crypto backend's with ``python``; so the
protocol tests here run on both data paths (``scripts/dev test`` runs them once per path).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from tunplug.crypto import Aead, CryptoBackend
from tunplug.wireguard import Endpoint, Output, PeerConfig, Timing, WireGuardDevice
from tunplug_crypto_cryptography.backend import CryptographyBackend

WALL_CLOCK_BASE = 1_700_000_000.0


def transport_aead_from_environment() -> Callable[[bytes], Aead] | None:
    """The native AEAD unless ``TUNPLUG_DATA_PATH=python`` or the native core is missing."""
    choice = os.environ.get("TUNPLUG_DATA_PATH", "auto")
    if choice == "python" or importlib.util.find_spec("tunplug_fastpath") is None:
        return None
    from tunplug_fastpath import NativeAead

    return NativeAead


def ipv4_packet(src: str, dst: str, payload: bytes = b"payload", proto: int = 17) -> bytes:
    total = 20 + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        0,
        0,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return header + payload


def ipv6_packet(src: str, dst: str, payload: bytes = b"payload", next_header: int = 17) -> bytes:
    header = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(payload),
        next_header,
        64,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )
    return header + payload


def message_type(datagram: bytes) -> int:
    return datagram[0]


@dataclass
class Node:
    name: str
    device: WireGuardDevice
    address: Endpoint
    inner_v4: str
    inner_v6: str
    private_key: bytes
    received: list[bytes] = field(default_factory=list)

    @property
    def public_key(self) -> bytes:
        return self.device.public_key


@dataclass
class Sent:
    source: Endpoint
    destination: Endpoint
    data: bytes
    at: float = 0.0


class FakeNet:
    """Moves datagrams between nodes; ``now`` is the shared fake monotonic clock."""

    def __init__(self, crypto: CryptoBackend | None = None, timing: Timing | None = None) -> None:
        self.crypto = crypto or CryptographyBackend()
        self.timing = timing or Timing()
        self.now = 1000.0
        self.nodes: dict[Endpoint, Node] = {}
        self.in_flight: list[Sent] = []
        self.log: list[Sent] = []
        #: Return False to lose a datagram; may also be used to capture them.
        self.filter: Callable[[Sent], bool] = lambda sent: True
        self._counter = 0

    def wall_clock(self) -> float:
        return WALL_CLOCK_BASE + self.now

    def add_node(
        self,
        name: str,
        address: Endpoint,
        inner_v4: str,
        inner_v6: str,
        *,
        private_key: bytes | None = None,
        wall_clock: Callable[[], float] | None = None,
        **device_options: object,
    ) -> Node:
        key = private_key or self.crypto.generate_private_key()
        options: dict[str, object] = {
            "timing": self.timing,
            "wall_clock": wall_clock or self.wall_clock,
            "transport_aead": transport_aead_from_environment(),
        }
        options.update(device_options)
        device = WireGuardDevice(key, self.crypto, **options)  # type: ignore[arg-type]
        node = Node(name, device, address, inner_v4, inner_v6, key)
        self.nodes[address] = node
        return node

    def replace_node(self, old: Node, **device_options: object) -> Node:
        """A restart: a new device object with the same key, at the same address."""
        del self.nodes[old.address]
        return self.add_node(
            old.name,
            old.address,
            old.inner_v4,
            old.inner_v6,
            private_key=old.private_key,
            **device_options,  # type: ignore[arg-type]
        )

    def connect(
        self,
        a: Node,
        b: Node,
        *,
        psk: bytes | None = None,
        a_knows_b_endpoint: bool = True,
        b_knows_a_endpoint: bool = False,
        a_keepalive: int | None = None,
    ) -> None:
        a.device.add_peer(
            PeerConfig(
                b.public_key,
                preshared_key=psk,
                endpoint=b.address if a_knows_b_endpoint else None,
                allowed_ips=(
                    ipaddress.ip_network(f"{b.inner_v4}/32"),
                    ipaddress.ip_network(f"{b.inner_v6}/128"),
                ),
                persistent_keepalive=a_keepalive,
            )
        )
        b.device.add_peer(
            PeerConfig(
                a.public_key,
                preshared_key=psk,
                endpoint=a.address if b_knows_a_endpoint else None,
                allowed_ips=(
                    ipaddress.ip_network(f"{a.inner_v4}/32"),
                    ipaddress.ip_network(f"{a.inner_v6}/128"),
                ),
            )
        )

    # -- moving bytes ---------------------------------------------------------------------------
    def emit(self, node: Node, output: Output) -> Output:
        for data, destination in output.to_network:
            sent = Sent(node.address, destination, data, self.now)
            self.log.append(sent)
            if self.filter(sent):
                self.in_flight.append(sent)
        node.received.extend(output.to_tun)
        return output

    def send(self, node: Node, packets: list[bytes]) -> Output:
        return self.emit(node, node.device.encrypt(packets, self.now))

    def deliver(self, sent: Sent) -> Output | None:
        node = self.nodes.get(sent.destination)
        if node is None:
            return None
        return self.emit(node, node.device.decrypt([(sent.data, sent.source)], self.now))

    def flush(self, max_rounds: int = 50) -> None:
        """Deliver everything in flight, and what that provokes, in batches per receiver."""
        for _ in range(max_rounds):
            if not self.in_flight:
                return
            batch, self.in_flight = self.in_flight, []
            by_destination: dict[Endpoint, list[Sent]] = {}
            for sent in batch:
                by_destination.setdefault(sent.destination, []).append(sent)
            for destination, items in by_destination.items():
                node = self.nodes.get(destination)
                if node is None:
                    continue
                self.emit(
                    node,
                    node.device.decrypt([(s.data, s.source) for s in items], self.now),
                )
        raise AssertionError("the network did not settle")

    def tick_all(self) -> None:
        for node in list(self.nodes.values()):
            deadline = node.device.next_deadline()
            if deadline is not None and deadline <= self.now:
                self.emit(node, node.device.tick(self.now))

    def advance(self, seconds: float, step: float = 0.1) -> None:
        """Move the clock forward, running due timers and delivering traffic as it goes."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            if end - self.now < 1e-9:
                self.now = end
            self.tick_all()
            self.flush()

    def sent_types(self, source: Node | None = None) -> list[int]:
        return [s.data[0] for s in self.log if source is None or s.source == source.address]
