"""Property: no datagram, however mangled, makes ``decrypt`` raise or deliver anything; each
one is counted as exactly one drop."""

from __future__ import annotations

import functools

from hypothesis import given, settings
from hypothesis import strategies as st

from tunplug.wireguard import WireGuardDevice

from ._fakenet import FakeNet, Node, ipv4_packet
from .test_handshake_and_transport import A_ADDR, B_ADDR, make_pair


@functools.cache
def scenario() -> tuple[FakeNet, Node, Node, tuple[bytes, ...]]:
    """A tunnel after a handshake and traffic both ways, with every datagram captured.

    Every captured datagram has already been consumed, so replaying it unchanged is a drop.
    A cookie reply (from a device forced under load) is captured too.
    """
    net, a, b = make_pair()
    net.send(a, [ipv4_packet("10.0.0.1", "10.0.0.2", b"x" * 100)])
    net.flush()
    net.send(b, [ipv4_packet("10.0.0.2", "10.0.0.1", b"y" * 7)])
    net.flush()
    net.advance(11)  # passive keepalive from a
    loaded = FakeNet()
    c = loaded.add_node("c", A_ADDR, "10.0.0.1", "fd00::1")
    d = loaded.add_node("d", B_ADDR, "10.0.0.2", "fd00::2", under_load_threshold=0)
    loaded.connect(c, d)
    loaded.send(c, [ipv4_packet("10.0.0.1", "10.0.0.2")])
    loaded.flush()
    captured = tuple(s.data for s in net.log) + tuple(s.data for s in loaded.log if s.data[0] == 3)
    assert sorted({m[0] for m in captured}) == [1, 2, 3, 4]
    return net, a, b, captured


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    _, _, _, captured = scenario()
    return mangle(draw, draw(st.sampled_from(captured)))


def mangle(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` replayed, flipped, truncated, extended, or replaced by random bytes behind a
    message type (also used for the native plane's fuzz test)."""
    how = draw(st.sampled_from(["flip", "truncate", "extend", "random", "replay"]))
    if how == "replay":
        return original
    if how == "random":
        prefix = draw(
            st.sampled_from(
                [
                    b"",
                    b"\x01\x00\x00\x00",
                    b"\x02\x00\x00\x00",
                    b"\x03\x00\x00\x00",
                    b"\x04\x00\x00\x00",
                ]
            )
        )
        return prefix + draw(st.binary(max_size=200))
    if how == "truncate":
        return original[: draw(st.integers(0, len(original) - 1))]
    if how == "extend":
        return original + draw(st.binary(min_size=1, max_size=20))
    data = bytearray(original)
    for position in draw(st.lists(st.integers(0, len(data) * 8 - 1), min_size=1, max_size=4)):
        data[position // 8] ^= 1 << (position % 8)
    return bytes(data)


def only_cookie_replies(datagrams: list[tuple[bytes, tuple[str, int]]]) -> bool:
    """Nothing answers garbage, except cookie replies once the stream of (replayed)
    handshakes puts the device under load - as it should."""
    return all(d[0] == 3 and len(d) == 64 for d, _ in datagrams)


def feed(device: WireGuardDevice, datagram: bytes, now: float) -> None:
    before = sum(device.drops.values())
    out = device.decrypt([(datagram, A_ADDR)], now)
    assert out.to_tun == []
    assert only_cookie_replies(out.to_network)
    assert sum(device.drops.values()) == before + 1


@settings(max_examples=300, deadline=None)
@given(datagram=mangled())
def test_mangled_datagrams_never_raise_and_are_counted(datagram: bytes) -> None:
    net, a, b, _ = scenario()
    feed(b.device, datagram, net.now)
    feed(a.device, datagram, net.now)


@settings(max_examples=100, deadline=None)
@given(batch=st.lists(mangled(), min_size=1, max_size=10))
def test_mangled_batches_are_counted_per_datagram(batch: list[bytes]) -> None:
    net, _, b, _ = scenario()
    before = sum(b.device.drops.values())
    out = b.device.decrypt([(d, A_ADDR) for d in batch], net.now)
    assert out.to_tun == [] and only_cookie_replies(out.to_network)
    assert sum(b.device.drops.values()) == before + len(batch)


@settings(max_examples=50, deadline=None)
@given(packets=st.lists(st.binary(max_size=80), max_size=10))
def test_garbage_from_the_tun_device_never_raises(packets: list[bytes]) -> None:
    net, a, _, _ = scenario()
    out = a.device.encrypt(packets, net.now)
    assert len(out.to_network) <= len(packets) + 1
