"""Registers the ``sodium`` crypto backend with tunplug (registered even without PyNaCl)."""

from __future__ import annotations

from collections.abc import Sequence

from tunplug._marker import hookimpl
from tunplug.crypto import CryptoBackend
from tunplug_crypto_sodium.backend import SodiumBackend


@hookimpl
def tunplug_register_crypto_backends() -> Sequence[type[CryptoBackend]]:
    return [SodiumBackend]
