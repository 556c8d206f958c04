"""wg-quick files (:func:`tunplug.wgquick.parse_wg_quick`), as ``--config`` hands them over.

Contract: :func:`~tunplug.wgquick.load_wg_quick` turns a file that is not UTF-8 into a
``ConfigError``, and ``parse_wg_quick`` documents ``ConfigError`` as its only error, so
``ConfigError`` is the only handled exception. A parsed file must hold 32-byte keys and
distinct peers.

Host names in ``Endpoint`` are resolved with ``AI_NUMERICHOST`` during a run: the parser keeps
its own checks and the C resolver's argument checks, and nothing is looked up on the network.
"""

from __future__ import annotations

from tunplug import wgquick
from tunplug.exceptions import ConfigError

from ._offline import no_name_lookups

HANDLED: tuple[type[BaseException], ...] = (ConfigError,)


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
