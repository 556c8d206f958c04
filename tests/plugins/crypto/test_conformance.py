"""Conformance tests every crypto backend must pass: published vectors plus WireGuard specifics."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tunplug.crypto import CryptoBackend, DecryptionFailed

# RFC 7748 section 5.2 (single scalar multiplications) and 6.1 (Diffie-Hellman).
X25519_VECTORS = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]
ALICE_PRIVATE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
ALICE_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
BOB_PRIVATE = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
BOB_PUBLIC = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
SHARED = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"

SUNSCREEN = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it."
)
AAD_2_8_2 = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
KEY_80 = bytes(range(0x80, 0xA0))
# RFC 8439 section 2.8.2: nonce 07000000 || 4041424344454647.
RFC8439_CIPHERTEXT = bytes.fromhex(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116"
)
RFC8439_TAG = bytes.fromhex("1ae10b594f09e26a7e902ecbd0600691")
# draft-irtf-cfrg-xchacha-03 section A.3.1.
XCHACHA_NONCE = bytes.fromhex("404142434445464748494a4b4c4d4e4f5051525354555657")
XCHACHA_CIPHERTEXT = bytes.fromhex(
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
    "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
    "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
    "21f9664c97637da9768812f615c68b13b52e"
)
XCHACHA_TAG = bytes.fromhex("c0875924c1c7987947deafd8780acf49")


def _hmac_blake2s_reference(key: bytes, data: bytes) -> bytes:
    """HMAC (RFC 2104) spelled out with BLAKE2s's 64-byte block, independent of :mod:`hmac`."""
    block = key.ljust(64, b"\x00") if len(key) <= 64 else hashlib.blake2s(key).digest()
    block = block.ljust(64, b"\x00")
    inner = hashlib.blake2s(bytes(b ^ 0x36 for b in block) + data).digest()
    return hashlib.blake2s(bytes(b ^ 0x5C for b in block) + inner).digest()


# X25519 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("scalar", "point", "expected"), X25519_VECTORS)
def test_x25519_rfc7748_vectors(
    backend: CryptoBackend, scalar: str, point: str, expected: str
) -> None:
    assert backend.dh(bytes.fromhex(scalar), bytes.fromhex(point)).hex() == expected


def test_x25519_rfc7748_diffie_hellman(backend: CryptoBackend) -> None:
    alice, bob = bytes.fromhex(ALICE_PRIVATE), bytes.fromhex(BOB_PRIVATE)
    assert backend.public_key(alice).hex() == ALICE_PUBLIC
    assert backend.public_key(bob).hex() == BOB_PUBLIC
    assert backend.dh(alice, bytes.fromhex(BOB_PUBLIC)).hex() == SHARED
    assert backend.dh(bob, bytes.fromhex(ALICE_PUBLIC)).hex() == SHARED


def test_x25519_one_iteration_of_base_point(backend: CryptoBackend) -> None:
    # RFC 7748 section 5.2: k = u = 9, after one iteration.
    nine = (9).to_bytes(32, "little")
    expected = "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
    assert backend.dh(nine, nine).hex() == expected


@pytest.mark.parametrize(
    "low_order_point",
    [
        bytes(32),
        (1).to_bytes(32, "little"),
        bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    ],
    ids=["zero", "one", "order-8"],
)
def test_dh_with_low_order_point_is_rejected(
    backend: CryptoBackend, low_order_point: bytes
) -> None:
    with pytest.raises(DecryptionFailed):
        backend.dh(backend.generate_private_key(), low_order_point)


def test_generated_keys_are_clamped_and_distinct(backend: CryptoBackend) -> None:
    keys = {backend.generate_private_key() for _ in range(8)}
    assert len(keys) == 8
    for key in keys:
        assert len(key) == 32
        assert key[0] & 7 == 0
        assert key[31] & 0x80 == 0
        assert key[31] & 0x40 == 0x40


def test_key_agreement_is_symmetric(backend: CryptoBackend) -> None:
    a, b = backend.generate_private_key(), backend.generate_private_key()
    assert backend.dh(a, backend.public_key(b)) == backend.dh(b, backend.public_key(a))


@pytest.mark.root  # wireguard-tools comes with the root setup; in CI a skip fails
@pytest.mark.skipif(shutil.which("wg") is None, reason="needs wireguard-tools' wg")
def test_public_key_matches_wg_pubkey(backend: CryptoBackend) -> None:
    for _ in range(3):
        private_b64 = subprocess.run(
            ["wg", "genkey"], capture_output=True, text=True, check=True
        ).stdout.strip()
        public_b64 = subprocess.run(
            ["wg", "pubkey"], input=private_b64 + "\n", capture_output=True, text=True, check=True
        ).stdout.strip()
        public = backend.public_key(base64.b64decode(private_b64))
        assert base64.b64encode(public).decode() == public_b64


