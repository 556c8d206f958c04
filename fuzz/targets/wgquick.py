"""wg-quick files (:func:`tunplug.wgquick.parse_wg_quick`), as ``--config`` hands them over.

Contract: :func:`~tunplug.wgquick.load_wg_quick` turns a file that is not UTF-8 into a
``ConfigError``, and ``parse_wg_quick`` documents ``ConfigError`` as its only error, so
``ConfigError`` is the only handled exception. A parsed file must hold 32-byte keys and
distinct peers.

Host names in ``Endpoint`` are resolved with ``AI_NUMERICHOST`` during a run: the parser keeps
its own checks and the C resolver's argument checks, and nothing is looked up on the network.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tunplug import wgquick
from tunplug.exceptions import ConfigError

HANDLED: tuple[type[BaseException], ...] = (ConfigError,)


class _NumericOnlySocket:
    """``socket`` as ``tunplug.wgquick`` sees it, but ``getaddrinfo`` never queries DNS."""

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
    """While inside, ``tunplug.wgquick`` resolves numeric addresses only."""
    namespace = vars(wgquick)
    real = namespace["socket"]
    namespace["socket"] = _NumericOnlySocket()
    try:
        yield
    finally:
        namespace["socket"] = real


def test_one_input(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # load_wg_quick: ConfigError("is not UTF-8 text")
    with no_name_lookups():
        try:
            config = wgquick.parse_wg_quick(text, "fuzz.conf")
        except HANDLED:
            return
    assert len(config.private_key) == 32
    keys = [peer.public_key for peer in config.peers]
    assert all(len(key) == 32 for key in keys) and len(set(keys)) == len(keys)
    for peer in config.peers:
        assert peer.preshared_key is None or len(peer.preshared_key) == 32
        assert peer.endpoint is None or 1 <= peer.endpoint[1] <= 65535
