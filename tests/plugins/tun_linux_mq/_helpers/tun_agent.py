"""Device-side half of the linux-mq root tests: runs inside a test's network namespace.

Started by ``tests/plugins/tun_linux_mq/test_mq_device.py`` with ``python_in_ns`` as
``tun_agent.py SCENARIO JSON_ARGS``. Prints one JSON object per line: ``{"ready": ...}`` when a
scenario waits for the test (it then reads one line from stdin), and the result last. Never
run it in the host namespace: it creates devices, addresses and routes.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio

from tunplug.checksum import internet_checksum, ones_complement_sum
from tunplug.exceptions import ClosedResource, TunError
from tunplug.testing import packets as P
from tunplug.tun import TunOptions
from tunplug_tun_linux_mq import LinuxMultiQueueTun, _open, netlink

OWN4, PEER4 = "10.9.0.1", "10.9.0.2"
OWN6, PEER6 = "fd09::1", "fd09::2"
SO_RCVBUFFORCE = 33  # linux/socket.h; not in Python 3.11's socket module
ADDRESSES = (ipaddress.ip_interface(f"{OWN4}/24"), ipaddress.ip_interface(f"{OWN6}/64"))


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def tun_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("tun-"))


def link_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


#: Log lines of the backend at INFO and above, reported by scenarios that care.
LOG = _Records()
logging.getLogger("tunplug_tun_linux_mq").addHandler(LOG)
logging.getLogger("tunplug_tun_linux_mq").setLevel(logging.INFO)


def options(args: dict[str, Any], **extra: Any) -> TunOptions:
    if args.get("refuse_offloads"):
        # Play a kernel without offloads: TUNSETOFFLOAD answers EINVAL.
        def refuse(fd: int, bits: int) -> None:
            raise OSError(errno.EINVAL, "Invalid argument")

        _open._set_offload = refuse
    if args.get("rx_offloads"):
        _open.RX_OFFLOADS = True  # TSO/USO super-packets on read (off by default)
    return TunOptions(
        name=args.get("name", "tp0"),
        queues=args.get("queues", 1),
        mtu=args.get("mtu", 1420),
        addresses=ADDRESSES if args.get("addresses", True) else (),
        offloads=args.get("offloads", False),
        **extra,
    )


async def wait_for_test() -> str:
    return (await anyio.to_thread.run_sync(sys.stdin.readline)).strip()


async def hold(args: dict[str, Any]) -> None:
    """Create a device, report it, wait for the test, close it and report again."""
    tun = await LinuxMultiQueueTun.create(options(args))
    taken: list[int] = []
    if args.get("take_descriptors"):
        taken, _ = tun.take_descriptors()  # a native data plane's: the threads never start
    else:
        await tun.send_ready()  # the first use starts the queue threads
    emit(
        ready=True,
        name=tun.name,
        queues=tun.queues,
        mtu=tun.mtu,
        threads=tun_threads(),
        taken=len(taken),
    )
    await wait_for_test()
    await tun.aclose()
    await tun.aclose()  # idempotent
    errors = []
    for call in (tun.recv_many(), tun.send_ready()):
        try:
            await call
        except ClosedResource:
            errors.append("ClosedResource")
    try:
        tun.send([b"x"])
    except ClosedResource:
        errors.append("ClosedResource")
    emit(closed=True, link_exists=link_exists(tun.name), threads=tun_threads(), errors=errors)


async def create_error(args: dict[str, Any]) -> None:
    """Try to create a device; report the error (or that it worked)."""
    try:
        tun = await LinuxMultiQueueTun.create(options(args, **args.get("extra", {})))
    except TunError as exc:
        emit(error=type(exc).__name__, message=str(exc), errno=exc.errno, threads=tun_threads())
        return
    emit(error=None, name=tun.name)
    await tun.aclose()


async def twice(args: dict[str, Any]) -> None:
    """Create a device, then try the same name again from the same process."""
    async with await LinuxMultiQueueTun.create(options(args)):
        await create_error({**args, "addresses": False})


async def read(args: dict[str, Any]) -> None:
    """Send UDP (v4 and v6) and pings to addresses routed into the device; read them back."""
    count = args.get("count", 2000)
    async with await LinuxMultiQueueTun.create(options(args)) as tun:

        def send_udp() -> None:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s4,
                socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s6,
            ):
                for i in range(count):
                    s4.sendto(i.to_bytes(4, "big"), (PEER4, 9000))
                    s6.sendto(i.to_bytes(4, "big"), (PEER6, 9000))

        # Echo requests built by the kernel's IP layer (a raw ICMP socket: no ping binary).
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as raw:
            for seq in range(3):
                raw.sendto(P.icmp_echo(OWN4, PEER4, 7, seq)[20:], (PEER4, 0))
        started = time.perf_counter()
        sender = threading.Thread(target=send_udp)
        sender.start()
        udp4: list[int] = []
        udp6: list[int] = []
        echo_requests = batches = largest = 0
        with anyio.move_on_after(10):
            while len(udp4) < count or len(udp6) < count or echo_requests < 3:
                got = await tun.recv_many()
                batches += 1
                largest = max(largest, len(got))
                for packet in got:
                    parsed = P.parse(bytes(packet))
                    if parsed.protocol == P.UDP and parsed.dst in (PEER4, PEER6):
                        seq = int.from_bytes(parsed.payload[8:12], "big")
                        (udp4 if parsed.version == 4 else udp6).append(seq)
                    elif parsed.protocol == P.ICMP and parsed.dst == PEER4:
                        echo_requests += parsed.payload[0] == 8
        elapsed = time.perf_counter() - started
        sender.join()
        emit(
            udp4=len(udp4),
            udp6=len(udp6),
            in_order=udp4 == sorted(udp4) and udp6 == sorted(udp6),
            echo_requests=echo_requests,
            batches=batches,
            largest_batch=largest,
            packets_per_second=round((len(udp4) + len(udp6)) / elapsed),
            offloads=tun.offloads,
            log=LOG.messages,
            stats=tun.stats(),
        )


async def write(args: dict[str, Any]) -> None:
    """Write UDP to our own sockets (several flows, in order) and a ping; check the kernel."""
    flows, per_flow = args.get("flows", 8), args.get("per_flow", 200)
    async with await LinuxMultiQueueTun.create(options(args)) as tun:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r4,
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as r6,
        ):
            for s, own in ((r4, OWN4), (r6, OWN6)):
                s.bind((own, 7000))
                # Room for everything we write, above rmem_max (root): no drops under load.
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 24)
                s.settimeout(5)
            batch: list[bytes] = []
            for seq in range(per_flow):
                for flow in range(flows):
                    payload = seq.to_bytes(4, "big")
                    batch.append(P.udp(PEER4, OWN4, 10000 + flow, 7000, payload))
                    batch.append(P.udp(PEER6, OWN6, 10000 + flow, 7000, payload))
                    if len(batch) >= tun.batch_size:
                        await tun.send_ready()
                        tun.send(batch)
                        batch = []
            await tun.send_ready()
            tun.send([*batch, bytes(40)])  # version 0: the kernel refuses it (EINVAL)
            seen: dict[str, list[int]] = {}

            def receive_all() -> None:
                for s in (r4, r6):
                    for _ in range(flows * per_flow):
                        data, (host, port, *_) = s.recvfrom(64)
                        seen.setdefault(f"{host}:{port}", []).append(int.from_bytes(data, "big"))

            await anyio.to_thread.run_sync(receive_all)
        await tun.send_ready()
        tun.send([P.icmp_echo(PEER4, OWN4, 7, 1), P.icmp_echo(PEER6, OWN6, 7, 1)])
        replies = set()
        with anyio.move_on_after(5):
            while len(replies) < 2:
                for packet in await tun.recv_many():
                    parsed = P.parse(bytes(packet))
                    is_icmp = parsed.protocol in (P.ICMP, P.ICMPV6)
                    # Echo reply is type 0 in ICMP, 129 in ICMPv6.
                    if is_icmp and parsed.dst in (PEER4, PEER6) and parsed.payload[0] in (0, 129):
                        replies.add(parsed.version)
    stats = tun.stats()  # after close: the writer threads have counted everything
    emit(
        flows=len(seen),
        all_in_order=all(v == list(range(per_flow)) for v in seen.values()),
        echo_replies=sorted(replies),
        queues_used=sum(1 for q in stats["queues"] if q["tx_packets"]),
        offloads=tun.offloads,
        log=LOG.messages,
        stats=stats,
    )


async def deleted(args: dict[str, Any]) -> None:
    """Delete the interface under a waiting reader: it must fail with ClosedResource."""
    async with await LinuxMultiQueueTun.create(options(args)) as tun:
        result: dict[str, Any] = {}

        async def reader() -> None:
            try:
                while True:
                    await tun.recv_many()
            except ClosedResource as exc:
                result["recv"] = f"ClosedResource: {exc}"

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(reader)
                await anyio.sleep(0.1)
                await anyio.run_process(["ip", "link", "del", tun.name])
        try:
            await tun.send_ready()
            tun.send([P.udp(PEER4, OWN4, 1, 2, b"")])
            await anyio.sleep(0.2)
            await tun.send_ready()
        except ClosedResource as exc:
            result["send"] = f"ClosedResource: {exc}"
    emit(threads=tun_threads(), **result)


async def routes(args: dict[str, Any]) -> None:
    """add_routes / remove_routes on a fresh device, reported with the kernel's table."""
    async with await LinuxMultiQueueTun.create(options(args)) as tun:
        networks = args["networks"]
        added = await anyio.to_thread.run_sync(netlink.add_routes, tun.name, networks)
        again = await anyio.to_thread.run_sync(netlink.add_routes, tun.name, networks)
        table = (await anyio.run_process(["ip", "route", "show", "dev", tun.name])).stdout.decode()
        table6 = (
            await anyio.run_process(["ip", "-6", "route", "show", "dev", tun.name])
        ).stdout.decode()
        error = None
        try:
            await anyio.to_thread.run_sync(netlink.add_routes, tun.name, args.get("clash", []))
        except TunError as exc:
            error = {"message": str(exc), "errno": exc.errno}
        await anyio.to_thread.run_sync(netlink.remove_routes, added)
        await anyio.to_thread.run_sync(netlink.remove_routes, added)  # gone already: fine
        await tun.add_routes([ipaddress.ip_network("10.30.0.0/16")])
        recorded = [str(r) for r in tun.routes]
        after = (await anyio.run_process(["ip", "route", "show", "dev", tun.name])).stdout.decode()
        after6 = (
            await anyio.run_process(["ip", "-6", "route", "show", "dev", tun.name])
        ).stdout.decode()
    emit(
        added=[str(r.network) for r in added],
        again=[str(r.network) for r in again],
        table=table + table6,
        after=after + after6,
        clash_error=error,
        recorded=recorded,
        pyroute2_imported="pyroute2" in sys.modules,  # the netlink child's, not ours
    )


