"""The ``sodium`` crypto backend on PyNaCl (libsodium), an optional dependency.

Importing this package never needs PyNaCl; the backend reports "PyNaCl is not installed" through
``unavailable_reason()`` instead. Registered by :mod:`tunplug_crypto_sodium.plugin`.
"""

from tunplug_crypto_sodium.backend import SodiumAead, SodiumBackend

__all__ = ["SodiumAead", "SodiumBackend"]
