"""Cost per packet of the pure-Python WireGuard device: encrypt a batch on one device, decrypt
it on the other, no sockets and no TUN.

Who runs it: anyone, without root, when changing the per-packet code of
``tunplug.wireguard`` (send, receive, routing, the inner-header reader)::

    .venv/bin/python benchmarks/device_packet.py            # about 15 seconds
    .venv/bin/python benchmarks/device_packet.py --quick    # about 3 seconds

Two devices complete a handshake in memory, then one encrypts batches of 100 UDP packets
(1,328 bytes of IPv4) and the other decrypts them, as the engine does per batch. It prints the
microseconds per packet (encrypt plus decrypt) of each repetition and their median. To compare
two versions, run both in one sitting (for another checkout, with ``PYTHONPATH`` set to its
``core`` and plugin folders) and compare the medians; the figure depends on the machine and
its load. This is where issue 15 found a 7% per-packet regression on the Python path
(docs/performance.md). Nothing in CI runs this.
"""

from __future__ import annotations

import argparse
import statistics
import time
from ipaddress import ip_network

from tunplug.testing.crypto import crypto_backend
from tunplug.testing.packets import udp
from tunplug.wireguard import PeerConfig, WireGuardDevice
from tunplug.wireguard.device import Output

NOW = 1000.0
A_ENDPOINT, B_ENDPOINT = ("192.0.2.1", 1), ("192.0.2.2", 2)


def connected_pair() -> tuple[WireGuardDevice, WireGuardDevice]:
    """Two devices with a confirmed session from ``a`` to ``b``."""
    crypto = crypto_backend()
    key_a, key_b = crypto.generate_private_key(), crypto.generate_private_key()
    a, b = WireGuardDevice(key_a, crypto), WireGuardDevice(key_b, crypto)
    a.add_peer(
        PeerConfig(
            public_key=crypto.public_key(key_b),
            endpoint=B_ENDPOINT,
            allowed_ips=(ip_network("10.0.0.2/32"),),
        )
    )
    b.add_peer(
        PeerConfig(
            public_key=crypto.public_key(key_a),
            endpoint=A_ENDPOINT,
            allowed_ips=(ip_network("10.0.0.1/32"),),
        )
    )
    a.connect()
    response = b.decrypt(_datagrams(a.tick(NOW), A_ENDPOINT), NOW)
    a.decrypt(_datagrams(response, B_ENDPOINT), NOW)
    return a, b


def _datagrams(output: Output, source: tuple[str, int]) -> list[tuple[bytes, tuple[str, int]]]:
    return [(bytes(data), source) for data, _ in output.to_network]


def measure(repetitions: int, batches: int) -> list[float]:
    """Microseconds per packet, encrypt plus decrypt, for each repetition."""
    a, b = connected_pair()
    batch = [udp("10.0.0.1", "10.0.0.2", 1000, 2000, b"x" * 1300) for _ in range(100)]
    b.decrypt(_datagrams(a.encrypt(batch, NOW), A_ENDPOINT), NOW)  # the session is confirmed
    results = []
    for _ in range(repetitions):
        delivered = 0
        started = time.perf_counter()
        for _ in range(batches):
            output = b.decrypt(_datagrams(a.encrypt(batch, NOW), A_ENDPOINT), NOW)
            delivered += len(output.to_tun)
        elapsed = time.perf_counter() - started
        if delivered != batches * len(batch):
            raise SystemExit(f"only {delivered} of {batches * len(batch)} packets arrived")
        results.append(elapsed / delivered * 1e6)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions of 100 batches")
    args = parser.parse_args()
    repetitions, batches = (3, 100) if args.quick else (7, 300)
    results = measure(repetitions, batches)
    each = " ".join(f"{value:.2f}" for value in results)
    print(f"us per packet (encrypt + decrypt): {each}; median {statistics.median(results):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