# -- TCP and UDP GSO through the device (offloads) --------------------------------------------

SYN, PSH, ACK = 0x02, 0x08, 0x10
UDP_SEGMENT = 103  # linux/udp.h, at level SOL_UDP (17)


def tcp_packet(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    *,
    mss: int | None = None,
    ident: int = 0,
) -> bytes:
    """A TCP segment with valid checksums (IPv4 with DF, or IPv6), window 65535."""
    options = struct.pack("!BBH", 2, 4, mss) if mss else b""
    header = (
        struct.pack(
            "!HHIIBBHHH",
            sport,
            dport,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF,
            (20 + len(options)) // 4 << 4,
            flags,
            65535,
            0,
            0,
        )
        + options
    )
    segment = header + payload
    source, dest = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    pseudo = ones_complement_sum(source.packed + dest.packed, 6 + len(segment))
    checksum = internet_checksum(segment, pseudo)
    segment = segment[:16] + struct.pack("!H", checksum) + segment[18:]
    if source.version == 6:
        return (
            struct.pack("!IHBB", 6 << 28, len(segment), 6, 64) + source.packed + dest.packed
        ) + segment
    ip = bytearray(
        struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(segment), ident, 0x4000, 64, 6, 0)
        + source.packed
        + dest.packed
    )
    struct.pack_into("!H", ip, 10, internet_checksum(ip))
    return bytes(ip) + segment


