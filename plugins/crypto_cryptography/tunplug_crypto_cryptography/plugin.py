"""Registers the ``cryptography`` crypto backend with tunplug."""

from __future__ import annotations

from collections.abc import Sequence

from tunplug._marker import hookimpl
from tunplug.crypto import CryptoBackend
from tunplug_crypto_cryptography.backend import CryptographyBackend


@hookimpl
def tunplug_register_crypto_backends() -> Sequence[type[CryptoBackend]]:
    return [CryptographyBackend]
