"""Many WireGuard clients from one process: a load generator for one gateway.

Who calls it: ``tests/e2e/test_many_clients.py`` and ``benchmarks/clients.py``, which build a
:class:`LoadTopology` (namespaces), register the clients with the gateway, write a
:class:`LoadPlan` and run this module inside the load namespace::

    python -m tunplug.testing.loadgen PLAN.json --output RESULT.json

Each client is tunplug's own sans-IO :class:`~tunplug.wireguard.WireGuardDevice` with the
gateway as its one peer, so N clients cost N small objects and no process, thread or TUN device
each. A client sends one ICMP echo request to the resource behind the gateway; the device stages
it and starts the handshake, sends it on the new session, and the client is done when the echo
reply comes back through the tunnel (checked: source, destination, identifier, payload).

The gateway rate-limits handshakes per source address (20/s, burst 5), as WireGuard does, so
every client has its own outer source address: :class:`LoadTopology` puts N /32 addresses on
the load namespace's loopback (``ip -batch``) and routes them from the gateway through one
next hop (one neighbour entry on the gateway, not N), and one UDP socket sends from each with
``IP_PKTINFO`` and learns from ``IP_PKTINFO`` which client a datagram is for.

Pacing: at most ``window`` clients are between their first initiation and their echo at a time
(and, with ``rate``, at most that many start per second). When the gateway is under load it
answers with cookie replies (WireGuard's DoS defence); a client retries with the cookie after
``retry_after`` seconds (its REKEY_TIMEOUT: 1 s here instead of 5 s, so that a cookie round
does not dominate the time to connect). Nothing here needs root; :class:`LoadTopology` does.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import heapq
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from tunplug.testing import packets
from tunplug.testing.netns import NetNS, python_in_ns, veth_pair
from tunplug.wireguard import PeerConfig, Timing, WireGuardDevice

if TYPE_CHECKING:
    from tunplug.crypto import CryptoBackend

__all__ = [
    "ClientSpec",
    "LoadPlan",
    "LoadResult",
    "LoadTopology",
    "client_specs",
    "cpu_seconds",
    "idle_cpu",
    "rss_kib",
    "run_load",
]

#: The outer addresses of the clients (on the load namespace's loopback), and its link.
CLIENT_SOURCES = IPv4Network("10.231.0.0/16")
LOAD_LINK = ("10.230.0.1", "10.230.0.2")  # gateway side, load side (/24)
RESOURCE_LINK = ("10.210.0.1", "10.210.0.2")  # gateway side, resource (/24)
#: The echo payload: a fixed prefix and the client's number, checked in the reply.
ECHO_PREFIX = b"tunplug-loadgen:"
#: How long one wait for datagrams or a timer lasts at most (seconds).
POLL_SECONDS = 0.01
#: ``struct in_pktinfo``: interface index, local (source) address, header destination address.
_PKTINFO = struct.Struct("@i4s4s")
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """One client: its keys, its tunnel address and its outer source address."""

    private_key: bytes
    preshared_key: bytes | None
    tunnel_address: str
    source: str


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """What to run: the gateway, the resource to ping through it, and the clients."""

    gateway_key: bytes
    gateway_endpoint: tuple[str, int]
    resource: str
    clients: tuple[ClientSpec, ...]
    #: The load generator's UDP port (on every source address).
    port: int = 51900
    #: Clients between first initiation and echo at once.
    window: int = 256
    #: Clients started per second at most (0: as the window allows).
    rate: float = 0.0
    #: Give up after this many seconds.
    timeout: float = 60.0
    #: The clients' REKEY_TIMEOUT: how long before an initiation is sent again.
    retry_after: float = 1.0
    #: Seconds the clients stay up after the last echo, running their timers: past
    #: KEEPALIVE_TIMEOUT (10 s) each has answered the gateway's last data with a keepalive, so
    #: the gateway is left idle. With 0 they vanish at once, and the gateway starts handshakes
    #: toward them 15 s later, as WireGuard does when data goes unanswered.
    linger: float = 0.0

    def to_json(self) -> str:
        def b64(data: bytes | None) -> str | None:
            return None if data is None else base64.b64encode(data).decode()

        return json.dumps(
            {
                "gateway_key": b64(self.gateway_key),
                "gateway_endpoint": list(self.gateway_endpoint),
                "resource": self.resource,
                "port": self.port,
                "window": self.window,
                "rate": self.rate,
                "timeout": self.timeout,
                "retry_after": self.retry_after,
                "linger": self.linger,
                "clients": [
                    [b64(c.private_key), b64(c.preshared_key), c.tunnel_address, c.source]
                    for c in self.clients
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> LoadPlan:
        data = json.loads(text)

        def raw(value: str | None) -> bytes | None:
            return None if value is None else base64.b64decode(value)

        host, port = data["gateway_endpoint"]
        return cls(
            gateway_key=base64.b64decode(data["gateway_key"]),
            gateway_endpoint=(str(host), int(port)),
            resource=data["resource"],
            clients=tuple(
                ClientSpec(base64.b64decode(key), raw(psk), address, source)
                for key, psk, address, source in data["clients"]
            ),
            port=int(data["port"]),
            window=int(data["window"]),
            rate=float(data["rate"]),
            timeout=float(data["timeout"]),
            retry_after=float(data["retry_after"]),
            linger=float(data.get("linger", 0.0)),
        )


@dataclass(slots=True)
class LoadResult:
    """What a run measured. Times are seconds from the first initiation sent."""

    clients: int
    connected: int = 0
    echoed: int = 0
    #: When the last client completed its handshake / got its echo (None: not all did).
    all_connected: float | None = None
    all_echoed: float | None = None
    #: Completed handshakes per second over the whole run, and in the best one-second window.
    handshakes_per_second: float = 0.0
    peak_handshakes_per_second: int = 0
    initiations_sent: int = 0
    cookie_replies: int = 0
    #: Echo requests sent again because no reply came within two retry times.
    echoes_resent: int = 0
    #: How long building the N devices took (before the clock above starts).
    setup_seconds: float = 0.0
    #: Client drop counters summed (``WireGuardDevice.drops``), e.g. unexpected replies.
    drops: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LoadResult:
        return cls(**json.loads(text))


class _Client:
    __slots__ = ("connected", "device", "echo", "echoed", "index", "started")

    def __init__(self, index: int, device: WireGuardDevice, echo: bytes) -> None:
        self.index = index
        self.device = device
        self.echo = echo
        self.started: float | None = None
        self.connected: float | None = None
        self.echoed: float | None = None


def _build_clients(plan: LoadPlan, crypto: CryptoBackend) -> list[_Client]:
    timing = Timing(rekey_timeout=plan.retry_after)
    resource = IPv4Network(f"{plan.resource}/32")
    clients = []
    for index, spec in enumerate(plan.clients):
        device = WireGuardDevice(spec.private_key, crypto, timing=timing)
        device.add_peer(
            PeerConfig(
                public_key=plan.gateway_key,
                preshared_key=spec.preshared_key,
                endpoint=plan.gateway_endpoint,
                allowed_ips=(resource,),
            )
        )
        payload = ECHO_PREFIX + str(index).encode()
        echo = packets.icmp_echo(spec.tunnel_address, plan.resource, index & 0xFFFF, 1, payload)
        clients.append(_Client(index, device, echo))
    return clients


def _is_our_reply(client: _Client, packet: bytes, plan: LoadPlan, spec: ClientSpec) -> bool:
    try:
        parsed = packets.parse(packet)
    except ValueError:
        return False
    if parsed.protocol != packets.ICMP or len(parsed.payload) < 8:
        return False
    kind, _code, _sum, ident, _seq = struct.unpack_from("!BBHHH", parsed.payload)
    return (
        kind == 0
        and parsed.src == plan.resource
        and parsed.dst == spec.tunnel_address
        and ident == client.index & 0xFFFF
        and parsed.payload[8:] == ECHO_PREFIX + str(client.index).encode()
    )


def run_load(plan: LoadPlan, crypto: CryptoBackend) -> LoadResult:
    """Connect every client of ``plan`` to the gateway and ping the resource through each;
    returns ``plan.linger`` seconds after all got their echo, or when ``plan.timeout`` ran
    out. The source addresses must be local (:class:`LoadTopology`'s load namespace)."""
    result = LoadResult(clients=len(plan.clients))
    began = time.monotonic()
    clients = _build_clients(plan, crypto)
    result.setup_seconds = time.monotonic() - began
    specs = plan.clients
    by_source = {IPv4Address(spec.source).packed: i for i, spec in enumerate(specs)}
    sources = [IPv4Address(spec.source).packed for spec in specs]
    endpoint = plan.gateway_endpoint
    timers: list[tuple[float, int]] = []
    resend: list[tuple[float, int]] = []
    per_second: dict[int, int] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        for option in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, 8 << 20)
                break
        sock.bind(("0.0.0.0", plan.port))
        ancillary = socket.CMSG_SPACE(_PKTINFO.size)
        start = time.monotonic()

        def send(index: int, datagrams: Sequence[tuple[bytes | memoryview, object]]) -> None:
            info = _PKTINFO.pack(0, sources[index], bytes(4))
            for data, _ in datagrams:
                if data[0] == 1:
                    result.initiations_sent += 1
                sock.sendmsg([data], [(socket.IPPROTO_IP, _IP_PKTINFO, info)], 0, endpoint)

        def schedule(client: _Client) -> None:
            deadline = client.device.next_deadline()
            if deadline is not None:
                heapq.heappush(timers, (deadline, client.index))

        waiting = iter(range(len(clients)))
        next_client = next(waiting, None)
        in_flight = 0
        started = 0
        done_at: float | None = None
        while True:
            now = time.monotonic()
            elapsed = now - start
            if done_at is None and result.echoed == len(clients):
                done_at = now
            if (done_at is not None and now - done_at >= plan.linger) or (
                done_at is None and elapsed > plan.timeout
            ):
                break
            # Start clients as the window (and the rate) allow.
            allowed = len(clients) if plan.rate <= 0 else int(elapsed * plan.rate) + 1
            while next_client is not None and in_flight < plan.window and started < allowed:
                client = clients[next_client]
                client.started = now
                send(client.index, client.device.encrypt([client.echo], now).to_network)
                schedule(client)
                in_flight += 1
                started += 1
                next_client = next(waiting, None)
            # An echo (or its reply) lost on the way is sent again, as ping would.
            while resend and resend[0][0] <= now:
                _, index = heapq.heappop(resend)
                client = clients[index]
                if client.echoed is None:
                    send(index, client.device.encrypt([client.echo], now).to_network)
                    heapq.heappush(resend, (now + 2 * plan.retry_after, index))
                    result.echoes_resent += 1
            # Timers that are due: retransmissions (the device knows when).
            while timers and timers[0][0] <= now:
                _, index = heapq.heappop(timers)
                client = clients[index]
                deadline = client.device.next_deadline()
                if deadline is None or deadline > now:
                    if deadline is not None:
                        heapq.heappush(timers, (deadline, index))
                    continue
                send(index, client.device.tick(now).to_network)
                schedule(client)
            wait = POLL_SECONDS
            if timers:
                wait = min(wait, max(timers[0][0] - time.monotonic(), 0.0))
            readable, _, _ = select.select([sock], [], [], wait)
            if not readable:
                continue
            for _ in range(512):
                try:
                    data, cmsgs, _flags, sender = sock.recvmsg(2048, ancillary, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                destination = next(
                    (
                        _PKTINFO.unpack(bytes(cdata[: _PKTINFO.size]))[2]
                        for level, kind, cdata in cmsgs
                        if level == socket.IPPROTO_IP and kind == _IP_PKTINFO
                    ),
                    None,
                )
                index_or_none = by_source.get(destination) if destination else None
                if index_or_none is None:
                    continue
                client = clients[index_or_none]
                if data and data[0] == 3:
                    result.cookie_replies += 1
                now = time.monotonic()
                output = client.device.decrypt([(data, (sender[0], sender[1]))], now)
                if client.connected is None and client.device.peer_stats()[0].last_handshake:
                    client.connected = now
                    result.connected += 1
                    second = int(now - start)
                    per_second[second] = per_second.get(second, 0) + 1
                    heapq.heappush(resend, (now + 2 * plan.retry_after, client.index))
                if output.to_network:
                    send(client.index, output.to_network)
                for packet in output.to_tun:
                    spec = specs[client.index]
                    if client.echoed is None and _is_our_reply(client, packet, plan, spec):
                        client.echoed = now
                        result.echoed += 1
                        in_flight -= 1
                schedule(client)
        finished = [c.connected for c in clients if c.connected is not None]
        if len(finished) == len(clients) and finished:
            result.all_connected = max(finished) - start
            result.handshakes_per_second = len(clients) / max(result.all_connected, 1e-6)
        elif finished:
            result.handshakes_per_second = len(finished) / max(max(finished) - start, 1e-6)
        echoed = [c.echoed for c in clients if c.echoed is not None]
        if len(echoed) == len(clients) and echoed:
            result.all_echoed = max(echoed) - start
        result.peak_handshakes_per_second = max(per_second.values(), default=0)
    drops: dict[str, int] = {}
    for client in clients:
        for reason, count in client.device.drops.items():
            drops[reason] = drops.get(reason, 0) + count
    result.drops = drops
    return result


# -- measuring a process ----------------------------------------------------------------------
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for process {pid}")


def idle_cpu(pid: int, seconds: float) -> float:
    """The share of one core process ``pid`` used over the next ``seconds`` (0.05 = 5%)."""
    before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - started)


