"""Contract harnesses of tunplug's own backends (the fake one is in tunplug.testing.contract).

- :class:`LinuxMqHarness`: a real kernel TUN device created inside a throw-away network
  namespace (root only). The device's descriptor is opened by a short-lived thread that has
  joined the namespace, so the device lives there, never in the host namespace; packets go in
  and come out through packet sockets bound to it, opened the same way.
- :class:`WintunFakeHarness`: :class:`~tunplug_tun_wintun.device.WintunTun` over the fake
  wintun.dll of :mod:`tunplug_tun_wintun.testing`.
- :class:`DarwinSocketpairHarness`: :class:`~tunplug_tun_darwin.device.DarwinUtunTun` over
  one end of an ``AF_UNIX``/``SOCK_DGRAM`` socket pair; the other end is the "kernel".
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio

from tunplug.testing.contract import TunHarness
from tunplug.testing.netns import NetNS
from tunplug.tun import Tun, TunOptions
from tunplug_tun_darwin._utun import decode, encode
from tunplug_tun_darwin.device import DarwinUtunTun
from tunplug_tun_wintun._wintun import WINTUN_MIN_RING_CAPACITY
from tunplug_tun_wintun.device import WintunTun
from tunplug_tun_wintun.testing import FakeWindows

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
READ_SIZE = 65535 + 4


def in_netns(ns: NetNS, function: Callable[[], T]) -> T:
    """Run ``function`` in a new thread that first joins ``ns``'s network namespace.

    Devices and sockets it creates belong to that namespace; the calling thread (and the
    rest of the process) stays where it is, and the helper thread ends afterwards.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns into {ns.name}: {os.strerror(code)}")
            finally:
                os.close(fd)
            outcome["value"] = function()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"join-{ns.name}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


class LinuxMqHarness(TunHarness):
    """A linux-mq device in its own namespace; packet sockets play the kernel's side."""

    backpressure_unsupported = (
        "a kernel TUN device takes every write (the stack queues or drops the packet), so "
        "the OS side cannot be made to stop draining and send_ready never stays blocked"
    )
    device_name = "tpc0"

    def __init__(self) -> None:
        self.ns = NetNS(prefix="tpc-")
        self._entered = False
        self._sockets: list[socket.socket] = []

    async def open(self, options: TunOptions) -> Tun:
        from tunplug_tun_linux_mq import LinuxMultiQueueTun
        from tunplug_tun_linux_mq._open import open_queues

        await anyio.to_thread.run_sync(self._enter_namespace)
        name = self.device_name
        _, fds, _ = await anyio.to_thread.run_sync(
            in_netns, self.ns, lambda: open_queues(name, 1, False)
        )
        try:
            await anyio.to_thread.run_sync(self._configure, options.mtu)
            self._capture, self._injector = await anyio.to_thread.run_sync(
                in_netns, self.ns, self._packet_sockets
            )
            return LinuxMultiQueueTun(fds, name=name, options=options)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    def _enter_namespace(self) -> None:
        self.ns.__enter__()
        self._entered = True
        # No IPv6 on new devices: no router solicitations or MLD reports appear on the device.
        self.ns.run("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        self.ns.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")

    def _configure(self, mtu: int) -> None:
        self.ns.run("ip", "link", "set", self.device_name, "mtu", str(mtu), "up")

    def _packet_sockets(self) -> tuple[socket.socket, socket.socket]:
        capture = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        self._sockets.append(capture)
        capture.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        capture.bind((self.device_name, ETH_P_ALL))
        capture.setblocking(False)
        injector = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        self._sockets.append(injector)
        return capture, injector

    async def inject(self, packets: Sequence[bytes]) -> None:
        # Sent out of the device by the kernel, so its reader gets them, byte for byte.
        for packet in packets:
            self._injector.sendto(packet, (self.device_name, ETH_P_IP))

    async def delivered(self, count: int) -> list[bytes]:
        got: list[bytes] = []
        while len(got) < count:
            try:
                data, address = self._capture.recvfrom(READ_SIZE)
            except BlockingIOError:
                await anyio.wait_readable(self._capture)
                continue
            if address[2] != PACKET_OUTGOING:
                got.append(data)
        return got

    def released(self) -> bool:
        return self.ns.run("ip", "link", "show", self.device_name, check=False).returncode != 0

    async def aclose(self) -> None:
        for sock in self._sockets:
            sock.close()
        if self._entered:
            await anyio.to_thread.run_sync(self.ns.close)


class WintunFakeHarness(TunHarness):
    """WintunTun over the fake wintun.dll, with the smallest ring WinTun allows (128 KiB)."""

    adapter_name = "wt-contract"

    def __init__(self) -> None:
        self.fake = FakeWindows()

    async def open(self, options: TunOptions) -> Tun:
        return await WintunTun.open(
            dataclasses.replace(options, name=self.adapter_name),
            api=self.fake.api(),
            ring_capacity=WINTUN_MIN_RING_CAPACITY,
        )

    async def inject(self, packets: Sequence[bytes]) -> None:
        pending = list(packets)
        while pending:
            del pending[: self.fake.inject(self.adapter_name, pending)]
            if pending:
                await anyio.sleep(0.001)  # the receive ring is full: let the device drain

    async def delivered(self, count: int) -> list[bytes]:
        got: list[bytes] = []
        while len(got) < count:
            got += self.fake.take_sent(self.adapter_name, count - len(got))
            if len(got) < count:
                await anyio.sleep(0.001)
        return got

    def released(self) -> bool:
        # The adapter is gone and the device closed its quit event.
        return self.adapter_name not in self.fake.adapters and self.fake.open_events == 0


class DarwinSocketpairHarness(TunHarness):
    """DarwinUtunTun over a socket pair; the device end has a small send buffer, so it fills."""

    #: The device end's SO_SNDBUF (Linux doubles it): a few dozen datagrams in flight.
    send_buffer = 4096

    def __init__(self) -> None:
        self.device_end, self.os_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.device_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        self.os_end.setblocking(False)
        self.commands: list[list[str]] = []

    async def open(self, options: TunOptions) -> Tun:
        return DarwinUtunTun(self.device_end, name="utun9", options=options, run=self._run)

    def _run(self, argv: Sequence[str]) -> tuple[int, str]:
        self.commands.append(list(argv))
        return 0, ""

    async def inject(self, packets: Sequence[bytes]) -> None:
        for packet in packets:
            while True:
                try:
                    self.os_end.send(encode(packet))
                    break
                except BlockingIOError:
                    await anyio.wait_writable(self.os_end)

    async def delivered(self, count: int) -> list[bytes]:
        got: list[bytes] = []
        while len(got) < count:
            try:
                frame = self.os_end.recv(READ_SIZE)
            except BlockingIOError:
                await anyio.wait_readable(self.os_end)
                continue
            packet = decode(frame)
            assert packet is not None, f"the device wrote a frame with a bad header: {frame!r}"
            got.append(bytes(packet))
        return got

    def released(self) -> bool:
        return self.device_end.fileno() == -1

    async def aclose(self) -> None:
        self.os_end.close()
        self.device_end.close()
