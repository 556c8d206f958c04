"""Client records for the gateway's unit tests (what the registry would hold)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from tunplug.gateway.registry import ClientRecord


def client(name: str, address: str, address_v6: str) -> ClientRecord:
    """An active client named ``name`` with these tunnel addresses (keys derived from it)."""
    return ClientRecord(
        name=name,
        public_key=name.encode().ljust(32, b"\0"),
        preshared_key=b"\0" * 32,
        address_v4=IPv4Address(address),
        address_v6=IPv6Address(address_v6),
        created_at=0.0,
        revoked_at=None,
        last_handshake=None,
        rx_bytes=0,
        tx_bytes=0,
    )
