"""A handshake flood, as an attacker who knows a public key would send it.

Who uses it: ``tests/e2e/test_flood.py`` and ``benchmarks/flood.py``. Anyone who knows a
WireGuard endpoint's public key can compute mac1, so :func:`valid_initiation` makes a real
initiation (from a throw-away key the target does not know, so it never costs the target more
than mac1 and the rate limiter); :func:`start_flood` resends it from one process in a namespace
as fast as it can, bounded in time and count, to an address inside the test's namespaces only.
The process prints ``{"sent": N, "seconds": S}`` when it ends.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from typing import Any

from tunplug.testing.netns import NetNS, python_in_ns
from tunplug.wireguard import PeerConfig, WireGuardDevice
from tunplug.wireguard.constants import MESSAGE_INITIATION

#: Upper bound of datagrams one flood sends, whatever its duration.
MAX_DATAGRAMS = 50_000_000

_SENDER = """
import itertools, json, socket, struct, sys, time
message, host, port = bytes.fromhex(sys.argv[1]), sys.argv[2], int(sys.argv[3])
seconds, limit, sources = float(sys.argv[4]), int(sys.argv[5]), sys.argv[6:]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setblocking(False)
target = (host, port)
if len(sources) == 1:
    sock.bind((sources[0], 0))
if len(sources) > 1:  # each datagram's source address chosen with IP_PKTINFO
    info = [struct.pack("i4s4s", 0, socket.inet_aton(a), bytes(4)) for a in sources]
    pktinfo = getattr(socket, "IP_PKTINFO", 8)  # linux/in.h; Python < 3.12 lacks the name
    controls = [[(socket.IPPROTO_IP, pktinfo, i)] for i in info]
    sends = [lambda c=c: sock.sendmsg([message], c, 0, target) for c in controls]
else:
    sends = [lambda: sock.sendto(message, target)]
sent = 0
start = time.monotonic()
end = start + seconds
for turn, send in enumerate(itertools.cycle(sends)):
    for _ in range(16):
        try:
            send()
            sent += 1
        except (BlockingIOError, ConnectionRefusedError):
            pass
    if sent >= limit or (turn % 64 == 0 and time.monotonic() >= end):
        break
print(json.dumps({"sent": sent, "seconds": time.monotonic() - start}), flush=True)
"""


def valid_initiation(responder_public_key: bytes) -> bytes:
    """A handshake initiation with a valid mac1 for ``responder_public_key``, from a fresh
    key (the responder has no such peer)."""
    from tunplug.testing.crypto import crypto_backend

    crypto = crypto_backend()
    device = WireGuardDevice(crypto.generate_private_key(), crypto)
    device.add_peer(PeerConfig(public_key=responder_public_key, endpoint=("192.0.2.1", 1)))
    device.connect()
    for data, _ in device.tick(0.0).to_network:
        if data[0] == MESSAGE_INITIATION:
            return bytes(data)
    raise RuntimeError("the device sent no initiation")


def start_flood(
    ns: NetNS,
    target: tuple[str, int],
    message: bytes,
    *,
    seconds: float,
    sources: Sequence[str] = (),
    max_datagrams: int = MAX_DATAGRAMS,
) -> subprocess.Popen[Any]:
    """Start resending ``message`` to ``target`` (IPv4) from ``ns`` for ``seconds``, 16 at a time
    from each of ``sources`` in turn (IPv4 addresses of ``ns``, chosen per datagram with
    ``IP_PKTINFO``; none: the system picks one); :func:`flood_result` reads what it sent.
    :func:`add_sources` gives ``ns`` many addresses for a flood from many sources."""
    return python_in_ns(
        ns,
        _SENDER,
        message.hex(),
        target[0],
        str(target[1]),
        str(seconds),
        str(max_datagrams),
        *sources,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def flood_result(process: subprocess.Popen[Any], timeout: float) -> dict[str, float]:
    """Wait for a flood to end; its datagrams sent and seconds."""
    out, err = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"the flood failed: {err.decode(errors='replace').strip()[-500:]}")
    result: dict[str, float] = json.loads(out)
    return result


def many_sources(count: int) -> list[str]:
    """``count`` addresses in 10.204.0.0/16 for :func:`add_sources`."""
    if not 0 < count <= 250 * 256:
        raise ValueError("between 1 and 64,000 sources")
    return [f"10.204.{i // 250}.{i % 250 + 1}" for i in range(count)]


def add_sources(
    ns: NetNS, device: str, sources: Sequence[str], peer: NetNS, peer_device: str
) -> None:
    """Put ``sources`` (from :func:`many_sources`) on ``device`` in ``ns`` and route them back
    from ``peer`` through ``peer_device`` (replies such as cookie replies must reach them)."""
    batch = "".join(f"addr add {address}/16 dev {device}\n" for address in sources)
    ns.run("ip", "-batch", "-", input=batch, timeout=120)
    peer.run("ip", "route", "replace", "10.204.0.0/16", "dev", peer_device)