def tcp_fields(packet: bytes) -> tuple[str, str, int, int, int, int, int, bytes]:
    """src, dst, sport, dport, seq, ack, flags and payload of a TCP packet (else all empty)."""
    parsed = P.parse(packet)
    if parsed.protocol != 6:
        return "", "", 0, 0, 0, 0, 0, b""
    sport, dport, seq, ack, offset, flags = struct.unpack_from("!HHIIBB", parsed.payload)
    payload = parsed.payload[(offset >> 4) * 4 :]
    return parsed.src, parsed.dst, sport, dport, seq, ack, flags, payload


def family_of(args: dict[str, Any]) -> tuple[socket.AddressFamily, str, str]:
    if args.get("family", 4) == 6:
        return socket.AF_INET6, OWN6, PEER6
    return socket.AF_INET, OWN4, PEER4


def rx_packets(name: str) -> int:
    return int(Path(f"/sys/class/net/{name}/statistics/rx_packets").read_text())


async def tcp_read(args: dict[str, Any]) -> None:
    """A socket here sends to a peer routed into the device; we play that peer (SYN-ACK, ACKs).

    With offloads the kernel hands the stream over as TSO super-packets; recv_many must give
    ordinary segments. Reports every data segment (hex) for the test to check.
    """
    family, own, peer = family_of(args)
    size = args.get("bytes", 60000)
    data = bytes(i % 251 for i in range(size))
    async with await LinuxMultiQueueTun.create(options(args)) as tun:
        mss = tun.mtu - (40 if family == socket.AF_INET else 60)
        done = threading.Event()

        def client() -> None:
            with socket.create_connection((peer, 9100), timeout=20) as s:
                s.sendall(data)
                done.wait(20)

        sender = threading.Thread(target=client)
        sender.start()
        segments: list[str] = []
        received: dict[int, bytes] = {}
        start = next_seq = None
        largest = 0
        try:
            with anyio.move_on_after(20):
                while next_seq is None or start is None or next_seq - start < size:
                    replies, latest_ack = [], None
                    for packet in await tun.recv_many():
                        raw = bytes(packet)
                        largest = max(largest, len(raw))
                        _src, dst, sport, dport, seq, _ack, flags, payload = tcp_fields(raw)
                        if dst != peer or dport != 9100:
                            continue
                        if flags & SYN:
                            start = next_seq = seq + 1
                            replies.append(
                                tcp_packet(
                                    peer, own, 9100, sport, 7000, seq + 1, SYN | ACK, mss=mss
                                )
                            )
                        elif payload and next_seq is not None:
                            segments.append(raw.hex())
                            received[seq] = payload
                            while next_seq in received:
                                next_seq += len(received.pop(next_seq))
                            latest_ack = tcp_packet(peer, own, 9100, sport, 7001, next_seq, ACK)
                    if latest_ack is not None:
                        replies.append(latest_ack)
                    if replies:
                        await tun.send_ready()
                        tun.send(replies)
        finally:
            done.set()
            await anyio.to_thread.run_sync(sender.join)
        emit(
            offloads=tun.offloads,
            complete=next_seq is not None and start is not None and next_seq - start == size,
            segments=segments,
            largest=largest,
            mss=mss,
            log=LOG.messages,
            stats=tun.stats(),
        )


