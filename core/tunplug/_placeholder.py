"""A registered-but-not-implemented TUN backend, for platforms still being built.

The ``wintun`` and ``darwin`` plugins subclass :class:`PlaceholderTun` so that ``tunplug
plugins`` lists them and says plainly why they cannot run, instead of hiding them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import ClassVar, Self

from tunplug.exceptions import BackendUnavailable
from tunplug.tun import Packet, Tun, TunOptions


class PlaceholderTun(Tun):
    """A backend whose ``create`` always refuses with :attr:`unavailable_reason`."""

    #: ``sys.platform`` value the backend is meant for, and a readable name of it.
    platform: ClassVar[str]
    platform_name: ClassVar[str]

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if sys.platform != cls.platform:
            return f"runs on {cls.platform_name} only"
        return "not implemented yet"

    @classmethod
    async def create(cls, options: TunOptions) -> Self:
        raise BackendUnavailable(f"{cls.backend_name}: {cls.unavailable_reason()}")

    async def recv_many(self, max_packets: int | None = None) -> Sequence[Packet]:
        raise BackendUnavailable(f"{self.backend_name}: not implemented yet")

    async def send_ready(self) -> None:
        raise BackendUnavailable(f"{self.backend_name}: not implemented yet")

    def send(self, packets: Sequence[Packet]) -> None:
        raise BackendUnavailable(f"{self.backend_name}: not implemented yet")

    async def aclose(self) -> None:
        return None
