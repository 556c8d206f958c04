"""The WireGuard datagram path and handshake responder: :meth:`WireGuardDevice.decrypt` on a
device ``D`` with one peer ``P``.

Every input starts from a fresh ``D`` (fixed keys, seeded randomness, fixed clocks) that has
just sent ``P`` an initiation, so the same input always meets the same state. The input is one
config byte, then records ``op, n, payload[n]``:

* ``op & 7`` is what to feed: 0 ``payload`` as a raw datagram; 1-5 a valid message from ``P``
  (its initiation, its response to ``D``'s initiation, a cookie reply to it, transport data on
  the session that response makes, transport data on the session ``D``'s response to ``P``'s
  initiation makes), changed by ``payload`` (``payload[0]`` an offset, the rest XORed in from
  there, growing the message past its end); 6 advance the clock and run the timers; 7 an IP
  packet from the TUN device (``D.encrypt``), so that sessions carry data both ways;
* ``0x08``: keep the changed mac1 (otherwise it is recomputed, as anyone who knows ``D``'s
  public key can, so that changes reach the handshake code behind it);
* ``0x10``: cut the message at the offset instead of XORing;
* ``0x60``: which source endpoint it comes from (v4, another v4, a 4-tuple v6, another port);
* ``0x80``: same ``decrypt`` batch as the previous record.

Config byte: ``0x01`` ``D`` is under load from the start (cookie replies, mac2 needed),
``0x02`` ``D`` does not initiate first.

Contract: ``decrypt`` documents no exception (a device counts drops by reason instead of
raising), so nothing is handled. Checked on every call: outputs are well-formed messages to
2-tuple endpoints, no call counts more drops than it got datagrams, and every packet delivered to
the TUN device has a source address in ``P``'s AllowedIPs (cryptokey routing).
"""

from __future__ import annotations

import functools
import ipaddress
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from tunplug.wireguard import Endpoint, Output, PeerConfig, WireGuardDevice
from tunplug.wireguard.constants import LABEL_MAC1, MAC_SIZE
from tunplug_crypto_cryptography.backend import CryptographyBackend

HANDLED: tuple[type[BaseException], ...] = ()

CRYPTO = CryptographyBackend()
D_KEY = bytes(range(1, 33))
P_KEY = bytes(range(101, 133))
D_ADDR: Endpoint = ("192.0.2.1", 51820)
P_ADDR: Endpoint = ("198.51.100.2", 51821)
D_INNER = ("10.0.0.1", "fd00::1")
P_INNER = ("10.0.0.2", "fd00::2")
#: Where datagrams claim to come from (``op & 0x60``); a 4-tuple as a v6 socket reports it.
SOURCES: tuple[tuple[str | int, ...], ...] = (
    P_ADDR,
    ("203.0.113.7", 4500),
    ("2001:db8::2", 51821, 0, 0),
    ("198.51.100.2", 1),
)
START = 1000.0
WALL_CLOCK = 1_700_000_000.0
_P_ALLOWED = {ipaddress.ip_address(a) for a in P_INNER}


def ipv4_packet(source: str, destination: str, payload: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        0,
        0,
        64,
        17,
        0,
        ipaddress.IPv4Address(source).packed,
        ipaddress.IPv4Address(destination).packed,
    )
    return header + payload


def _device(key: bytes, seed: int, **options: int) -> WireGuardDevice:
    return WireGuardDevice(
        key,
        CRYPTO,
        random=random.Random(seed).randbytes,
        wall_clock=lambda: WALL_CLOCK,
        **options,  # type: ignore[arg-type]
    )


def _peer(key: bytes, endpoint: Endpoint, inner: tuple[str, str]) -> PeerConfig:
    return PeerConfig(
        CRYPTO.public_key(key),
        endpoint=endpoint,
        allowed_ips=(
            ipaddress.ip_network(f"{inner[0]}/32"),
            ipaddress.ip_network(f"{inner[1]}/128"),
        ),
    )


def device_d(under_load: bool = False, initiate: bool = True) -> WireGuardDevice:
    """``D``, with ``P`` as its peer, after sending its first initiation (always the same)."""
    device = _device(D_KEY, 1, **({"under_load_threshold": 0} if under_load else {}))
    device.add_peer(_peer(P_KEY, P_ADDR, P_INNER))
    if initiate:
        device.encrypt([ipv4_packet(D_INNER[0], P_INNER[0], b"first")], START)
    return device


def _device_p(seed: int, **options: int) -> WireGuardDevice:
    device = _device(P_KEY, seed, **options)
    device.add_peer(_peer(D_KEY, D_ADDR, D_INNER))
    return device