@pytest.mark.root  # wireguard-tools comes with the root setup; in CI a skip fails
@pytest.mark.skipif(shutil.which("wg") is None, reason="needs wireguard-tools' wg")
def test_wg_accepts_our_generated_key(backend: CryptoBackend) -> None:
    private = backend.generate_private_key()
    public_b64 = subprocess.run(
        ["wg", "pubkey"],
        input=base64.b64encode(private).decode() + "\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert base64.b64decode(public_b64) == backend.public_key(private)


# BLAKE2s ----------------------------------------------------------------------------------------


def test_blake2s_rfc7693_abc(backend: CryptoBackend) -> None:
    expected = "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
    assert backend.hash(b"abc").hex() == expected


def test_blake2s_wireguard_chaining_key_and_hash(backend: CryptoBackend) -> None:
    c0 = backend.hash(b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s")
    h0 = backend.hash(c0 + b"WireGuard v1 zx2c4 Jason@zx2c4.com")
    assert c0.hex().startswith("60e26dae")
    assert h0.hex().startswith("2211b361")


@pytest.mark.parametrize("key_len", [0, 1, 32, 64, 65])
def test_hmac_matches_rfc2104_construction(backend: CryptoBackend, key_len: int) -> None:
    key = bytes(range(key_len))
    data = b"tunplug" * 11
    result = backend.hmac(key, data)
    assert len(result) == 32
    assert result == _hmac_blake2s_reference(key, data)


def test_keyed_mac_is_blake2s_128_not_hmac(backend: CryptoBackend) -> None:
    key = bytes(range(32))
    result = backend.mac(key, b"message")
    assert len(result) == 16
    assert result == hashlib.blake2s(b"message", key=key, digest_size=16).digest()
    # A 16-byte digest is a different parameter block, not a truncated 32-byte one.
    assert result != hashlib.blake2s(b"message", key=key).digest()[:16]
    assert result != backend.hmac(key, b"message")[:16]


def test_keyed_blake2s_official_kat(backend: CryptoBackend) -> None:
    # BLAKE2 reference blake2s-kat.txt: key 00..1f, empty input, 32-byte digest. The backend
    # MAC is the 16-byte variant of the same keyed hash, so check the hash family it builds on.
    assert (
        hashlib.blake2s(b"", key=bytes(range(32))).hexdigest()
        == "48a8997da407876b3d79c0d92325ad3b89cbb754d86ab71aee047ad345fd2c49"
    )
    assert (
        backend.mac(bytes(range(32)), b"")
        == hashlib.blake2s(b"", key=bytes(range(32)), digest_size=16).digest()
    )


# ChaCha20-Poly1305 --------------------------------------------------------------------------------


def test_rfc8439_aead_vector_on_the_primitive() -> None:
    # The backend API fixes the nonce prefix to zeros, so the RFC's nonce (prefix 07000000)
    # is checked on the primitive; test_aead_nonce_layout ties the backends to it.
    nonce = bytes.fromhex("070000004041424344454647")
    sealed = ChaCha20Poly1305(KEY_80).encrypt(nonce, SUNSCREEN, AAD_2_8_2)
    assert sealed == RFC8439_CIPHERTEXT + RFC8439_TAG


def test_rfc8439_aead_vector_on_libsodium() -> None:
    nacl_bindings = pytest.importorskip("nacl.bindings")
    nonce = bytes.fromhex("070000004041424344454647")
    sealed = nacl_bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
        SUNSCREEN, AAD_2_8_2, nonce, KEY_80
    )
    assert sealed == RFC8439_CIPHERTEXT + RFC8439_TAG


@pytest.mark.parametrize("counter", [0, 1, 0x0102030405060708, 2**64 - 1])
def test_aead_nonce_layout(backend: CryptoBackend, counter: int) -> None:
    """The nonce is 4 zero bytes || LE64(counter), as WireGuard's transport uses it."""
    nonce = b"\x00" * 4 + counter.to_bytes(8, "little")
    expected = ChaCha20Poly1305(KEY_80).encrypt(nonce, SUNSCREEN, AAD_2_8_2)
    aead = backend.aead(KEY_80)
    assert aead.seal(counter, SUNSCREEN, AAD_2_8_2) == expected
    assert aead.open(counter, expected, AAD_2_8_2) == SUNSCREEN
    assert aead.open(counter, memoryview(expected), AAD_2_8_2) == SUNSCREEN


def test_aead_rejects_tampering(backend: CryptoBackend) -> None:
    aead = backend.aead(KEY_80)
    sealed = bytearray(aead.seal(5, b"payload", b"aad"))
    with pytest.raises(DecryptionFailed):
        aead.open(6, bytes(sealed), b"aad")
    with pytest.raises(DecryptionFailed):
        aead.open(5, bytes(sealed), b"other")
    sealed[0] ^= 1
    with pytest.raises(DecryptionFailed):
        aead.open(5, bytes(sealed), b"aad")
    with pytest.raises(DecryptionFailed):
        aead.open(5, b"short", b"aad")


def test_aead_empty_plaintext_is_a_bare_tag(backend: CryptoBackend) -> None:
    aead = backend.aead(bytes(32))
    sealed = aead.seal(0, b"", b"hash")
    assert len(sealed) == 16
    assert aead.open(0, sealed, b"hash") == b""


def test_seal_many_open_many_batch_with_a_tampered_packet(backend: CryptoBackend) -> None:
    aead = backend.aead(KEY_80)
    plaintexts = [bytes([i]) * (i * 37 % 1400 + 1) for i in range(20)]
    counters = list(range(100, 120))
    sealed = aead.seal_many(counters, [memoryview(p) for p in plaintexts])
    assert sealed == [aead.seal(c, p) for c, p in zip(counters, plaintexts, strict=True)]
    tampered = [bytearray(s) for s in sealed]
    tampered[7][-1] ^= 0x80
    opened = aead.open_many(counters, [memoryview(t) for t in tampered])
    assert opened[7] is None
    assert [o for i, o in enumerate(opened) if i != 7] == [
        p for i, p in enumerate(plaintexts) if i != 7
    ]


def test_seal_many_into_writes_whole_messages_like_seal(backend: CryptoBackend) -> None:
    aead = backend.aead(bytes(range(32)))
    header = b"\x04\x00\x00\x00" + b"\x11\x22\x33\x44"
    plaintexts = [b"", b"x" * 16, bytes(range(200)) * 7]
    counters = [0, 1, 2**40 + 5]
    size = sum(map(len, plaintexts)) + len(plaintexts) * (len(header) + 24)
    out = memoryview(bytearray(size + 10))
    views = aead.seal_many_into(counters, plaintexts, header, out)
    expected = [
        header + c.to_bytes(8, "little") + aead.seal(c, p)
        for c, p in zip(counters, plaintexts, strict=True)
    ]
    assert [bytes(v) for v in views] == expected
    assert bytes(out[:size]) == b"".join(expected)  # one after the other, from the start
    assert bytes(out[size:]) == bytes(10)  # nothing written beyond


def test_open_many_with_wrong_counters_gives_none(backend: CryptoBackend) -> None:
    aead = backend.aead(KEY_80)
    sealed = aead.seal_many([1, 2], [b"a" * 16, b"b" * 16])
    assert aead.open_many([2, 1], sealed) == [None, None]


def test_backends_agree(backend: CryptoBackend) -> None:
    from tunplug_crypto_cryptography.backend import CryptographyBackend

    reference = CryptographyBackend()
    key = bytes(range(32))
    assert backend.aead(key).seal(7, b"x" * 100) == reference.aead(key).seal(7, b"x" * 100)
    nonce = bytes(range(24))
    assert backend.xseal(key, nonce, b"cookie", b"mac1") == reference.xseal(
        key, nonce, b"cookie", b"mac1"
    )


# XChaCha20-Poly1305 -----------------------------------------------------------------------------


def test_xchacha_draft_vector(backend: CryptoBackend) -> None:
    sealed = backend.xseal(KEY_80, XCHACHA_NONCE, SUNSCREEN, AAD_2_8_2)
    assert sealed == XCHACHA_CIPHERTEXT + XCHACHA_TAG
    assert backend.xopen(KEY_80, XCHACHA_NONCE, sealed, AAD_2_8_2) == SUNSCREEN


def test_xchacha_rejects_tampering(backend: CryptoBackend) -> None:
    sealed = bytearray(backend.xseal(KEY_80, XCHACHA_NONCE, b"cookie" * 3, b"mac1"))
    with pytest.raises(DecryptionFailed):
        backend.xopen(KEY_80, XCHACHA_NONCE, bytes(sealed), b"mac2")
    sealed[3] ^= 4
    with pytest.raises(DecryptionFailed):
        backend.xopen(KEY_80, XCHACHA_NONCE, bytes(sealed), b"mac1")


def test_hchacha20_draft_vector() -> None:
    from tunplug_crypto_cryptography.backend import hchacha20

    # draft-irtf-cfrg-xchacha-03 section 2.2.1.
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    expected = "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    assert hchacha20(key, nonce).hex() == expected


def test_open_many_with_truncated_ciphertexts_gives_none(backend: CryptoBackend) -> None:
    aead = backend.aead(KEY_80)
    assert aead.open_many([0, 1, 2], [b"", b"x" * 15, memoryview(b"y" * 16)]) == [None] * 3
