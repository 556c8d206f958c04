"""The default crypto backend, ``cryptography``: X25519 and ChaCha20-Poly1305 from the
``cryptography`` package (OpenSSL), BLAKE2s from :mod:`hashlib`.

Registered by :mod:`tunplug_crypto_cryptography.plugin`; the WireGuard protocol reaches it
through the :class:`tunplug.crypto.CryptoBackend` contract only.
"""

from tunplug_crypto_cryptography.backend import CryptographyAead, CryptographyBackend, hchacha20

__all__ = ["CryptographyAead", "CryptographyBackend", "hchacha20"]