def _only(output: Output, kind: int) -> bytes:
    [message] = [bytes(data) for data, _ in output.to_network if data[0] == kind]
    return message


@dataclass(frozen=True)
class Messages:
    """Valid messages from ``P`` to a fresh :func:`device_d`, made once."""

    initiation: bytes
    response: bytes
    cookie_reply: bytes
    transport: bytes
    transport_after_initiation: bytes

    def templates(self) -> tuple[bytes, ...]:
        return (
            self.initiation,
            self.response,
            self.cookie_reply,
            self.transport,
            self.transport_after_initiation,
        )


@functools.cache
def messages() -> Messages:
    d = device_d(initiate=False)
    first = ipv4_packet(D_INNER[0], P_INNER[0], b"first")
    d_initiation = _only(d.encrypt([first], START), 1)
    p = _device_p(2)
    response = _only(p.decrypt([(d_initiation, D_ADDR)], START), 2)
    cookie_reply = _only(
        _device_p(3, under_load_threshold=0).decrypt([(d_initiation, D_ADDR)], START), 3
    )
    out = d.decrypt([(response, P_ADDR)], START)
    p.decrypt([(bytes(m), D_ADDR) for m, _ in out.to_network], START)
    transport = _only(p.encrypt([ipv4_packet(P_INNER[0], D_INNER[0], b"data from P")], START), 4)

    q = _device_p(4)
    initiation = _only(q.encrypt([ipv4_packet(P_INNER[0], D_INNER[0], b"staged")], START), 1)
    d_response = _only(device_d().decrypt([(initiation, P_ADDR)], START), 2)
    after = _only(q.decrypt([(d_response, D_ADDR)], START), 4)
    return Messages(initiation, response, cookie_reply, transport, after)


@functools.cache
def _mac1_key() -> bytes:
    return CRYPTO.hash(LABEL_MAC1 + CRYPTO.public_key(D_KEY))


def derive(template: bytes, op: int, payload: bytes) -> bytes:
    """``template`` changed as record ``op`` says (see the module docstring)."""
    data = bytearray(template)
    if payload:
        offset = payload[0] % (len(data) + 1)
        if op & 0x10:
            del data[offset:]
        else:
            for i, byte in enumerate(payload[1:], start=offset):
                if i < len(data):
                    data[i] ^= byte
                else:
                    data.append(byte)
    if not op & 0x08 and template[0] in (1, 2) and len(data) == len(template):
        start = len(data) - 2 * MAC_SIZE
        data[start : start + MAC_SIZE] = CRYPTO.mac(_mac1_key(), bytes(data[:start]))
    return bytes(data)


def records(data: bytes) -> list[tuple[int, bytes]]:
    found = []
    offset = 0
    while offset + 2 <= len(data):
        op, size = data[offset], data[offset + 1]
        found.append((op, data[offset + 2 : offset + 2 + size]))
        offset += 2 + size
    return found


def _check(output: Output, datagrams: int, drops_before: int, device: WireGuardDevice) -> None:
    for message, destination in output.to_network:
        assert len(message) >= 32 and message[0] in (1, 2, 3, 4) and not any(message[1:4])
        assert len(destination) == 2
        assert isinstance(destination[0], str) and isinstance(destination[1], int)
    for packet in output.to_tun:
        source = packet[12:16] if packet[0] >> 4 == 4 else packet[8:24]
        assert ipaddress.ip_address(bytes(source)) in _P_ALLOWED, packet.hex()
    assert sum(device.drops.values()) - drops_before <= datagrams


def test_one_input(data: bytes) -> None:
    config = data[0] if data else 0
    device = device_d(under_load=bool(config & 1), initiate=not config & 2)
    templates = messages().templates()
    now = START
    batch: list[tuple[bytes, tuple[str | int, ...]]] = []

    def flush() -> None:
        if batch:
            before = sum(device.drops.values())
            datagrams: Sequence[tuple[bytes, Endpoint]] = batch  # type: ignore[assignment]
            _check(device.decrypt(datagrams, now), len(batch), before, device)
            batch.clear()

    for op, payload in records(data[1:]):
        kind = op & 7
        if not op & 0x80 or kind >= 6:
            flush()
        if kind == 6:
            now += (payload[0] if payload else 1) * (10 if op & 0x08 else 1)
            _check(device.tick(now), 0, sum(device.drops.values()), device)
        elif kind == 7:
            before = sum(device.drops.values())
            device.encrypt([ipv4_packet(D_INNER[0], P_INNER[0], payload)], now)
            assert sum(device.drops.values()) - before <= 1
        else:
            message = payload if kind == 0 else derive(templates[kind - 1], op, payload)
            batch.append((message, SOURCES[(op >> 5) & 3]))
    flush()