# -- the namespaces ---------------------------------------------------------------------------
class LoadTopology:
    """Three throw-away namespaces: ``gateway`` in the middle, ``load`` (the clients' outer
    addresses) in front of it, ``resource`` (answers pings at :data:`RESOURCE_LINK` [1])
    behind it. The gateway reaches the clients' sources through one next hop; the resource has
    no route back to the tunnel subnet unless :meth:`route_tunnel_back` adds one (a gateway
    that masquerades, as ``tunplug-gateway`` does, needs none). Removed on exit."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self.gateway: NetNS
        self.load: NetNS
        self.resource: NetNS
        self.sources: list[str] = []

    def __enter__(self) -> Self:
        try:
            self.gateway = self._stack.enter_context(NetNS("tp-gw-"))
            self.load = self._stack.enter_context(NetNS("tp-load-"))
            self.resource = self._stack.enter_context(NetNS("tp-res-"))
            gw, load = LOAD_LINK
            veth_pair(self.gateway, self.load, f"{gw}/24", f"{load}/24",
                      name_a="veth-load", name_b="veth-gw")  # fmt: skip
            gw_res, res = RESOURCE_LINK
            veth_pair(self.gateway, self.resource, f"{gw_res}/24", f"{res}/24",
                      name_a="veth-res", name_b="veth-gw")  # fmt: skip
            self.gateway.run("ip", "route", "add", str(CLIENT_SOURCES), "via", load)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stack.close()

    @property
    def endpoint_address(self) -> str:
        """Where the clients send to: the gateway's address on the load link."""
        return LOAD_LINK[0]

    @property
    def resource_address(self) -> str:
        return RESOURCE_LINK[1]

    def add_sources(self, count: int) -> list[str]:
        """``count`` more outer source addresses on the load namespace (one ``ip -batch``)."""
        hosts = CLIENT_SOURCES.hosts()
        wanted = len(self.sources) + count
        addresses = [str(address) for _, address in zip(range(wanted), hosts, strict=False)]
        if len(addresses) < wanted:
            raise ValueError(f"{CLIENT_SOURCES} holds fewer than {wanted} sources")
        new = addresses[len(self.sources) :]
        batch = "".join(f"addr add {address}/32 dev lo\n" for address in new)
        self.load.run("ip", "-batch", "-", input=batch, timeout=120)
        self.sources += new
        return new

    def route_tunnel_back(self, subnet: str) -> None:
        """Give the resource a route to the tunnel ``subnet`` through the gateway (for a
        gateway that does not masquerade, e.g. wireguard-go), and let the gateway forward."""
        self.resource.run("ip", "route", "add", subnet, "via", RESOURCE_LINK[0])
        self.gateway.run("sysctl", "-qw", "net.ipv4.ip_forward=1")

    def run_load(self, plan: LoadPlan, workdir: Path, timeout: float | None = None) -> LoadResult:
        """Run ``plan`` with this module in the load namespace; returns its result.

        :raises RuntimeError: the load generator failed (its output is in the message).
        """
        plan_path, result_path = workdir / "loadgen-plan.json", workdir / "loadgen-result.json"
        plan_path.write_text(plan.to_json())
        result_path.unlink(missing_ok=True)
        process = python_in_ns(
            self.load, "tunplug.testing.loadgen", str(plan_path), "--output", str(result_path),
            module=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        limit = timeout if timeout is not None else plan.timeout + 120
        try:
            output, _ = process.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            raise RuntimeError(
                f"the load generator ran over {limit:.0f} s:\n{output[-3000:]}"
            ) from None
        if process.returncode != 0 or not result_path.exists():
            raise RuntimeError(
                f"the load generator failed ({process.returncode}):\n{output[-3000:]}"
            )
        return LoadResult.from_json(result_path.read_text())


def client_specs(
    keys: Sequence[tuple[bytes, bytes | None, str]], sources: Sequence[str]
) -> tuple[ClientSpec, ...]:
    """Clients from (private key, PSK, tunnel address) and as many outer sources."""
    if len(sources) < len(keys):
        raise ValueError(f"{len(keys)} clients but only {len(sources)} source addresses")
    return tuple(
        ClientSpec(private_key, psk, address, source)
        for (private_key, psk, address), source in zip(keys, sources, strict=False)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tunplug.testing.loadgen",
        description="Connect the clients of PLAN (JSON, see LoadPlan) to one WireGuard gateway "
        "and ping the resource through each; write the result as JSON.",
    )
    parser.add_argument("plan", type=Path)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    from tunplug.app import App
    from tunplug.config import load_settings

    plan = LoadPlan.from_json(args.plan.read_text())
    result = run_load(plan, App(load_settings()).crypto())
    args.output.write_text(result.to_json())
    print(
        f"{result.echoed}/{result.clients} echoed, {result.connected} connected in "
        f"{result.all_connected} s ({result.handshakes_per_second:.0f}/s, peak "
        f"{result.peak_handshakes_per_second}/s), {result.initiations_sent} initiations, "
        f"{result.cookie_replies} cookie replies, {result.echoes_resent} echoes resent",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
