"""The native plane in-process, without root: a SOCK_SEQPACKET socket pair stands in for the
TUN queue (one packet per read and write, as a TUN descriptor without offloads) and UDP sockets
on 127.0.0.1 for the network. Device ``a``'s transport data goes through the plane; device ``b``
is a plain Python device reading and writing its own socket."""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.core.wireguard._fakenet import ipv4_packet, ipv6_packet
from tests.core.wireguard.test_fuzz import mangle

from tunplug.wireguard import PeerConfig, WireGuardDevice
from tunplug.wireguard.messages import padded
from tunplug_crypto_cryptography.backend import CryptographyBackend
from tunplug_fastpath import NativeAead, NativeDataPath, _native
from tunplug_fastpath.engine import push_peer

CRYPTO = CryptographyBackend()
A_IN, B_IN = "10.0.0.1", "10.0.0.2"


@dataclass
class Rig:
    a: WireGuardDevice
    b: WireGuardDevice
    plane: _native.Plane
    tun: socket.socket  # the test's end of a's "TUN queue"
    a_sock: socket.socket
    b_sock: socket.socket

    @property
    def a_addr(self) -> tuple[str, int]:
        return self.a_sock.getsockname()[:2]

    @property
    def b_addr(self) -> tuple[str, int]:
        return self.b_sock.getsockname()[:2]

    def b_receive(self, count: int) -> list[bytes]:
        got = []
        self.b_sock.settimeout(2)
        while len(got) < count:
            got.append(self.b_sock.recv(65535))
        return got

    def tun_receive(self, count: int) -> list[bytes]:
        got = []
        self.tun.settimeout(2)
        while len(got) < count:
            got.append(self.tun.recv(65535))
        return got

    def sync(self) -> None:
        changed, removed = self.a.take_changes()
        for peer_id in removed:
            self.plane.remove_peer(peer_id)
        for peer in changed:
            push_peer(self.plane, self.a, peer)


def native_device(key: bytes) -> WireGuardDevice:
    data_path = NativeDataPath()
    return WireGuardDevice(
        key,
        CRYPTO,
        transport_aead=NativeAead,
        replay_window=data_path.replay_windows(),
        reuse_send_buffer=True,
    )


@pytest.fixture
def rig() -> Iterator[Rig]:
    tun_plane, tun_test = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for sock in (a_sock, b_sock):
        sock.bind(("127.0.0.1", 0))
    tun_plane.setblocking(False)
    a_sock.setblocking(False)
    a = native_device(CRYPTO.generate_private_key())
    b = WireGuardDevice(CRYPTO.generate_private_key(), CRYPTO)
    a.add_peer(
        PeerConfig(
            b.public_key,
            endpoint=b_sock.getsockname()[:2],
            allowed_ips=(ipaddress.ip_network(f"{B_IN}/32"), ipaddress.ip_network("fd00::2/128")),
        )
    )
    b.add_peer(
        PeerConfig(
            a.public_key,
            allowed_ips=(ipaddress.ip_network(f"{A_IN}/32"), ipaddress.ip_network("fd00::1/128")),
        )
    )
    plane = _native.Plane(a_sock.fileno(), False, False, [tun_plane.fileno()], False, a.mtu)
    rig = Rig(a, b, plane, tun_test, a_sock, b_sock)
    rig.sync()
    try:
        yield rig
    finally:
        for sock in (tun_plane, tun_test, a_sock, b_sock):
            sock.close()


def handshake(rig: Rig) -> None:
    """a initiates (through Python, as the engine does with leftovers), b answers."""
    now = time.monotonic()
    first = ipv4_packet(A_IN, B_IN, b"first")
    for data, _ in rig.a.encrypt([first], now).to_network:
        rig.a_sock.sendto(bytes(data), rig.b_addr)
    [initiation] = rig.b_receive(1)
    response = rig.b.decrypt([(initiation, rig.a_addr)], now).to_network
    out = rig.a.decrypt([(bytes(d), rig.b_addr) for d, _ in response], now)
    for data, _ in out.to_network:  # the staged first packet
        rig.a_sock.sendto(bytes(data), rig.b_addr)
    [staged] = rig.b_receive(1)
    assert rig.b.decrypt([(staged, rig.a_addr)], now).to_tun == [first]
    rig.sync()


