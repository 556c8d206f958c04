"""The kernel socket filter for handshake floods, on real sockets over loopback: a blocked
source's handshakes are dropped (but a sample), its transport data and everyone else's pass,
and removing the block lets everything through again. Linux only (socket filters)."""

from __future__ import annotations

import socket
import sys
import time
from ipaddress import IPv4Address, IPv6Address

import pytest

from tunplug import socket_filter
from tunplug.transport import UdpTransport
from tunplug.wireguard.flood import FloodFilter

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux filters")

HANDSHAKE = b"\x01\x00\x00\x00" + bytes(144)
COOKIE = b"\x03\x00\x00\x00" + bytes(60)
TRANSPORT = b"\x04\x00\x00\x00" + bytes(28)
NEVER = 2**32  # sample one in 2**32: in practice never


def drain(sock: socket.socket) -> list[tuple[bytes, str]]:
    got: list[tuple[bytes, str]] = []
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        try:
            data, address = sock.recvfrom(2048)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        got.append((data, str(address[0]).removeprefix("::ffff:")))
    return got


def sender(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


@pytest.fixture
def receiver() -> UdpTransport:
    transport = UdpTransport.bind(0, offloads=False)  # [::], IPv4 and IPv6
    yield transport
    transport._sock.close()


def send_all(receiver: UdpTransport, host: str, *messages: bytes) -> None:
    port = receiver.local_endpoint[1]
    with sender(host) as sock:
        for message in messages:
            sock.sendto(message, ("::1" if ":" in host else "127.0.0.1", port))


def test_a_blocked_ipv4_source_loses_its_handshakes_but_not_its_data(receiver):
    sock = receiver._sock
    blocked = frozenset({IPv4Address("127.0.0.2").packed})
    assert receiver.block_handshakes(FloodFilter(blocked, NEVER))
    send_all(receiver, "127.0.0.2", HANDSHAKE, COOKIE, TRANSPORT)
    send_all(receiver, "127.0.0.3", HANDSHAKE, TRANSPORT)
    got = drain(sock)
    assert sorted(got) == sorted(
        [(TRANSPORT, "127.0.0.2"), (HANDSHAKE, "127.0.0.3"), (TRANSPORT, "127.0.0.3")]
    )
    assert receiver.block_handshakes(FloodFilter())  # unblocked: everything passes again
    send_all(receiver, "127.0.0.2", HANDSHAKE)
    assert drain(sock) == [(HANDSHAKE, "127.0.0.2")]


def test_an_ipv6_source_is_blocked_by_its_64(receiver):
    prefix = IPv6Address("::1").packed[:8]
    assert receiver.block_handshakes(
        FloodFilter(frozenset({prefix, IPv4Address("127.0.0.9").packed}), NEVER)
    )
    send_all(receiver, "::1", HANDSHAKE, TRANSPORT)
    send_all(receiver, "127.0.0.1", HANDSHAKE)  # IPv4 on the same socket: not blocked
    assert sorted(drain(receiver._sock)) == sorted([(TRANSPORT, "::1"), (HANDSHAKE, "127.0.0.1")])


def test_one_in_n_of_a_blocked_sources_handshakes_still_arrives(receiver):
    assert receiver.block_handshakes(FloodFilter(frozenset({IPv4Address("127.0.0.2").packed}), 4))
    send_all(receiver, "127.0.0.2", *[HANDSHAKE] * 400)
    arrived = len(drain(receiver._sock))
    assert 40 < arrived < 200  # binomial(400, 1/4): mean 100, sd 8.7


def test_under_a_spread_flood_everyones_handshakes_are_sampled_but_data_passes(receiver):
    assert receiver.block_handshakes(FloodFilter(others_one_in=4))
    send_all(receiver, "127.0.0.5", *[HANDSHAKE] * 400, *[TRANSPORT] * 50)
    got = drain(receiver._sock)
    assert sum(data == TRANSPORT for data, _ in got) == 50
    assert 40 < sum(data == HANDSHAKE for data, _ in got) < 200


def test_the_program_refuses_bad_sources_and_grows_within_the_kernel_limit():
    with pytest.raises(ValueError, match="4-byte"):
        socket_filter.guard_program({b"\x01\x02"}, 256)
    many = {i.to_bytes(4, "big") for i in range(1000)}
    assert len(socket_filter.guard_program(many, 256)) <= socket_filter.MAX_INSTRUCTIONS
    with pytest.raises(ValueError, match="at most 4096"):
        socket_filter.guard_program({i.to_bytes(4, "big") for i in range(3000)}, 256)
