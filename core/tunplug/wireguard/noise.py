"""The Noise_IKpsk2 handshake as WireGuard uses it (whitepaper section 5.4): pure functions over
a per-peer :class:`Handshake` record.

Who calls it: :class:`tunplug.wireguard.WireGuardDevice`, which owns index allocation, peer
lookup, MACs and timers; this module does only the cryptography and the state transitions:

* initiator: :func:`create_initiation`, later :func:`consume_response`;
* responder: :func:`consume_initiation`, then :func:`create_response`;
* both: :func:`derive_transport_keys` once the handshake is complete.

Every failure raises :class:`HandshakeError` with a ``reason`` the device counts as a drop.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Final

from tunplug.crypto import CryptoBackend, DecryptionFailed
from tunplug.wireguard.constants import (
    CONSTRUCTION,
    IDENTIFIER,
    INITIATION_SIZE,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    RESPONSE_SIZE,
)
from tunplug.wireguard.messages import INITIATION, RESPONSE

_ZERO_KEY: Final = bytes(32)
_TAI64N_BASE: Final = 0x400000000000000A
#: wireguard-go clears the low 24 bits of the nanoseconds so that timestamps don't leak timing.
_TAI64N_WHITENER: Final = 0xFFFFFF
_TAI64N: Final = struct.Struct(">QI")


class HandshakeError(Exception):
    """A handshake message was rejected; ``reason`` is the drop counter to bump."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HandshakeState(IntEnum):
    ZEROED = 0
    INITIATION_CREATED = 1
    INITIATION_CONSUMED = 2
    RESPONSE_CREATED = 3
    RESPONSE_CONSUMED = 4


def kdf1(crypto: CryptoBackend, key: bytes, data: bytes) -> bytes:
    t0 = crypto.hmac(key, data)
    return crypto.hmac(t0, b"\x01")


def kdf2(crypto: CryptoBackend, key: bytes, data: bytes) -> tuple[bytes, bytes]:
    t0 = crypto.hmac(key, data)
    t1 = crypto.hmac(t0, b"\x01")
    return t1, crypto.hmac(t0, t1 + b"\x02")


