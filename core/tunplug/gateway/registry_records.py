"""What the gateway registry hands out: the gateway's settings, clients, newly issued clients.

Who calls it: :mod:`tunplug.gateway.registry` builds these from its rows; the running gateway
(:mod:`tunplug.gateway.server`, :mod:`tunplug.gateway.access`, :mod:`tunplug.gateway.dns_server`)
and ``tunplug-gateway`` read them (all import them from :mod:`tunplug.gateway.registry`).
Frozen values: nothing here touches the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

#: The columns :func:`client_record` reads, in its order.
CLIENT_COLUMNS = (
    "name, public_key, preshared_key, address_v4, address_v6, created_at, revoked_at, "
    "last_handshake, rx_bytes, tx_bytes"
)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The gateway's key pair and settings, as ``tunplug-gateway init`` stored them."""

    private_key: bytes = field(repr=False)
    public_key: bytes
    endpoint: str
    listen_port: int
    subnet_v4: IPv4Network
    subnet_v6: IPv6Network
    dns: tuple[IPv4Address | IPv6Address, ...]

    @property
    def gateway_address_v4(self) -> IPv4Address:
        """The gateway interface's IPv4 address: the first host of ``subnet_v4``."""
        return self.subnet_v4[1]

    @property
    def gateway_address_v6(self) -> IPv6Address:
        """The gateway interface's IPv6 address: the first host of ``subnet_v6``."""
        return self.subnet_v6[1]


@dataclass(frozen=True, slots=True)
class ClientRecord:
    """One issued client; ``revoked_at`` is set once it is revoked. Times are Unix seconds;
    traffic counts what the running gateway reported last (since it started)."""

    name: str
    public_key: bytes
    preshared_key: bytes = field(repr=False)
    address_v4: IPv4Address
    address_v6: IPv6Address
    created_at: float
    revoked_at: float | None
    last_handshake: float | None
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True, slots=True)
class IssuedClient:
    """A new client and its configuration, as a token and as a wg-quick file (shown once)."""

    client: ClientRecord
    token: str = field(repr=False)
    wg_quick: str = field(repr=False)


def client_record(row: Sequence[Any]) -> ClientRecord:
    """A client from a row of the ``clients`` table, selected as :data:`CLIENT_COLUMNS`."""
    return ClientRecord(
        name=row[0],
        public_key=bytes(row[1]),
        preshared_key=bytes(row[2]),
        address_v4=IPv4Address(row[3]),
        address_v6=IPv6Address(row[4]),
        created_at=row[5],
        revoked_at=row[6],
        last_handshake=row[7],
        rx_bytes=row[8],
        tx_bytes=row[9],
    )
