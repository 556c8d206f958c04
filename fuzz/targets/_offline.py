"""No name is looked up on the network while a harness runs.

``tunplug.endpoints`` resolves every host name (a wg-quick file's ``Endpoint``, a token's
endpoints); under :func:`no_name_lookups` it passes ``AI_NUMERICHOST``, so the C resolver still
checks its arguments (IDNA encoding, NUL bytes) but never sends a query.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tunplug import endpoints


class _NumericOnlySocket:
    """``socket`` as ``tunplug.endpoints`` sees it, but ``getaddrinfo`` never queries DNS."""

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    @staticmethod
    def getaddrinfo(
        host: str | None,
        port: int | str | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[Any]:
        return socket.getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)


@contextmanager
def no_name_lookups() -> Iterator[None]:
    """While inside, ``tunplug.endpoints`` resolves numeric addresses only."""
    namespace = vars(endpoints)
    real = namespace["socket"]
    namespace["socket"] = _NumericOnlySocket()
    try:
        yield
    finally:
        namespace["socket"] = real
