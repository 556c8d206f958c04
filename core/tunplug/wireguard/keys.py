"""WireGuard keys: the base64 text ``wg genkey``/``wg pubkey`` print and config files hold, and
the clamping that makes 32 random bytes an X25519 private key.

Who calls it: configuration loading, the CLIs (``tunplug keygen``/``pubkey``) and tests for the
text; the crypto backends (``generate_private_key``) and the device (ephemeral handshake keys)
for :func:`clamp_private_key`. Parsing is strict, like ``wg``: exactly 44 characters of standard
base64 that decode to 32 bytes.
"""

from __future__ import annotations

import base64
import binascii

from tunplug.wireguard.constants import KEY_SIZE

_KEY_TEXT_LENGTH = 44


def parse_key(text: str, what: str = "key") -> bytes:
    """Decode a base64 WireGuard key. ``what`` names it in the error (e.g. ``"PublicKey"``).

    :raises ValueError: the text is not 44 characters of base64 encoding 32 bytes.
    """
    stripped = text.strip()
    if len(stripped) != _KEY_TEXT_LENGTH:
        raise ValueError(
            f"{what} must be 44 characters of base64 (as 'wg genkey' prints), "
            f"got {len(stripped)} characters"
        )
    if not stripped.endswith("="):
        raise ValueError(f"{what} must end with '=' (base64 of 32 bytes)")
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64: {stripped[:4]}...") from None
    if len(raw) != KEY_SIZE:  # pragma: no cover - 44 valid characters always give 32 bytes
        raise ValueError(f"{what} must decode to 32 bytes, got {len(raw)}")
    return raw


def format_key(key: bytes) -> str:
    """Encode a 32-byte key as ``wg`` prints it.

    :raises ValueError: ``key`` is not 32 bytes.
    """
    if len(key) != KEY_SIZE:
        raise ValueError(f"a WireGuard key is 32 bytes, got {len(key)}")
    return base64.b64encode(key).decode("ascii")


def clamp_private_key(key: bytes) -> bytes:
    """``key`` (32 random bytes) as an X25519 private key, as ``wg genkey`` makes one (RFC 7748
    section 5): the three lowest bits and the highest bit cleared, the second highest set.

    :raises ValueError: ``key`` is not 32 bytes.
    """
    if len(key) != KEY_SIZE:
        raise ValueError(f"an X25519 private key is 32 bytes, got {len(key)}")
    clamped = bytearray(key)
    clamped[0] &= 0b1111_1000
    clamped[31] = (clamped[31] & 0b0111_1111) | 0b0100_0000
    return bytes(clamped)
