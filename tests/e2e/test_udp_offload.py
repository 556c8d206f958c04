"""UDP GSO and GRO across a veth pair: bursts leave as few big sends and arrive as few reads.

Two fresh namespaces joined by veth (10.203.0.1/24 and 10.203.0.2/24); a sender
``UdpTransport`` runs in one, a receiver in the other, and traffic goes only between those two
addresses. Root only; in CI a skip fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tunplug.testing.netns import NetNS, python_in_ns, veth_pair

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(sys.platform != "linux", reason="UDP GSO/GRO are Linux features"),
]

SENDER, RECEIVER, PORT = "10.203.0.1", "10.203.0.2", 51999
BURSTS, PER_BURST, SIZE = 20, 100, 1452  # WireGuard's datagram for a 1420-byte inner MTU

RECEIVE = """
import json, sys, anyio
from tunplug.transport import UdpTransport

async def main():
    count = int(sys.argv[2])
    async with UdpTransport.bind(int(sys.argv[1]), sys.argv[3]) as transport:
        print("ready", flush=True)
        payloads = []
        with anyio.move_on_after(30):
            while len(payloads) < count:
                payloads += [data for data, _ in await transport.recv_many(100)]
        print(json.dumps({
            "in_order": payloads == [i.to_bytes(4, "big").ljust(len(payloads[0]), b"\\xab")
                                     for i in range(len(payloads))] if payloads else True,
            "received": len(payloads),
            "stats": transport.stats().as_dict(),
        }), flush=True)

anyio.run(main)
"""

SEND = """
import json, sys, anyio
from tunplug.transport import UdpTransport

CSUM_OFF = sys.argv[6] == "1"

def tx_checksum_off(ifname):
    # ETHTOOL_STXCSUM through SIOCETHTOOL: without transmit checksum offload the kernel
    # refuses GSO sends with EIO (udp_send_skb), the case wireguard-go falls back on.
    import ctypes, fcntl, socket, struct
    value = ctypes.create_string_buffer(struct.pack("II", 0x17, 0))
    request = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(40, b"\\0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, 0x8946, request)

async def main():
    host, port, bursts, per_burst, size = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
    if CSUM_OFF:
        tx_checksum_off("veth-s")
    async with UdpTransport.bind(0, host) as transport:
        target = (sys.argv[7], port)
        for burst in range(bursts):
            await transport.send_many([
                ((burst * per_burst + i).to_bytes(4, "big").ljust(size, b"\\xab"), target)
                for i in range(per_burst)
            ])
            await anyio.sleep(0.01)  # let the receiver keep up: this checks counts, not speed
        print(json.dumps(transport.stats().as_dict()), flush=True)

anyio.run(main)
"""


@pytest.fixture
def namespaces() -> Iterator[tuple[NetNS, NetNS]]:
    with NetNS() as sender, NetNS() as receiver:
        veth_pair(
            sender, receiver, f"{SENDER}/24", f"{RECEIVER}/24", name_a="veth-s", name_b="veth-r"
        )
        yield sender, receiver


def run_burst(namespaces: tuple[NetNS, NetNS], *, checksum_off: bool) -> tuple[dict, dict]:
    sender_ns, receiver_ns = namespaces
    count = BURSTS * PER_BURST
    receiver = python_in_ns(
        receiver_ns, RECEIVE, str(PORT), str(count), RECEIVER,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert receiver.stdout is not None
    assert receiver.stdout.readline().strip() == "ready", receiver.stderr
    sender = python_in_ns(
        sender_ns, SEND, SENDER, str(PORT), str(BURSTS), str(PER_BURST), str(SIZE),
        "1" if checksum_off else "0", RECEIVER,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    sent_out, sent_err = sender.communicate(timeout=60)
    assert sender.returncode == 0, sent_err
    received_out, received_err = receiver.communicate(timeout=60)
    assert receiver.returncode == 0, received_err
    return json.loads(sent_out), json.loads(received_out)


def test_a_burst_crosses_veth_as_gso_sends_and_gro_reads(namespaces):
    sent, received = run_burst(namespaces, checksum_off=False)
    assert sent["gso_enabled"] and received["stats"]["gro_enabled"], (sent, received)
    count = BURSTS * PER_BURST
    assert received["received"] == count and received["in_order"], received
    assert sent["gso_sends"] > 0 and sent["gso_fallbacks"] == 0
    assert sent["send_calls"] < count // 10  # about 3 sends per burst of 100
    assert received["stats"]["gro_reads"] > 0
    assert received["stats"]["recv_calls"] < count


def test_without_transmit_checksum_offload_nothing_is_lost(namespaces):
    # Kernels before 6.11 refuse such GSO sends with EIO: the transport falls back for good.
    # Later ones ("udp: Allow GSO transmit from devices with no checksum offload") checksum
    # in software and GSO keeps working.
    sent, received = run_burst(namespaces, checksum_off=True)
    count = BURSTS * PER_BURST
    assert received["received"] == count and received["in_order"], received
    if sent["gso_fallbacks"]:
        assert not sent["gso_enabled"] and sent["gso_fallbacks"] == 1, sent
        assert sent["gso_sends"] == 0 and sent["send_calls"] == count
    else:
        assert sent["gso_enabled"] and sent["gso_sends"] > 0, sent
