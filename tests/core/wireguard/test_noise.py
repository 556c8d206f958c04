"""Known answers for the handshake building blocks: KDF, TAI64N, initial hashes, and a full
handshake checked against an independent re-derivation of the transport keys."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from tunplug.wireguard import noise
from tunplug.wireguard.constants import CONSTRUCTION, IDENTIFIER
from tunplug_crypto_cryptography.backend import CryptographyBackend

crypto = CryptographyBackend()


def reference_hkdf(key: bytes, data: bytes, n: int) -> list[bytes]:
    """The Noise HKDF spelled out with :mod:`hmac` (RFC 5869 expand with empty info)."""
    prk = hmac.digest(key, data, "blake2s")
    out, previous = [], b""
    for i in range(1, n + 1):
        previous = hmac.digest(prk, previous + bytes([i]), "blake2s")
        out.append(previous)
    return out


@pytest.mark.parametrize("data", [b"", b"\x01" * 32, bytes(range(100))])
def test_kdf_matches_hkdf(data: bytes) -> None:
    key = hashlib.blake2s(b"chaining key").digest()
    assert noise.kdf1(crypto, key, data) == reference_hkdf(key, data, 1)[0]
    assert list(noise.kdf2(crypto, key, data)) == reference_hkdf(key, data, 2)
    assert list(noise.kdf3(crypto, key, data)) == reference_hkdf(key, data, 3)


def test_initial_chaining_key_and_hash() -> None:
    identity = noise.Identity(crypto, crypto.generate_private_key())
    assert identity.initial_chaining_key.hex().startswith("60e26dae")
    assert identity.initial_hash.hex().startswith("2211b361")
    assert identity.initial_chaining_key == hashlib.blake2s(CONSTRUCTION).digest()
    assert (
        identity.initial_hash
        == hashlib.blake2s(identity.initial_chaining_key + IDENTIFIER).digest()
    )


def test_tai64n_layout() -> None:
    assert noise.tai64n(0) == bytes.fromhex("400000000000000a00000000")
    # 1.5 s: nanoseconds 500000000 = 0x1DCD6500, low 24 bits whitened away
    assert noise.tai64n(1.5) == bytes.fromhex("400000000000000b1d000000")
    assert noise.tai64n(1_700_000_000.25) > noise.tai64n(1_700_000_000.2)


def test_full_handshake_derives_matching_keys() -> None:
    i_static, r_static = crypto.generate_private_key(), crypto.generate_private_key()
    initiator = noise.Identity(crypto, i_static)
    responder = noise.Identity(crypto, r_static)
    psk = bytes(range(32))
    i_hs = noise.Handshake(initiator, responder.public, psk)
    r_hs = noise.Handshake(responder, initiator.public, psk)
    ephemeral_i = crypto.generate_private_key()
    message = noise.create_initiation(initiator, i_hs, 7, ephemeral_i, noise.tai64n(1000.0))
    opened = noise.open_initiation(responder, message)
    assert opened.remote_static == initiator.public and opened.sender == 7
    noise.consume_initiation(responder, message, opened, r_hs, now=0.0, initiation_rate=0.02)
    assert r_hs.hash == i_hs.hash and r_hs.chaining_key == i_hs.chaining_key
    ephemeral_r = crypto.generate_private_key()
    response = noise.create_response(responder, r_hs, 9, ephemeral_r)
    noise.consume_response(initiator, i_hs, response)
    assert i_hs.remote_index == 9 and r_hs.remote_index == 7
    i_send, i_recv, i_is_initiator = noise.derive_transport_keys(initiator, i_hs)
    r_send, r_recv, r_is_initiator = noise.derive_transport_keys(responder, r_hs)
    assert (i_is_initiator, r_is_initiator) == (True, False)
    assert i_send == r_recv and i_recv == r_send and i_send != i_recv

    # independent re-derivation of the final chaining key from the DH results (whitepaper 5.4)
    def mix(ck: bytes, data: bytes) -> bytes:
        return reference_hkdf(ck, data, 1)[0]

    ck = hashlib.blake2s(CONSTRUCTION).digest()
    e_i_pub, e_r_pub = crypto.public_key(ephemeral_i), crypto.public_key(ephemeral_r)
    ck = mix(ck, e_i_pub)
    ck = reference_hkdf(ck, crypto.dh(ephemeral_i, responder.public), 2)[0]
    ck = reference_hkdf(ck, crypto.dh(i_static, responder.public), 2)[0]
    ck = mix(ck, e_r_pub)
    ck = mix(ck, crypto.dh(ephemeral_r, e_i_pub))
    ck = mix(ck, crypto.dh(ephemeral_r, initiator.public))
    ck = reference_hkdf(ck, psk, 3)[0]
    assert [i_send, i_recv] == reference_hkdf(ck, b"", 2)


def test_response_with_wrong_state_or_tampering_is_refused() -> None:
    initiator = noise.Identity(crypto, crypto.generate_private_key())
    responder = noise.Identity(crypto, crypto.generate_private_key())
    i_hs = noise.Handshake(initiator, responder.public, None)
    r_hs = noise.Handshake(responder, initiator.public, None)
    message = noise.create_initiation(
        initiator, i_hs, 1, crypto.generate_private_key(), noise.tai64n(5.0)
    )
    opened = noise.open_initiation(responder, message)
    noise.consume_initiation(responder, message, opened, r_hs, now=0.0, initiation_rate=0.02)
    response = noise.create_response(responder, r_hs, 2, crypto.generate_private_key())
    tampered = bytearray(response)
    tampered[20] ^= 1
    with pytest.raises(noise.HandshakeError, match="handshake-failed"):
        noise.consume_response(initiator, i_hs, tampered)
    with pytest.raises(noise.HandshakeError, match="handshake-state"):
        noise.consume_response(initiator, r_hs, response)
    with pytest.raises(noise.HandshakeError, match="handshake-state"):
        noise.derive_transport_keys(initiator, i_hs)