async def tcp_write(args: dict[str, Any]) -> None:
    """We play a peer that connects to a listening socket here and sends a burst of segments.

    The burst goes to ``send`` as one batch; with offloads the writer coalesces it into one
    super-packet, which the kernel must accept and deliver to the socket intact.
    """
    family, own, peer = family_of(args)
    count = args.get("segments", 30)
    async with await LinuxMultiQueueTun.create(options(args)) as tun:
        mss = tun.mtu - (40 if family == socket.AF_INET else 60)
        data = bytes((i * 7) % 253 for i in range(count * mss))
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            listener.bind((own, 9200))
            listener.listen(1)
            listener.settimeout(20)
            got = bytearray()

            def serve() -> None:
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(20)
                    while len(got) < len(data):
                        chunk = conn.recv(1 << 16)
                        if not chunk:
                            break
                        got.extend(chunk)

            receiver = threading.Thread(target=serve)
            receiver.start()
            isn, port = 1000, 40000
            await tun.send_ready()
            tun.send([tcp_packet(peer, own, port, 9200, isn, 0, SYN, mss=mss)])
            server_isn = window = None
            with anyio.fail_after(10):
                while server_isn is None:
                    for packet in await tun.recv_many():
                        src, _dst, sport, _dport, seq, ack, flags, _ = tcp_fields(bytes(packet))
                        if src == own and sport == 9200 and flags & SYN and ack == isn + 1:
                            server_isn = seq
                            parsed = P.parse(bytes(packet))
                            window = struct.unpack_from("!H", parsed.payload, 14)[0]
            assert window is not None and window >= len(data), window
            ack = server_isn + 1
            await tun.send_ready()
            tun.send([tcp_packet(peer, own, port, 9200, isn + 1, ack, ACK)])
            # The writer thread writes asynchronously: let the SYN and ACK reach the kernel
            # before reading the device counters, or the ACK may be counted with the burst.
            with anyio.fail_after(10):
                while tun.stats()["tx_packets"] < 2:  # noqa: ASYNC110 - counters, no event
                    await anyio.sleep(0.001)
            burst = [
                tcp_packet(
                    peer,
                    own,
                    port,
                    9200,
                    isn + 1 + i * mss,
                    ack,
                    ACK | (PSH if i == count - 1 else 0),
                    data[i * mss : (i + 1) * mss],
                    ident=100 + i,
                )
                for i in range(count)
            ]
            before = rx_packets(tun.name)
            await tun.send_ready()
            tun.send(burst)
            await anyio.to_thread.run_sync(receiver.join)
            after = rx_packets(tun.name)
    emit(
        offloads=tun.offloads,
        delivered=bytes(got) == data,
        received=len(got),
        device_rx_packets=after - before,
        stats=tun.stats(),
    )


async def uso_read(args: dict[str, Any]) -> None:
    """UDP_SEGMENT sends to a peer routed into the device; report the datagrams (hex)."""
    family, _own, peer = family_of(args)
    sends, segments, size = args.get("sends", 3), args.get("segments", 8), args.get("size", 1000)
    async with await LinuxMultiQueueTun.create(options(args)) as tun:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.setsockopt(17, UDP_SEGMENT, size)
            for i in range(sends):
                s.sendto(bytes([i]) * (size * segments), (peer, 9300))
        datagrams: list[str] = []
        with anyio.move_on_after(10):
            while len(datagrams) < sends * segments:
                for packet in await tun.recv_many():
                    parsed = P.parse(bytes(packet))
                    if parsed.protocol == P.UDP and parsed.dst == peer:
                        datagrams.append(bytes(packet).hex())
        emit(offloads=tun.offloads, datagrams=datagrams, stats=tun.stats())


SCENARIOS = {
    f.__name__: f
    for f in (
        hold,
        create_error,
        twice,
        read,
        write,
        deleted,
        routes,
        tcp_read,
        tcp_write,
        uso_read,
    )
}

if __name__ == "__main__":
    scenario, arguments = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    anyio.run(SCENARIOS[scenario], arguments)