def test_packets_without_a_session_come_back_for_python(rig: Rig) -> None:
    packets = [ipv4_packet(A_IN, B_IN, bytes([i]) * 50) for i in range(3)]
    for packet in packets:
        rig.tun.send(packet)
    worker = rig.plane.outbound_worker(0)
    leftovers, sent = worker.run_once(1000)
    assert (leftovers, sent) == (packets, 0)


def test_outbound_seals_with_the_sessions_counter_and_the_peer_opens_everything(rig: Rig) -> None:
    handshake(rig)
    sizes = [0, 1, 20, 100, 1280, 1372, 1400]
    packets = [ipv4_packet(A_IN, B_IN, os.urandom(size)) for size in sizes]
    packets += [ipv6_packet("fd00::1", "fd00::2", b"six")]
    packets.append(ipv4_packet(A_IN, "10.9.9.9", b"nowhere"))  # no route: dropped, counted
    for packet in packets:
        rig.tun.send(packet)
    worker = rig.plane.outbound_worker(0)
    leftovers, sent = worker.run_once(1000)
    assert leftovers == [] and sent == len(packets) - 1
    datagrams = rig.b_receive(sent)
    # Laid out as the reference lays them out: header, counter, padded ciphertext, tag.
    assert [len(d) for d in datagrams] == [32 + len(padded(p, rig.a.mtu)) for p in packets[:-1]]
    counters = [int.from_bytes(d[8:16], "little") for d in datagrams]
    assert counters == list(range(1, 1 + sent))  # counter 0 went with the staged packet
    opened = rig.b.decrypt([(d, rig.a_addr) for d in datagrams], time.monotonic())
    assert opened.to_tun == packets[:-1]
    assert rig.plane.take_drops() == {"no-route": 1}
    [activity] = rig.plane.take_activity()
    assert activity[2] == sent and activity[1] == sum(map(len, datagrams))
    # Python continues with the next counter: the counter is shared, never reused.
    out = rig.a.encrypt([ipv4_packet(A_IN, B_IN, b"python")], time.monotonic())
    [(message, _)] = out.to_network
    assert int.from_bytes(bytes(message)[8:16], "little") == 1 + sent


def test_inbound_delivers_and_drops_what_the_reference_drops(rig: Rig) -> None:
    handshake(rig)
    now = time.monotonic()
    good = [ipv4_packet(B_IN, A_IN, bytes([i]) * (i * 40)) for i in range(1, 6)]
    spoofed = ipv4_packet("10.0.0.7", A_IN, b"not b's address")
    out = rig.b.encrypt([*good, spoofed], now)
    datagrams = [bytes(d) for d, _ in out.to_network]
    tampered = bytearray(datagrams[0])
    tampered[40] ^= 1
    garbage = [
        b"",
        b"\x04\x00\x00\x00",
        bytes(tampered),
        b"\x01" + bytes(147),  # an initiation-sized message: Python's to judge
        b"\x04\x00\x00\x00" + bytes(28),  # transport to an unknown index: Python's too
    ]
    for data in [*datagrams, datagrams[1], *garbage]:  # datagrams[1] twice: a replay
        rig.b_sock.sendto(data, rig.a_addr)
    worker = rig.plane.inbound_worker()
    control: list[tuple[bytes, tuple[str, int]]] = []
    delivered = 0
    deadline = time.monotonic() + 3
    while delivered + len(control) < len(good) + 3 and time.monotonic() < deadline:
        count, _, _ = worker.run_once(200)
        control += rig.plane.take_control(100)
        delivered += count
    assert delivered == len(good)
    assert rig.tun_receive(len(good)) == good
    assert sorted(data for data, _ in control) == sorted(
        [b"", b"\x04\x00\x00\x00", b"\x01" + bytes(147), b"\x04\x00\x00\x00" + bytes(28)]
    )
    assert all(source == rig.b_addr for _, source in control)
    drops = rig.plane.take_drops()
    assert drops == {"replay": 1, "decrypt-failed": 1, "not-allowed-source": 1}
    # What came back is judged by the device exactly as on the Python path.
    before = sum(rig.a.drops.values())
    assert rig.a.decrypt(control, now).to_tun == []
    assert sum(rig.a.drops.values()) == before + len(control)


