"""What lifecycle hooks are told about a tunnel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv6Interface
from typing import Literal

Role = Literal["client", "gateway", "service", "demo", "test"]


@dataclass(frozen=True, slots=True)
class TunnelInfo:
    """A tunnel as plugins see it: which device, which backend, which role."""

    interface: str
    tun_backend: str
    role: Role
    queues: int = 1
    addresses: tuple[IPv4Interface | IPv6Interface, ...] = field(default_factory=tuple)
    peers: int = 0
    #: Who is behind a tunnel address, e.g. ``"100.64.0.2"`` -> ``"laptop"`` (the gateway's
    #: client names); ``None`` when unknown. Looked up live: clients come and go.
    peer_name: Callable[[str], str | None] | None = field(default=None, compare=False)
