"""The ``cryptography`` crypto backend: what :mod:`tunplug.wireguard` uses unless told otherwise.

X25519 and ChaCha20-Poly1305 come from the ``cryptography`` package; BLAKE2s (hash, HMAC and
the keyed 16-byte MAC) from :mod:`hashlib`. ``cryptography`` has no XChaCha20-Poly1305, so it
is built here: HChaCha20 is recovered from one block of the plain ChaCha20 keystream (a block
is the permuted state plus the initial state, so subtracting the known initial words leaves the
permuted words HChaCha20 outputs), then ChaCha20-Poly1305 runs with that subkey and the nonce
``0^4 || nonce[16:24]`` (draft-irtf-cfrg-xchacha-03, section 2.3).

The transport path calls :meth:`CryptographyAead.seal_many` / :meth:`~CryptographyAead.open_many`
once per batch; they reuse one ``ChaCha20Poly1305`` object per key and build nonces with a
single integer conversion.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tunplug.crypto import Aead, CryptoBackend, DecryptionFailed
from tunplug.wireguard.keys import clamp_private_key

_ZERO32 = bytes(32)
_ZERO_BLOCK = bytes(64)
_SIGMA_AND_NONCE = struct.Struct("<16I")
_HCHACHA_INPUT = struct.Struct("<4I")
# "expand 32-byte k" as four little-endian words.
_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)


def _nonce(counter: int) -> bytes:
    # 4 zero bytes || LE64(counter) is the 96-bit little-endian integer counter << 32.
    return (counter << 32).to_bytes(12, "little")


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20(key, 16-byte nonce) -> 32-byte subkey, via one ChaCha20 keystream block.

    ``cryptography``'s ChaCha20 takes a 16-byte "nonce" that is the initial state words 12..15
    (block counter and nonce), exactly the HChaCha20 input layout.
    """
    if len(key) != 32 or len(nonce16) != 16:
        raise ValueError("hchacha20 needs a 32-byte key and a 16-byte nonce")
    encryptor = Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor()
    block = _SIGMA_AND_NONCE.unpack(encryptor.update(_ZERO_BLOCK))
    inputs = _HCHACHA_INPUT.unpack(nonce16)
    words = [(block[i] - _SIGMA[i]) & 0xFFFFFFFF for i in range(4)]
    words += [(block[12 + i] - inputs[i]) & 0xFFFFFFFF for i in range(4)]
    return struct.pack("<8I", *words)


class CryptographyAead(Aead):
    """ChaCha20-Poly1305 for one key, on one reusable ``ChaCha20Poly1305`` object."""

    __slots__ = ("_cipher",)

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a ChaCha20-Poly1305 key is 32 bytes")
        self._cipher = ChaCha20Poly1305(key)

    def seal(self, counter: int, plaintext: bytes | memoryview, aad: bytes = b"") -> bytes:
        return self._cipher.encrypt(_nonce(counter), plaintext, aad or None)

    def open(self, counter: int, ciphertext: bytes | memoryview, aad: bytes = b"") -> bytes:
        try:
            return self._cipher.decrypt(_nonce(counter), ciphertext, aad or None)
        except InvalidTag:
            raise DecryptionFailed("ChaCha20-Poly1305 tag mismatch") from None

    def seal_many(
        self, counters: Sequence[int], plaintexts: Sequence[bytes | memoryview]
    ) -> list[bytes]:
        encrypt = self._cipher.encrypt
        return [
            encrypt((c << 32).to_bytes(12, "little"), p, None)
            for c, p in zip(counters, plaintexts, strict=True)
        ]

    def seal_many_into(
        self,
        counters: Sequence[int],
        plaintexts: Sequence[bytes | memoryview],
        header: bytes,
        out: memoryview,
    ) -> list[memoryview]:
        # encrypt_into writes ciphertext and tag straight after the header: no ciphertext
        # object, no concatenation (measured 3.3 -> 2.0 us per 1400-byte packet).
        encrypt_into = self._cipher.encrypt_into
        views: list[memoryview] = []
        append = views.append
        head = len(header)
        offset = 0
        for counter, plaintext in zip(counters, plaintexts, strict=True):
            body = offset + head + 8
            end = body + len(plaintext) + 16
            out[offset : offset + head] = header
            out[offset + head : body] = counter.to_bytes(8, "little")
            encrypt_into((counter << 32).to_bytes(12, "little"), plaintext, None, out[body:end])
            append(out[offset:end])
            offset = end
        return views

    def open_many(
        self, counters: Sequence[int], ciphertexts: Sequence[bytes | memoryview]
    ) -> list[bytes | None]:
        decrypt = self._cipher.decrypt
        out: list[bytes | None] = []
        append = out.append
        for counter, ciphertext in zip(counters, ciphertexts, strict=True):
            try:
                append(decrypt((counter << 32).to_bytes(12, "little"), ciphertext, None))
            except InvalidTag:
                append(None)
        return out


class CryptographyBackend(CryptoBackend):
    """The default backend: ``cryptography`` (OpenSSL) plus :mod:`hashlib` BLAKE2s."""

    name = "cryptography"
    description = "X25519 and ChaCha20-Poly1305 from the cryptography package, BLAKE2s hashlib"

    def generate_private_key(self) -> bytes:
        return clamp_private_key(os.urandom(32))

    def public_key(self, private_key: bytes) -> bytes:
        return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()

    def dh(self, private_key: bytes, public_key: bytes) -> bytes:
        try:
            shared = X25519PrivateKey.from_private_bytes(private_key).exchange(
                X25519PublicKey.from_public_bytes(public_key)
            )
        except ValueError:
            # OpenSSL refuses an all-zero result (low-order point); so do we.
            raise DecryptionFailed("X25519 result is all zeros") from None
        if shared == _ZERO32:
            raise DecryptionFailed("X25519 result is all zeros")
        return shared

    def aead(self, key: bytes) -> Aead:
        return CryptographyAead(key)

    def xseal(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        subkey, short_nonce = _xchacha_parts(key, nonce)
        return ChaCha20Poly1305(subkey).encrypt(short_nonce, plaintext, aad or None)

    def xopen(self, key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        subkey, short_nonce = _xchacha_parts(key, nonce)
        try:
            return ChaCha20Poly1305(subkey).decrypt(short_nonce, ciphertext, aad or None)
        except InvalidTag:
            raise DecryptionFailed("XChaCha20-Poly1305 tag mismatch") from None


def _xchacha_parts(key: bytes, nonce: bytes) -> tuple[bytes, bytes]:
    if len(nonce) != 24:
        raise ValueError("an XChaCha20-Poly1305 nonce is 24 bytes")
    return hchacha20(key, nonce[:16]), b"\x00\x00\x00\x00" + nonce[16:]