def kdf3(crypto: CryptoBackend, key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    t0 = crypto.hmac(key, data)
    t1 = crypto.hmac(t0, b"\x01")
    t2 = crypto.hmac(t0, t1 + b"\x02")
    return t1, t2, crypto.hmac(t0, t2 + b"\x03")


def tai64n(unix_time: float) -> bytes:
    """TAI64N label of a wall-clock time, nanoseconds whitened as wireguard-go does."""
    seconds = int(unix_time)
    nanoseconds = int((unix_time - seconds) * 1e9) & ~_TAI64N_WHITENER & 0xFFFFFFFF
    return _TAI64N.pack(_TAI64N_BASE + seconds, nanoseconds)


class Identity:
    """The local static key pair and the hashes derived from it once."""

    __slots__ = (
        "crypto",
        "initial_chaining_key",
        "initial_hash",
        "private",
        "public",
        "responder_hash",
    )

    def __init__(self, crypto: CryptoBackend, private_key: bytes) -> None:
        self.crypto = crypto
        self.private = bytes(private_key)
        self.public = crypto.public_key(self.private)
        self.initial_chaining_key = crypto.hash(CONSTRUCTION)
        self.initial_hash = crypto.hash(self.initial_chaining_key + IDENTIFIER)
        #: H after mixing our own static key: where every initiation to us starts.
        self.responder_hash = crypto.hash(self.initial_hash + self.public)


class Handshake:
    """Per-peer handshake state: what one side remembers between two messages."""

    __slots__ = (
        "chaining_key",
        "hash",
        "last_initiation_consumed",
        "latest_timestamp",
        "local_ephemeral",
        "local_index",
        "precomputed_static_static",
        "preshared_key",
        "remote_ephemeral",
        "remote_index",
        "remote_static",
        "state",
    )

    def __init__(
        self, identity: Identity, remote_static: bytes, preshared_key: bytes | None
    ) -> None:
        self.remote_static = remote_static
        self.preshared_key = preshared_key or _ZERO_KEY
        try:
            self.precomputed_static_static = identity.crypto.dh(identity.private, remote_static)
        except DecryptionFailed:
            # A low-order peer key can never complete a handshake; keep the peer but unusable.
            self.precomputed_static_static = _ZERO_KEY
        self.state = HandshakeState.ZEROED
        self.chaining_key = _ZERO_KEY
        self.hash = _ZERO_KEY
        self.local_ephemeral = _ZERO_KEY
        self.remote_ephemeral = _ZERO_KEY
        self.local_index = 0
        self.remote_index = 0
        self.latest_timestamp = b""
        self.last_initiation_consumed = float("-inf")

    def clear(self) -> None:
        """Forget the ephemeral material (the replay and flood state stays)."""
        self.state = HandshakeState.ZEROED
        self.chaining_key = _ZERO_KEY
        self.hash = _ZERO_KEY
        self.local_ephemeral = _ZERO_KEY
        self.remote_ephemeral = _ZERO_KEY
        self.local_index = 0
        self.remote_index = 0


def _seal_and_mix(
    crypto: CryptoBackend, key: bytes, plaintext: bytes, h: bytes
) -> tuple[bytes, bytes]:
    """Noise EncryptAndHash: seal with nonce 0 and the hash as AAD, then mix the ciphertext."""
    ciphertext = crypto.aead(key).seal(0, plaintext, h)
    return ciphertext, crypto.hash(h + ciphertext)


def create_initiation(
    identity: Identity,
    handshake: Handshake,
    local_index: int,
    ephemeral_private: bytes,
    timestamp: bytes,
) -> bytearray:
    """Build an initiation (MAC fields zero: the caller adds them) and update ``handshake``.

    :raises HandshakeError: the peer's static key is unusable (low-order point).
    """
    crypto = identity.crypto
    if handshake.precomputed_static_static == _ZERO_KEY:
        raise HandshakeError("bad-peer-key")
    h = crypto.hash(identity.initial_hash + handshake.remote_static)
    ephemeral_public = crypto.public_key(ephemeral_private)
    h = crypto.hash(h + ephemeral_public)
    ck = kdf1(crypto, identity.initial_chaining_key, ephemeral_public)
    try:
        ck, key = kdf2(crypto, ck, crypto.dh(ephemeral_private, handshake.remote_static))
    except DecryptionFailed:
        raise HandshakeError("bad-peer-key") from None
    encrypted_static, h = _seal_and_mix(crypto, key, identity.public, h)
    ck, key = kdf2(crypto, ck, handshake.precomputed_static_static)
    encrypted_timestamp, h = _seal_and_mix(crypto, key, timestamp, h)

    message = bytearray(INITIATION_SIZE)
    INITIATION.pack_into(
        message,
        0,
        MESSAGE_INITIATION,
        local_index,
        ephemeral_public,
        encrypted_static,
        encrypted_timestamp,
    )
    handshake.state = HandshakeState.INITIATION_CREATED
    handshake.hash = h
    handshake.chaining_key = ck
    handshake.local_ephemeral = ephemeral_private
    handshake.local_index = local_index
    handshake.remote_index = 0
    return message


class ConsumedInitiation:
    """What :func:`open_initiation` learned, before the peer is known to be acceptable."""

    __slots__ = ("chaining_key", "ephemeral", "hash", "remote_static", "sender")

    def __init__(
        self, sender: int, ephemeral: bytes, remote_static: bytes, chaining_key: bytes, h: bytes
    ) -> None:
        self.sender = sender
        self.ephemeral = ephemeral
        self.remote_static = remote_static
        self.chaining_key = chaining_key
        self.hash = h


def open_initiation(
    identity: Identity, message: bytes | bytearray | memoryview
) -> ConsumedInitiation:
    """First half of consuming an initiation: recover the initiator's static key.

    :raises HandshakeError: the static key does not decrypt.
    """
    crypto = identity.crypto
    _, sender, ephemeral, encrypted_static, _ = INITIATION.unpack_from(message, 0)
    h = crypto.hash(identity.responder_hash + ephemeral)
    ck = kdf1(crypto, identity.initial_chaining_key, ephemeral)
    try:
        ck, key = kdf2(crypto, ck, crypto.dh(identity.private, ephemeral))
        remote_static = crypto.aead(key).open(0, encrypted_static, h)
    except DecryptionFailed:
        raise HandshakeError("handshake-failed") from None
    h = crypto.hash(h + encrypted_static)
    return ConsumedInitiation(sender, ephemeral, remote_static, ck, h)


def consume_initiation(
    identity: Identity,
    message: bytes | bytearray | memoryview,
    opened: ConsumedInitiation,
    handshake: Handshake,
    now: float,
    initiation_rate: float,
) -> None:
    """Second half: check the timestamp with the peer's key, and move ``handshake`` to
    INITIATION_CONSUMED.

    :raises HandshakeError: decryption fails (``handshake-failed``), the timestamp is not newer
        than the last accepted one (``stale-timestamp``) or initiations come too fast
        (``initiation-flood``).
    """
    crypto = identity.crypto
    if handshake.precomputed_static_static == _ZERO_KEY:
        raise HandshakeError("bad-peer-key")
    encrypted_timestamp = bytes(INITIATION.unpack_from(message, 0)[4])
    ck, key = kdf2(crypto, opened.chaining_key, handshake.precomputed_static_static)
    try:
        timestamp = crypto.aead(key).open(0, encrypted_timestamp, opened.hash)
    except DecryptionFailed:
        raise HandshakeError("handshake-failed") from None
    h = crypto.hash(opened.hash + encrypted_timestamp)
    # Byte order of TAI64N is big-endian, so comparing bytes compares times.
    if timestamp <= handshake.latest_timestamp:
        raise HandshakeError("stale-timestamp")
    if now - handshake.last_initiation_consumed <= initiation_rate:
        raise HandshakeError("initiation-flood")
    handshake.latest_timestamp = timestamp
    handshake.last_initiation_consumed = now
    handshake.hash = h
    handshake.chaining_key = ck
    handshake.remote_index = opened.sender
    handshake.remote_ephemeral = opened.ephemeral
    handshake.state = HandshakeState.INITIATION_CONSUMED


def create_response(
    identity: Identity, handshake: Handshake, local_index: int, ephemeral_private: bytes
) -> bytearray:
    """Build a response (MAC fields zero) to the initiation ``handshake`` consumed.

    :raises HandshakeError: the handshake is not in INITIATION_CONSUMED, or a DH is all zeros.
    """
    if handshake.state != HandshakeState.INITIATION_CONSUMED:
        raise HandshakeError("handshake-state")
    crypto = identity.crypto
    ephemeral_public = crypto.public_key(ephemeral_private)
    h = crypto.hash(handshake.hash + ephemeral_public)
    ck = kdf1(crypto, handshake.chaining_key, ephemeral_public)
    try:
        ck = kdf1(crypto, ck, crypto.dh(ephemeral_private, handshake.remote_ephemeral))
        ck = kdf1(crypto, ck, crypto.dh(ephemeral_private, handshake.remote_static))
    except DecryptionFailed:
        raise HandshakeError("handshake-failed") from None
    ck, tau, key = kdf3(crypto, ck, handshake.preshared_key)
    h = crypto.hash(h + tau)
    encrypted_empty, h = _seal_and_mix(crypto, key, b"", h)

    message = bytearray(RESPONSE_SIZE)
    RESPONSE.pack_into(
        message,
        0,
        MESSAGE_RESPONSE,
        local_index,
        handshake.remote_index,
        ephemeral_public,
        encrypted_empty,
    )
    handshake.hash = h
    handshake.chaining_key = ck
    handshake.local_index = local_index
    handshake.local_ephemeral = ephemeral_private
    handshake.state = HandshakeState.RESPONSE_CREATED
    return message


def consume_response(
    identity: Identity, handshake: Handshake, message: bytes | bytearray | memoryview
) -> None:
    """Check a response to our initiation and move ``handshake`` to RESPONSE_CONSUMED.

    :raises HandshakeError: we have no initiation outstanding (``handshake-state``) or the
        response does not authenticate (``handshake-failed``).
    """
    if handshake.state != HandshakeState.INITIATION_CREATED:
        raise HandshakeError("handshake-state")
    crypto = identity.crypto
    _, sender, _, ephemeral, encrypted_empty = RESPONSE.unpack_from(message, 0)
    h = crypto.hash(handshake.hash + ephemeral)
    ck = kdf1(crypto, handshake.chaining_key, ephemeral)
    try:
        ck = kdf1(crypto, ck, crypto.dh(handshake.local_ephemeral, ephemeral))
        ck = kdf1(crypto, ck, crypto.dh(identity.private, ephemeral))
        ck, tau, key = kdf3(crypto, ck, handshake.preshared_key)
        h = crypto.hash(h + tau)
        crypto.aead(key).open(0, encrypted_empty, h)
    except DecryptionFailed:
        raise HandshakeError("handshake-failed") from None
    h = crypto.hash(h + encrypted_empty)
    handshake.hash = h
    handshake.chaining_key = ck
    handshake.remote_index = sender
    handshake.state = HandshakeState.RESPONSE_CONSUMED


def derive_transport_keys(identity: Identity, handshake: Handshake) -> tuple[bytes, bytes, bool]:
    """Split the chaining key into ``(send_key, receive_key, is_initiator)`` (whitepaper
    5.4.5). The caller then takes the indices and calls :meth:`Handshake.clear`.

    :raises HandshakeError: the handshake is not complete on either side.
    """
    if handshake.state == HandshakeState.RESPONSE_CONSUMED:
        initiator = True
    elif handshake.state == HandshakeState.RESPONSE_CREATED:
        initiator = False
    else:
        raise HandshakeError("handshake-state")
    first, second = kdf2(identity.crypto, handshake.chaining_key, b"")
    if initiator:
        return first, second, True
    return second, first, False
