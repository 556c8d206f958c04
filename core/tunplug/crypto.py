"""The crypto backend contract: the primitives WireGuard needs, behind one small ABC.

Who calls it: the sans-IO WireGuard protocol (:mod:`tunplug.wireguard`). Who implements it: the
crypto plugins (``cryptography`` by default, ``sodium`` on PyNaCl), registered through the
``tunplug_register_crypto_backends`` hook. Every backend passes the same conformance tests
(``tests/plugins/crypto/``).
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

from tunplug.exceptions import TunplugError


class DecryptionFailed(TunplugError):
    """An AEAD tag did not verify (wrong key, tampered or truncated data)."""


class Aead(ABC):
    """ChaCha20-Poly1305 with one fixed key, as WireGuard uses it.

    The 96-bit nonce is 4 zero bytes followed by the little-endian 64-bit ``counter``.

    An AEAD may also own its session's send counter (:attr:`owns_counter`): the native data
    path's does, because its threads seal with the same session as Python, and a counter must
    never be used twice. The session then reserves counters through :meth:`reserve`.
    """

    #: Whether :meth:`reserve` and :attr:`counter` keep this session's send counter.
    owns_counter: ClassVar[bool] = False

    def reserve(self, count: int) -> int:
        """Reserve ``count`` consecutive send counters; returns the first (owners only)."""
        raise NotImplementedError(f"{type(self).__name__} does not keep a send counter")

    @property
    def counter(self) -> int:
        """The next send counter not yet reserved (owners only)."""
        raise NotImplementedError(f"{type(self).__name__} does not keep a send counter")

    @abstractmethod
    def seal(self, counter: int, plaintext: bytes | memoryview, aad: bytes = b"") -> bytes:
        """Encrypt and authenticate; returns ciphertext with the 16-byte tag appended."""

    @abstractmethod
    def open(self, counter: int, ciphertext: bytes | memoryview, aad: bytes = b"") -> bytes:
        """Verify and decrypt. :raises DecryptionFailed: the tag does not verify."""

    def seal_many(
        self, counters: Sequence[int], plaintexts: Sequence[bytes | memoryview]
    ) -> list[bytes]:
        """Encrypt a batch with empty AAD (transport data). Backends may do this faster."""
        return [self.seal(c, p) for c, p in zip(counters, plaintexts, strict=True)]

    def seal_many_into(
        self,
        counters: Sequence[int],
        plaintexts: Sequence[bytes | memoryview],
        header: bytes,
        out: memoryview,
    ) -> list[memoryview]:
        """Write whole transport messages into ``out``, one after the other, and return a view
        of each: ``header``, the counter (8 bytes, little-endian), then the ciphertext and tag.

        ``out`` must hold ``len(plaintexts) * (len(header) + 24) + sum(map(len, plaintexts))``
        bytes. Backends that can encrypt in place override this to save a copy and an
        allocation per packet; this default builds each message with :meth:`seal_many`.
        """
        views: list[memoryview] = []
        offset = 0
        for counter, sealed in zip(counters, self.seal_many(counters, plaintexts), strict=True):
            message = header + counter.to_bytes(8, "little") + sealed
            end = offset + len(message)
            out[offset:end] = message
            views.append(out[offset:end])
            offset = end
        return views

    def seal_transport(
        self,
        first_counter: int,
        packets: Sequence[bytes | bytearray | memoryview],
        header: bytes,
        mtu: int,
        take: Callable[[int], memoryview],
    ) -> list[memoryview]:
        """Whole transport messages for ``packets``, with counters ``first_counter``,
        ``first_counter + 1``...: each packet zero-padded for ``mtu`` (whitepaper 5.4.6), then
        laid out as :meth:`seal_many_into` does. Returns a view of each message.

        ``take(size)`` hands out the memory to write ``size`` bytes into (the device's reused
        send buffer). This default pads in Python and calls :meth:`seal_many_into`; a native
        data path does the whole batch in one call (and may return views of its own memory).
        """
        # Here, not at the top: tunplug.wireguard imports this module.
        from tunplug.wireguard.messages import padded

        plaintexts = [padded(packet, mtu) for packet in packets]
        size = sum(map(len, plaintexts)) + len(plaintexts) * (len(header) + 8 + 16)
        counters = range(first_counter, first_counter + len(plaintexts))
        return self.seal_many_into(counters, plaintexts, header, take(size))

    def open_many(
        self, counters: Sequence[int], ciphertexts: Sequence[bytes | memoryview]
    ) -> list[bytes | None]:
        """Decrypt a batch with empty AAD; ``None`` marks a packet whose tag failed."""
        out: list[bytes | None] = []
        for counter, ciphertext in zip(counters, ciphertexts, strict=True):
            try:
                out.append(self.open(counter, ciphertext))
            except DecryptionFailed:
                out.append(None)
        return out


class CryptoBackend(ABC):
    """X25519, ChaCha20-Poly1305, XChaCha20-Poly1305 and BLAKE2s for WireGuard."""

    #: The registered name, e.g. ``"cryptography"``.
    name: ClassVar[str]
    #: One line for ``tunplug plugins``.
    description: ClassVar[str] = ""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Say why this backend cannot be used here (e.g. its library is missing), or ``None``."""
        return None

    # X25519
    @abstractmethod
    def generate_private_key(self) -> bytes:
        """Return a new clamped 32-byte X25519 private key (as ``wg genkey`` does)."""

    @abstractmethod
    def public_key(self, private_key: bytes) -> bytes:
        """Return the 32-byte public key of ``private_key``."""

    @abstractmethod
    def dh(self, private_key: bytes, public_key: bytes) -> bytes:
        """X25519 shared secret. :raises DecryptionFailed: the result is all zeros."""

    # BLAKE2s: hashlib has it everywhere (libsodium has only BLAKE2b), so these are shared;
    # a backend overrides them only if it has something faster.
    def hash(self, data: bytes) -> bytes:
        """BLAKE2s-256 of ``data``."""
        return hashlib.blake2s(data).digest()

    def hmac(self, key: bytes, data: bytes) -> bytes:
        """HMAC-BLAKE2s-256 (the Noise HKDF building block)."""
        return _hmac.digest(key, data, "blake2s")

    def mac(self, key: bytes, data: bytes) -> bytes:
        """Keyed BLAKE2s with a 16-byte digest (WireGuard's mac1/mac2/cookie MAC)."""
        return hashlib.blake2s(data, key=key, digest_size=16).digest()

    # AEADs
    @abstractmethod
    def aead(self, key: bytes) -> Aead:
        """Return a ChaCha20-Poly1305 object for ``key`` (32 bytes)."""

    @abstractmethod
    def xseal(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """XChaCha20-Poly1305 encrypt with a 24-byte nonce (cookie replies)."""

    @abstractmethod
    def xopen(self, key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """XChaCha20-Poly1305 decrypt. :raises DecryptionFailed: the tag does not verify."""
