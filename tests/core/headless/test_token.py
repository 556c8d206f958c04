"""Client tokens: round trip, and every way a token can be wrong is one ConfigError."""

from __future__ import annotations

import base64
import json

import pytest

from tunplug import token
from tunplug.exceptions import ConfigError
from tunplug.testing.interop import Keys


@pytest.fixture
def client_token() -> token.ClientToken:
    return token.ClientToken(
        name="laptop",
        gateway_key=Keys.generate().public,
        endpoints=["192.0.2.1:51820"],  # parsed only, never contacted
        private_key=Keys.generate().private,
        preshared_key=Keys.generate().private,
        addresses=["100.64.0.2/32", "fd00:64::2/128"],
        routes=["10.0.0.0/8", "fd10::/64"],
        dns_servers=["100.64.0.1"],  # type: ignore[list-item]
        dns_domains=["corp.example"],
    )


def test_encode_decode_round_trip_gives_the_same_config(client_token):
    text = token.encode(client_token)
    assert text.startswith("tp1.") and text.count(".") == 2
    decoded = token.decode(text)
    assert decoded == client_token
    config = decoded.to_config()
    assert [str(a) for a in config.addresses] == ["100.64.0.2/32", "fd00:64::2/128"]
    assert [str(n) for n in config.peers[0].allowed_ips] == ["10.0.0.0/8", "fd10::/64"]
    assert config.peers[0].endpoint_text == "192.0.2.1:51820"
    assert config.peers[0].preshared_key is not None
    assert [str(s) for s in config.dns_servers] == ["100.64.0.1"]
    assert config.dns_domains == ("corp.example",)


def test_the_private_key_is_not_in_the_repr(client_token):
    assert client_token.private_key not in repr(client_token)


def _edit_payload(text: str, edit: dict[str, object]) -> str:
    version, payload, check = text.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(edit)
    new = base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    return f"{version}.{new}.{check}"


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda t: "hello", "is not a tunplug token"),
        (lambda t: "tp9" + t[3:], "token version 'tp9' is not supported"),
        (lambda t: t[:-3], "token is damaged or was edited"),
        (lambda t: _edit_payload(t, {"routes": ["0.0.0.0/0"]}), "token is damaged or was edited"),
        (lambda t: "tp1.A." + t.split(".")[2], "token is damaged (not base64url)"),
    ],
)
def test_a_wrong_token_is_one_line_naming_the_source(client_token, mangle, message):
    text = token.encode(client_token)
    with pytest.raises(ConfigError) as caught:
        token.decode(mangle(text), "/etc/dev.tunplug.client/token")
    assert message in str(caught.value)
    assert str(caught.value).startswith("/etc/dev.tunplug.client/token: ")
    assert "\n" not in str(caught.value)
    assert client_token.private_key not in str(caught.value)


def test_a_well_formed_token_with_invalid_content_names_the_field(client_token):
    bad = client_token.model_copy(update={"addresses": ["not-an-address"]})
    with pytest.raises(ConfigError, match="token field addresses"):
        token.decode(token.encode(bad))
