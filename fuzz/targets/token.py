"""Client tokens (:func:`tunplug.token.decode`), then the wg-quick configuration they become.

Input: the first byte picks the mode, the rest is the text.

* even: the rest is the token text itself (``TUNPLUG_TOKEN`` holds any bytes: decoded with
  ``surrogateescape`` as :data:`os.environ` does);
* odd: the rest is the JSON payload, wrapped into a token with a correct check (the check key
  is public, so anyone can do this), so the fuzzer reaches the field validation.

Contract: ``decode`` documents ``ConfigError`` only. The headless client and the tunnel service
call ``to_config()`` right after and report a ``ConfigError`` from it as a bad token, so
``ConfigError`` is handled there too. A token that decodes must give the configuration it
describes (endpoints resolved without DNS, see ``_offline``): one peer with the gateway's key,
the client's key and addresses (nothing a field could inject into the wg-quick text).
"""

from __future__ import annotations

import base64

from tunplug import token
from tunplug.exceptions import ConfigError
from tunplug.wireguard.keys import parse_key

from ._offline import no_name_lookups

HANDLED: tuple[type[BaseException], ...] = (ConfigError,)


def wrap(payload: bytes) -> str:
    """``payload`` as a version-1 token with a valid check."""
    text = base64.urlsafe_b64encode(payload).decode("ascii").rstrip("=")
    check = base64.urlsafe_b64encode(token._check(text)).decode("ascii").rstrip("=")
    return f"{token.PREFIX}.{text}.{check}"


def test_one_input(data: bytes) -> None:
    if not data:
        return
    body = data[1:]
    text = wrap(body) if data[0] & 1 else body.decode("utf-8", "surrogateescape")
    try:
        client = token.decode(text, "fuzz")
        with no_name_lookups():
            config = client.to_config()
    except HANDLED:
        return
    assert token.decode(token.encode(client)) == client
    assert config.private_key == parse_key(client.private_key)
    [peer] = config.peers
    assert peer.public_key == parse_key(client.gateway_key)
    assert len(config.addresses) == len(client.addresses)
    assert len(peer.allowed_ips) == len(client.routes)