def test_a_removed_peer_is_no_longer_routed(rig: Rig) -> None:
    handshake(rig)
    rig.a.remove_peer(rig.b.public_key)
    rig.sync()
    rig.tun.send(ipv4_packet(A_IN, B_IN, b"x"))
    leftovers, sent = rig.plane.outbound_worker(0).run_once(1000)
    assert (leftovers, sent) == ([], 0)
    assert rig.plane.take_drops() == {"no-route": 1}


@st.composite
def mangled_datagrams(draw: st.DrawFn, originals: list[bytes]) -> bytes:
    return mangle(draw, draw(st.sampled_from(originals)))


def test_mangled_datagrams_are_dropped_and_counted_or_handed_to_python(rig: Rig) -> None:
    """Every mangled or replayed datagram is delivered never, and is either counted as a drop
    by the plane or handed back to Python, which counts it; nothing raises."""
    handshake(rig)
    now = time.monotonic()
    packets = [ipv4_packet(B_IN, A_IN, bytes([i]) * (10 + i)) for i in range(8)]
    originals = [bytes(d) for d, _ in rig.b.encrypt(packets, now).to_network]
    for data in originals:  # deliver them once: every later copy is a replay
        rig.b_sock.sendto(data, rig.a_addr)
    worker = rig.plane.inbound_worker()
    delivered = 0
    while delivered < len(originals):
        count, _, _ = worker.run_once(1000)
        delivered += count
    assert rig.tun_receive(len(originals)) == packets
    rig.plane.take_drops()

    runs = []

    @settings(max_examples=150, deadline=None)
    @given(batch=st.lists(mangled_datagrams(originals), min_size=1, max_size=12))
    def check(batch: list[bytes]) -> None:
        runs.append(len(batch))
        for data in batch:
            rig.b_sock.sendto(data, rig.a_addr)
        control: list[tuple[bytes, tuple[str, int]]] = []
        drops: Counter[str] = Counter()
        deadline = time.monotonic() + 3
        while len(control) + drops.total() < len(batch) and time.monotonic() < deadline:
            count, _, _ = worker.run_once(100)
            assert count == 0  # nothing mangled or replayed reaches the device
            control += rig.plane.take_control(100)
            drops.update(rig.plane.take_drops())
        assert len(control) + sum(drops.values()) == len(batch)
        assert set(drops) <= {"decrypt-failed", "replay"}
        before = sum(rig.a.drops.values())
        assert rig.a.decrypt(control, time.monotonic()).to_tun == []
        assert sum(rig.a.drops.values()) == before + len(control)

    check()
    assert len(runs) >= 100, runs


def test_a_handshake_flood_fills_the_bounded_queue_not_the_data_path(rig: Rig) -> None:
    """Datagrams for Python wait in a queue of CONTROL_QUEUE (4096, wireguard-go's handshake
    queue); beyond it they are dropped and counted, while transport data is still delivered."""
    handshake(rig)
    now = time.monotonic()
    junk = b"\x01\x00\x00\x00" + bytes(144)  # initiation-sized: for Python to judge
    worker = rig.plane.inbound_worker()
    told = 0
    for _ in range(60):  # in chunks the socket buffer holds: the plane must see them all
        for _ in range(100):
            rig.b_sock.sendto(junk, rig.a_addr)
        _, _, ready = worker.run_once(10)
        told += ready
    packet = ipv4_packet(B_IN, A_IN, b"data during the flood")
    [(data, _)] = rig.b.encrypt([packet], now).to_network
    rig.b_sock.sendto(bytes(data), rig.a_addr)
    delivered = 0
    deadline = time.monotonic() + 3
    while not delivered and time.monotonic() < deadline:
        delivered, _, _ = worker.run_once(100)
    assert delivered == 1 and rig.tun_receive(1) == [packet]
    assert told == 1  # Python is told once, until it empties the queue
    queued = rig.plane.take_control(10_000)
    drops = rig.plane.take_drops()
    assert len(queued) == 4096
    assert drops.get("handshake-queue-full", 0) + len(queued) <= 6000
    assert drops["handshake-queue-full"] > 0
    # Emptied: the next datagram for Python is announced again.
    rig.b_sock.sendto(junk, rig.a_addr)
    assert worker.run_once(1000)[2] is True
