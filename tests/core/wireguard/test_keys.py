"""Base64 key text as ``wg`` prints it, and X25519 private key clamping."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tunplug.wireguard import format_key, parse_key
from tunplug.wireguard.keys import clamp_private_key
from tunplug_crypto_cryptography.backend import CryptographyBackend


def test_roundtrip() -> None:
    key = bytes(range(32))
    text = format_key(key)
    assert len(text) == 44 and text.endswith("=")
    assert parse_key(text) == key
    assert parse_key(f"  {text}\n") == key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", "44 characters"),
        ("A" * 44, "end with '='"),
        ("!" * 43 + "=", "not valid base64"),
    ],
)
def test_parse_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_key(text, "PublicKey")
    assert str(info.value).startswith("PublicKey")


def test_format_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        format_key(b"x" * 31)


def test_clamping_sets_the_bits_rfc_7748_names() -> None:
    assert clamp_private_key(b"\xff" * 32) == b"\xf8" + b"\xff" * 30 + b"\x7f"
    assert clamp_private_key(bytes(32)) == bytes(31) + b"\x40"
    key = clamp_private_key(bytes(range(32)))
    assert clamp_private_key(key) == key  # a clamped key stays as it is


def test_clamping_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        clamp_private_key(bytes(31))


@pytest.mark.skipif(shutil.which("wg") is None, reason="needs wireguard-tools' wg")
def test_matches_wg() -> None:
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
    public = subprocess.run(
        ["wg", "pubkey"], input=private, capture_output=True, text=True, check=True
    ).stdout.strip()
    crypto = CryptographyBackend()
    assert format_key(crypto.public_key(parse_key(private, "PrivateKey"))) == public
