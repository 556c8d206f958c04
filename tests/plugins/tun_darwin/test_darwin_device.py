"""DarwinUtunTun over a Unix socket pair: framing on the wire, drops, errors, routes.

The device end of the pair stands in for the utun control socket, the other end for the
kernel. Nothing here has run on macOS.
"""

from __future__ import annotations

import errno
import socket
import sys
from ipaddress import ip_interface, ip_network

import anyio
import pytest

from tunplug.exceptions import BackendUnavailable, ClosedResource, TunError
from tunplug.testing.contract import make_packets, receive
from tunplug.tun import TunOptions
from tunplug_tun_darwin.device import DarwinUtunTun

pytestmark = pytest.mark.anyio


class Pair:
    def __init__(self, device_socket=None, **options):
        if device_socket is None:
            device_socket, self.kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        else:
            device_socket, self.kernel = device_socket
        self.kernel.settimeout(5)
        self.commands = []
        self.failing = set()
        self.tun = DarwinUtunTun(
            device_socket, name="utun3", options=TunOptions(**options), run=self.run
        )

    def run(self, argv):
        self.commands.append(list(argv))
        if any(word in argv for word in self.failing):
            return 1, "route: writing to routing socket: File exists"
        return 0, ""

    def close(self):
        self.kernel.close()


@pytest.fixture
async def pair():
    made = Pair(batch_size=8, addresses=(ip_interface("10.3.0.2/24"),))
    async with made.tun:
        yield made
    made.close()


async def test_packets_cross_with_the_family_header_of_their_version(pair):
    v4 = make_packets(1)[0]
    v6 = bytes([0x60]) + bytes(59)
    await pair.tun.send_ready()
    pair.tun.send([v4, memoryview(v6)])
    assert pair.kernel.recv(200) == b"\x00\x00\x00\x02" + v4
    assert pair.kernel.recv(200) == b"\x00\x00\x00\x1e" + v6
    pair.kernel.send(b"\x00\x00\x00\x1e" + v6)
    pair.kernel.send(b"\x00\x00\x00\x02" + v4)
    assert await receive(pair.tun, 2) == [v6, v4]
    assert pair.tun.stats()["tx_packets"] == pair.tun.stats()["rx_packets"] == 2


async def test_frames_with_bad_headers_are_dropped_and_counted(pair):
    good = make_packets(1)[0]
    for bad in (b"", b"\x00\x00\x00\x0a" + good, b"\x00\x00\x00\x1e" + good):
        pair.kernel.send(bad)
    pair.kernel.send(b"\x00\x00\x00\x02" + good)
    assert await receive(pair.tun, 1) == [good]
    assert pair.tun.drops == {"rx_bad_header": 3}


async def test_non_ip_packets_are_not_written_and_are_counted(pair):
    good = make_packets(1)[0]
    pair.tun.send([b"", b"\x10junk", good])
    assert pair.kernel.recv(200) == b"\x00\x00\x00\x02" + good
    assert pair.tun.drops == {"tx_not_ip": 2}


class FlakySocket(socket.socket):
    """Answers sendmsg with the errors queued in ``errors`` before sending for real."""

    errors: list[int]

    def sendmsg(self, buffers, *args):
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, errno.errorcode[code])
        return super().sendmsg(buffers, *args)


def flaky_pair(errors):
    device, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    flaky = FlakySocket(device.family, device.type, device.proto, fileno=device.detach())
    flaky.errors = list(errors)
    return flaky, kernel


async def test_enobufs_holds_packets_back_until_the_kernel_takes_them():
    made = Pair(flaky_pair([errno.ENOBUFS] * 3), batch_size=8)
    async with made.tun as tun:
        sent = make_packets(4)
        tun.send(sent)  # the first write meets ENOBUFS: all four wait in order
        with anyio.fail_after(5):
            await tun.send_ready()  # polls until the "kernel" has room again
        got = [made.kernel.recv(200)[4:] for _ in sent]
        assert got == sent
        assert tun.drops == {}
    made.close()


async def test_a_packet_the_kernel_rejects_is_dropped_and_counted_the_rest_go_on():
    made = Pair(flaky_pair([errno.EINVAL]), batch_size=8)
    async with made.tun as tun:
        sent = make_packets(3)
        tun.send(sent)
        assert [made.kernel.recv(200)[4:] for _ in range(2)] == sent[1:]
        assert tun.drops == {"write_einval": 1}
    made.close()


async def test_a_vanished_peer_closes_the_device_for_writers(pair):
    pair.kernel.close()
    with pytest.raises(ClosedResource, match="was the device removed") as caught:
        pair.tun.send(make_packets(1))
    assert caught.value.errno == errno.ECONNREFUSED
    with pytest.raises(ClosedResource):
        await pair.tun.send_ready()


async def test_add_routes_skips_own_and_known_networks_and_rolls_back(pair):
    await pair.tun.add_routes([ip_network("10.3.0.0/24"), ip_network("10.4.0.0/16")])
    await pair.tun.add_routes([ip_network("10.4.0.0/16"), ip_network("fd04::/64")])
    assert pair.tun.routes == [ip_network("10.4.0.0/16"), ip_network("fd04::/64")]
    assert pair.commands == [
        ["route", "-q", "-n", "add", "-inet", "10.4.0.0/16", "-interface", "utun3"],
        ["route", "-q", "-n", "add", "-inet6", "fd04::/64", "-interface", "utun3"],
    ]
    pair.commands.clear()
    pair.failing.add("10.6.0.0/16")
    with pytest.raises(TunError, match=r"add the route to 10\.6\.0\.0/16: .*File exists"):
        await pair.tun.add_routes([ip_network("10.5.0.0/16"), ip_network("10.6.0.0/16")])
    assert [c[3:6] for c in pair.commands] == [
        ["add", "-inet", "10.5.0.0/16"],
        ["add", "-inet", "10.6.0.0/16"],
        ["delete", "-inet", "10.5.0.0/16"],
    ]
    assert pair.tun.routes == [ip_network("10.4.0.0/16"), ip_network("fd04::/64")]


async def test_create_off_macos_is_unavailable():
    assert DarwinUtunTun.unavailable_reason() == "runs on macOS only"
    with pytest.raises(BackendUnavailable, match="darwin: runs on macOS only"):
        await DarwinUtunTun.create(TunOptions())


async def test_a_name_that_is_not_utun_n_is_refused_before_anything_opens(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(TunError, match="named utunN"):
        await DarwinUtunTun.create(TunOptions(name="tunplug0"))


def test_description_is_honest_about_testing():
    assert "never run on real macOS" in (DarwinUtunTun.caveat or "")
