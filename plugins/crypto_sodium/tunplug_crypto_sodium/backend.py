"""The ``sodium`` crypto backend: X25519, ChaCha20-Poly1305 and XChaCha20-Poly1305 from
libsodium through PyNaCl's ``nacl.bindings``.

libsodium has BLAKE2b but not BLAKE2s (``crypto_generichash`` is BLAKE2b), so the hash, the
HMAC and the keyed 16-byte MAC come from :mod:`hashlib`'s BLAKE2s here too, as in the default
backend.

PyNaCl is optional (``pip install tunplug[sodium]``): it is imported lazily, so this module
imports everywhere and :meth:`SodiumBackend.unavailable_reason` says when it is missing.
PyNaCl accepts only ``bytes``, so memoryviews are copied before each call.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

from tunplug.crypto import Aead, CryptoBackend, DecryptionFailed
from tunplug.wireguard.keys import clamp_private_key

_ZERO32 = bytes(32)
_TAG_SIZE = 16
_MISSING = "PyNaCl is not installed (pip install tunplug[sodium])"


def _bindings() -> ModuleType:
    try:
        import nacl.bindings
    except ImportError as error:  # pragma: no cover - depends on the environment
        from tunplug.exceptions import BackendUnavailable

        raise BackendUnavailable(_MISSING) from error
    return nacl.bindings


def _crypto_error() -> type[Exception]:
    import nacl.exceptions

    error: type[Exception] = nacl.exceptions.CryptoError
    return error


def _nonce(counter: int) -> bytes:
    return (counter << 32).to_bytes(12, "little")


def _as_bytes(data: bytes | memoryview) -> bytes:
    return data if type(data) is bytes else bytes(data)


class SodiumAead(Aead):
    """ChaCha20-Poly1305 (IETF) for one key, on libsodium."""

    __slots__ = ("_decrypt", "_encrypt", "_error", "_key")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a ChaCha20-Poly1305 key is 32 bytes")
        bindings = _bindings()
        self._key = bytes(key)
        self._encrypt = bindings.crypto_aead_chacha20poly1305_ietf_encrypt
        self._decrypt = bindings.crypto_aead_chacha20poly1305_ietf_decrypt
        self._error = _crypto_error()

    def seal(self, counter: int, plaintext: bytes | memoryview, aad: bytes = b"") -> bytes:
        result: bytes = self._encrypt(_as_bytes(plaintext), aad or None, _nonce(counter), self._key)
        return result

    def open(self, counter: int, ciphertext: bytes | memoryview, aad: bytes = b"") -> bytes:
        if len(ciphertext) < _TAG_SIZE:
            raise DecryptionFailed("ciphertext shorter than the tag")
        try:
            result: bytes = self._decrypt(
                _as_bytes(ciphertext), aad or None, _nonce(counter), self._key
            )
        except self._error:
            raise DecryptionFailed("ChaCha20-Poly1305 tag mismatch") from None
        return result

    def seal_many(
        self, counters: Sequence[int], plaintexts: Sequence[bytes | memoryview]
    ) -> list[bytes]:
        encrypt, key = self._encrypt, self._key
        return [
            encrypt(
                p if type(p) is bytes else bytes(p), None, (c << 32).to_bytes(12, "little"), key
            )
            for c, p in zip(counters, plaintexts, strict=True)
        ]

    def open_many(
        self, counters: Sequence[int], ciphertexts: Sequence[bytes | memoryview]
    ) -> list[bytes | None]:
        decrypt, key, error = self._decrypt, self._key, self._error
        out: list[bytes | None] = []
        append = out.append
        for counter, ciphertext in zip(counters, ciphertexts, strict=True):
            if len(ciphertext) < _TAG_SIZE:
                append(None)
                continue
            data = ciphertext if type(ciphertext) is bytes else bytes(ciphertext)
            try:
                append(decrypt(data, None, (counter << 32).to_bytes(12, "little"), key))
            except error:
                append(None)
        return out


class SodiumBackend(CryptoBackend):
    """libsodium through PyNaCl; BLAKE2s from :mod:`hashlib` (libsodium has only BLAKE2b)."""

    name = "sodium"
    description = "X25519 and (X)ChaCha20-Poly1305 from libsodium (PyNaCl), BLAKE2s hashlib"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import nacl.bindings  # noqa: F401
        except ImportError:
            return _MISSING
        return None

    def __init__(self) -> None:
        self._nacl = _bindings()
        self._error = _crypto_error()

    def generate_private_key(self) -> bytes:
        return clamp_private_key(self._nacl.randombytes(32))

    def public_key(self, private_key: bytes) -> bytes:
        result: bytes = self._nacl.crypto_scalarmult_base(bytes(private_key))
        return result

    def dh(self, private_key: bytes, public_key: bytes) -> bytes:
        try:
            shared: bytes = self._nacl.crypto_scalarmult(bytes(private_key), bytes(public_key))
        except (RuntimeError, self._error):
            # libsodium returns -1 for an all-zero result (low-order point).
            raise DecryptionFailed("X25519 result is all zeros") from None
        if shared == _ZERO32:
            raise DecryptionFailed("X25519 result is all zeros")
        return shared

    def aead(self, key: bytes) -> Aead:
        return SodiumAead(key)

    def xseal(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        result: bytes = self._nacl.crypto_aead_xchacha20poly1305_ietf_encrypt(
            bytes(plaintext), bytes(aad) or None, bytes(nonce), bytes(key)
        )
        return result

    def xopen(self, key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        if len(ciphertext) < _TAG_SIZE:
            raise DecryptionFailed("ciphertext shorter than the tag")
        try:
            result: bytes = self._nacl.crypto_aead_xchacha20poly1305_ietf_decrypt(
                bytes(ciphertext), bytes(aad) or None, bytes(nonce), bytes(key)
            )
        except self._error:
            raise DecryptionFailed("XChaCha20-Poly1305 tag mismatch") from None
        return result
