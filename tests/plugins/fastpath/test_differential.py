"""Differential tests: the same batches through a WireGuard device on the pure-Python data path
and on the native one give the same datagrams, the same packets and the same drops, including
for malformed, truncated and replayed datagrams.

Two tunnels (a <-> b) are built twice with the same keys, the same randomness (a seeded
generator: the same indices, ephemeral keys and cookie secrets) and the same clock; only the
transport AEAD differs. Every output is copied to bytes at once, since with
``reuse_send_buffer`` (as the engine runs it) the views are valid only until the next call.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.core.wireguard._fakenet import WALL_CLOCK_BASE, ipv4_packet, ipv6_packet

from tunplug.crypto import Aead
from tunplug.wireguard import Output, PeerConfig, WireGuardDevice
from tunplug_crypto_cryptography.backend import CryptographyBackend
from tunplug_fastpath import NativeAead

A_ADDR = ("192.0.2.1", 51820)
B_ADDR = ("192.0.2.2", 51820)
CRYPTO = CryptographyBackend()
A_KEY = bytes.fromhex("a0" * 31 + "40")
B_KEY = bytes.fromhex("b0" * 31 + "40")
NOW = 1000.0


def seeded(seed: int) -> Callable[[int], bytes]:
    generator = random.Random(seed)
    return generator.randbytes


class Tunnel:
    """Devices a and b connected; ``log`` is every datagram and packet each produced."""

    def __init__(self, transport_aead: Callable[[bytes], Aead] | None) -> None:
        self.now = NOW
        self.a = self._device(A_KEY, 1, transport_aead)
        self.b = self._device(B_KEY, 2, transport_aead)
        import ipaddress

        for device, other, endpoint, inner in (
            (self.a, self.b, B_ADDR, ("10.0.0.2/32", "fd00::2/128")),
            (self.b, self.a, A_ADDR, ("10.0.0.1/32", "fd00::1/128")),
        ):
            device.add_peer(
                PeerConfig(
                    other.public_key,
                    endpoint=endpoint,
                    allowed_ips=tuple(ipaddress.ip_network(n) for n in inner),
                )
            )
        self.log: list[tuple[str, str, bytes]] = []

    def _device(
        self, key: bytes, seed: int, transport_aead: Callable[[bytes], Aead] | None
    ) -> WireGuardDevice:
        return WireGuardDevice(
            key,
            CRYPTO,
            random=seeded(seed),
            wall_clock=lambda: WALL_CLOCK_BASE + self.now,
            reuse_send_buffer=True,
            transport_aead=transport_aead,
        )

    def record(self, who: str, output: Output) -> list[bytes]:
        datagrams = [bytes(data) for data, _ in output.to_network]
        self.log.extend((who, "udp", d) for d in datagrams)
        self.log.extend((who, "tun", bytes(p)) for p in output.to_tun)
        return datagrams

    def send(self, who: str, packets: list[bytes]) -> list[bytes]:
        device = self.a if who == "a" else self.b
        return self.record(who, device.encrypt(packets, self.now))

    def deliver(self, who: str, datagrams: list[bytes]) -> list[bytes]:
        device, source = (self.a, B_ADDR) if who == "a" else (self.b, A_ADDR)
        return self.record(who, device.decrypt([(d, source) for d in datagrams], self.now))

    def exchange(self, sender: str, packets: list[bytes]) -> list[bytes]:
        """``sender`` encrypts; the other side decrypts, answers are delivered back."""
        receiver = "b" if sender == "a" else "a"
        datagrams = self.send(sender, packets)
        answers = self.deliver(receiver, datagrams)
        while answers:
            datagrams = self.deliver(sender, answers)
            answers = self.deliver(receiver, datagrams) if datagrams else []
        return datagrams

    def drops(self) -> tuple[Counter[str], Counter[str]]:
        return Counter(self.a.drops), Counter(self.b.drops)


def pair() -> tuple[Tunnel, Tunnel]:
    return Tunnel(None), Tunnel(NativeAead)


def inner_packet(draw: st.DrawFn, source_side: str) -> bytes:
    me, other = ("1", "2") if source_side == "a" else ("2", "1")
    payload = draw(st.binary(max_size=1500))
    kind = draw(st.sampled_from(["v4", "v6", "unrouted", "garbage"]))
    if kind == "v4":
        return ipv4_packet(f"10.0.0.{me}", f"10.0.0.{other}", payload)
    if kind == "v6":
        return ipv6_packet(f"fd00::{me}", f"fd00::{other}", payload)
    if kind == "unrouted":
        return ipv4_packet(f"10.0.0.{me}", "10.9.9.9", payload)
    return payload[:30]


@st.composite
def batches(draw: st.DrawFn, side: str) -> list[bytes]:
    return [inner_packet(draw, side) for _ in range(draw(st.integers(1, 20)))]


def mangle(datagram: bytes, how: str, where: int) -> bytes:
    if how == "replay":
        return datagram
    if how == "truncate":
        return datagram[: where % max(len(datagram), 1)]
    if how == "extend":
        return datagram + bytes([where % 256]) * 3
    data = bytearray(datagram)
    data[where % len(data)] ^= 1 << (where % 8)
    return bytes(data)


@settings(max_examples=60, deadline=None)
@given(
    rounds=st.lists(
        st.tuples(st.sampled_from("ab"), st.data()),
        min_size=1,
        max_size=5,
    ),
    damage=st.lists(
        st.tuples(st.sampled_from(["replay", "truncate", "extend", "flip"]), st.integers(0, 9999)),
        max_size=8,
    ),
)
def test_both_data_paths_put_the_same_bytes_on_the_wire_and_into_the_tun(
    rounds: list[tuple[str, st.DataObject]], damage: list[tuple[str, int]]
) -> None:
    python, native = pair()
    for side, data in rounds:
        packets = data.draw(batches(side))
        for tunnel in (python, native):
            tunnel.exchange(side, packets)
            tunnel.now += 0.5
    assert native.log == python.log
    # Malformed, truncated and replayed copies of what went over the wire: dropped and counted
    # alike on both paths (and never raising).
    sent = [d for who, kind, d in python.log if kind == "udp" and who == "a"] or [b"\x04"]
    mangled = [mangle(sent[where % len(sent)], how, where) for how, where in damage]
    for tunnel in (python, native):
        tunnel.deliver("b", mangled)
    assert native.log == python.log
    assert native.drops() == python.drops()


def test_a_long_exchange_stays_identical_and_delivers_everything() -> None:
    python, native = pair()
    sizes = [0, 1, 15, 16, 17, 1279, 1380, 1400, 1420]
    for round_number in range(30):
        side = "ab"[round_number % 2]
        me, other = ("1", "2") if side == "a" else ("2", "1")
        packets = [
            ipv4_packet(f"10.0.0.{me}", f"10.0.0.{other}", bytes([round_number]) * size)
            for size in sizes
        ]
        for tunnel in (python, native):
            tunnel.exchange(side, packets)
            tunnel.now += 1
    assert native.log == python.log
    delivered = [d for who, kind, d in native.log if kind == "tun"]
    assert len(delivered) == 30 * len(sizes)
