"""Cryptokey routing: the AllowedIPs table that maps IP prefixes to peers.

Who calls it: :class:`tunplug.wireguard.WireGuardDevice`, twice per packet: outbound, the inner
destination picks the peer to encrypt for; inbound, the inner source must map back to the peer
whose key decrypted the packet (whitepaper section 2). Lookups are longest-prefix matches done
as one dict probe per distinct prefix length in use, longest first: a handful of probes for any
realistic configuration, with no per-packet object creation beyond one ``int``.

As in ``wg``, a prefix belongs to at most one peer: inserting it for another peer moves it.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Network
from typing import Generic, TypeVar

Value = TypeVar("Value")

_V4_MASKS = [((1 << p) - 1) << (32 - p) for p in range(33)]
_V6_MASKS = [((1 << p) - 1) << (128 - p) for p in range(129)]


class _Family(Generic[Value]):
    __slots__ = ("by_length", "lengths", "masks")

    def __init__(self, masks: list[int]) -> None:
        self.masks = masks
        self.by_length: dict[int, dict[int, Value]] = {}
        self.lengths: list[tuple[int, dict[int, Value], int]] = []

    def reindex(self) -> None:
        self.by_length = {length: t for length, t in self.by_length.items() if t}
        self.lengths = [
            (length, self.by_length[length], self.masks[length])
            for length in sorted(self.by_length, reverse=True)
        ]

    def lookup(self, address: int) -> Value | None:
        for _length, table, mask in self.lengths:
            value = table.get(address & mask)
            if value is not None:
                return value
        return None


class AllowedIPs(Generic[Value]):
    """Longest-prefix match from IPv4/IPv6 prefixes to values (peers)."""

    def __init__(self) -> None:
        self._v4: _Family[Value] = _Family(_V4_MASKS)
        self._v6: _Family[Value] = _Family(_V6_MASKS)

    def insert(self, network: IPv4Network | IPv6Network, value: Value) -> None:
        """Route ``network`` to ``value``, taking it from any other value that had it."""
        family = self._v4 if network.version == 4 else self._v6
        table = family.by_length.setdefault(network.prefixlen, {})
        table[int(network.network_address)] = value
        family.reindex()

    def remove_value(self, value: Value) -> None:
        """Forget every prefix routed to ``value``."""
        for family in (self._v4, self._v6):
            for table in family.by_length.values():
                for key in [k for k, v in table.items() if v is value]:
                    del table[key]
            family.reindex()

    def networks(self, value: Value) -> list[IPv4Network | IPv6Network]:
        """The prefixes routed to ``value``, IPv4 first, longest prefix first."""
        return [network for network, v in self._items() if v is value]

    def _items(self) -> Iterator[tuple[IPv4Network | IPv6Network, Value]]:
        for length, table, _ in self._v4.lengths:
            for address, v in table.items():
                yield IPv4Network((address, length)), v
        for length, table, _ in self._v6.lengths:
            for address, v in table.items():
                yield IPv6Network((address, length)), v

    def lookup_v4(self, address: int) -> Value | None:
        return self._v4.lookup(address)

    def lookup_v6(self, address: int) -> Value | None:
        return self._v6.lookup(address)

    def lookup_address(self, address: str) -> Value | None:
        """Longest-prefix match of a textual address (for tests and diagnostics)."""
        from ipaddress import ip_address

        parsed = ip_address(address)
        if parsed.version == 4:
            return self._v4.lookup(int(parsed))
        return self._v6.lookup(int(parsed))

    def lookup_destination(self, packet: bytes | bytearray | memoryview) -> Value | None:
        """The value for an IP packet's destination; ``None`` if unrouted or not IP."""
        if not packet:
            return None
        version = packet[0] >> 4
        if version == 4 and len(packet) >= 20:
            return self._v4.lookup(int.from_bytes(packet[16:20], "big"))
        if version == 6 and len(packet) >= 40:
            return self._v6.lookup(int.from_bytes(packet[24:40], "big"))
        return None

    def lookup_source(self, packet: bytes | bytearray | memoryview) -> Value | None:
        """The value for an IP packet's source; ``None`` if unrouted or not IP."""
        if not packet:
            return None
        version = packet[0] >> 4
        if version == 4 and len(packet) >= 20:
            return self._v4.lookup(int.from_bytes(packet[12:16], "big"))
        if version == 6 and len(packet) >= 40:
            return self._v6.lookup(int.from_bytes(packet[8:24], "big"))
        return None
