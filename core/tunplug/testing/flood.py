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
from typing import Any

from tunplug.testing.netns import NetNS, python_in_ns
from tunplug.wireguard import PeerConfig, WireGuardDevice
from tunplug.wireguard.constants import MESSAGE_INITIATION

#: Upper bound of datagrams one flood sends, whatever its duration.
MAX_DATAGRAMS = 50_000_000

_SENDER = """
import json, socket, sys, time
message, host, port = bytes.fromhex(sys.argv[1]), sys.argv[2], int(sys.argv[3])
seconds, source, limit = float(sys.argv[4]), sys.argv[5], int(sys.argv[6])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
sock = socket.socket(family, socket.SOCK_DGRAM)
if source:
    sock.bind((source, 0))
sock.setblocking(False)
send, target, sent = sock.sendto, (host, port), 0
start = time.monotonic()
end = start + seconds
while sent < limit:
    for _ in range(256):
        try:
            send(message, target)
            sent += 1
        except (BlockingIOError, ConnectionRefusedError):
            pass
    if time.monotonic() >= end:
        break
print(json.dumps({"sent": sent, "seconds": time.monotonic() - start}), flush=True)
"""


def valid_initiation(responder_public_key: bytes) -> bytes:
    """A handshake initiation with a valid mac1 for ``responder_public_key``, from a fresh
    key (the responder has no such peer)."""
    from tunplug_crypto_cryptography.backend import CryptographyBackend

    crypto = CryptographyBackend()
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
    source: str | None = None,
    max_datagrams: int = MAX_DATAGRAMS,
) -> subprocess.Popen[Any]:
    """Start resending ``message`` to ``target`` from ``ns`` (bound to ``source`` if given)
    for ``seconds``; :func:`flood_result` reads what it sent."""
    return python_in_ns(
        ns,
        _SENDER,
        message.hex(),
        target[0],
        str(target[1]),
        str(seconds),
        source or "",
        str(max_datagrams),
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
