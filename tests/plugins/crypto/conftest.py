"""Fixtures for the crypto conformance suite: every test runs once per registered backend."""

from __future__ import annotations

import pytest

from tunplug.crypto import CryptoBackend
from tunplug_crypto_cryptography.backend import CryptographyBackend
from tunplug_crypto_sodium.backend import SodiumBackend

BACKENDS: list[type[CryptoBackend]] = [CryptographyBackend, SodiumBackend]


@pytest.fixture(params=BACKENDS, ids=lambda cls: cls.name)
def backend(request: pytest.FixtureRequest) -> CryptoBackend:
    cls: type[CryptoBackend] = request.param
    reason = cls.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return cls()
