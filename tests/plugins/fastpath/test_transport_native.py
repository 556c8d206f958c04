"""The native transport AEAD against the reference (``cryptography``): same bytes for every
input, the same refusals for tampered, truncated and wrongly countered ciphertexts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunplug.crypto import DecryptionFailed
from tunplug.wireguard.messages import padded
from tunplug_crypto_cryptography.backend import CryptographyAead
from tunplug_fastpath import NativeAead

keys = st.binary(min_size=32, max_size=32)
counters = st.integers(0, 2**64 - 1)
packets = st.lists(st.binary(max_size=1600), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(key=keys, counter=counters, plaintext=st.binary(max_size=2000), aad=st.binary(max_size=64))
def test_seal_and_open_match_the_reference(
    key: bytes, counter: int, plaintext: bytes, aad: bytes
) -> None:
    native, reference = NativeAead(key), CryptographyAead(key)
    sealed = native.seal(counter, plaintext, aad)
    assert sealed == reference.seal(counter, plaintext, aad)
    assert native.open(counter, sealed, aad) == plaintext
    assert native.open(counter, memoryview(sealed), aad) == plaintext


@settings(max_examples=200, deadline=None)
@given(
    key=keys,
    first=st.integers(0, 2**64 - 100),
    batch=packets,
    mtu=st.sampled_from([1280, 1420, 1500]),
    receiver=st.integers(0, 2**32 - 1),
)
def test_seal_transport_lays_out_the_same_messages(
    key: bytes, first: int, batch: list[bytes], mtu: int, receiver: int
) -> None:
    header = b"\x04\x00\x00\x00" + receiver.to_bytes(4, "little")
    reference = CryptographyAead(key)
    expected = [
        header + (first + i).to_bytes(8, "little") + reference.seal(first + i, padded(p, mtu))
        for i, p in enumerate(batch)
    ]

    def take(size: int) -> memoryview:
        return memoryview(bytearray(size))

    native_views = NativeAead(key).seal_transport(first, batch, header, mtu, take)
    assert [bytes(v) for v in native_views] == expected
    # The reference data path's default (pad in Python, seal_many_into) agrees as well.
    python_views = reference.seal_transport(first, batch, header, mtu, take)
    assert [bytes(v) for v in python_views] == expected


@settings(max_examples=200, deadline=None)
@given(
    key=keys,
    first=st.integers(0, 2**32),
    batch=packets,
    damage=st.lists(st.sampled_from(["keep", "flip", "truncate", "counter"]), min_size=12),
)
def test_open_many_refuses_what_the_reference_refuses(
    key: bytes, first: int, batch: list[bytes], damage: list[str]
) -> None:
    native, reference = NativeAead(key), CryptographyAead(key)
    counters = list(range(first, first + len(batch)))
    ciphertexts: list[bytes | memoryview] = []
    for counter, plaintext, how in zip(counters, batch, damage, strict=False):
        sealed = bytearray(reference.seal(counter + (how == "counter"), plaintext))
        if how == "flip":
            sealed[len(sealed) // 2] ^= 0x40
        elif how == "truncate":
            sealed = sealed[: len(sealed) // 3]
        ciphertexts.append(memoryview(bytes(sealed)))
    opened = native.open_many(counters, ciphertexts)
    assert opened == reference.open_many(counters, ciphertexts)
    for plaintext, how, result in zip(batch, damage, opened, strict=False):
        assert result == (plaintext if how == "keep" else None)


def test_a_bad_tag_is_tunplugs_decryption_failed() -> None:
    aead = NativeAead(bytes(32))
    with pytest.raises(DecryptionFailed):
        aead.open(0, bytes(16))
    with pytest.raises(DecryptionFailed):
        aead.open(0, b"")


def test_keys_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        NativeAead(bytes(31))
