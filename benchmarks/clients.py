"""Many clients on one gateway: tunplug (native and Python data paths) against wireguard-go.

Who runs it: anyone with root, after ``scripts/dev setup``::

    sudo .venv/bin/python benchmarks/clients.py                 # 10,000 clients
    sudo .venv/bin/python benchmarks/clients.py --quick         # 1,000
    sudo .venv/bin/python benchmarks/clients.py --clients 3000 --output table.md

Each column is one gateway in throw-away namespaces (:class:`tunplug.testing.loadgen.
LoadTopology`) with N clients, measured the same way:

- ``tunplug-native`` / ``tunplug-python``: ``tunplug-gateway run`` with
  ``TUNPLUG_DATA_PATH=native|python``; the N clients registered in bulk
  (``Registry.add_clients``, one transaction: ``client add`` has no bulk form);
- ``wggo13``: Debian 13's wireguard-go (fetched by ``benchmarks/wggo.py``, the anchor), its N
  peers set through its UAPI socket in one ``set=1`` request; it does not masquerade, so the
  resource routes the tunnel subnet back through it.

The clients are sans-IO WireGuard devices in one process in the load namespace
(:mod:`tunplug.testing.loadgen`), each with its own source address, each pinging the resource
through the gateway once. Measured: time until all N completed a handshake, handshakes per
second (all N over that time, and the best one-second window), RSS before and per connected
client, idle CPU over ``--idle`` seconds with N registered and with N connected (the clients
stayed up past KEEPALIVE_TIMEOUT, so the gateway's last data was answered), and for tunplug
``client list`` wall time and the registry poll (``follow_registry``: ``version()`` every
poll, ``clients()`` and the diff when it changed). Ratios are against wireguard-go measured in
the same run. Traffic stays inside the namespaces, which are removed on any exit.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network
from pathlib import Path

from benchlib.lifecycle import exclusive_lock
from benchlib.tables import render_markdown_table
from wggo import FetchError, fetch

from tunplug import token
from tunplug.app import App
from tunplug.config import load_settings
from tunplug.gateway.registry import Registry
from tunplug.testing.loadgen import (
    LoadPlan,
    LoadResult,
    LoadTopology,
    client_specs,
    idle_cpu,
    rss_kib,
)
from tunplug.wireguard.keys import parse_key

BIN = Path(sys.executable).parent
KINDS = ("tunplug-native", "tunplug-python", "wggo13")
ANCHOR = "wggo13"
PORT = 51820
RESOURCES = "10.210.0.0/24"
#: The tunnel subnet of the wireguard-go gateway (tunplug's default, for the same addresses).
WGGO_SUBNET = "100.64.0.0/11"


@dataclass(slots=True)
class Column:
    """What one gateway measured; ``None`` where it does not apply or failed."""

    kind: str
    load: LoadResult | None = None
    rss_before_kib: int | None = None
    rss_connected_kib: int | None = None
    idle_registered: float | None = None
    idle_connected: float | None = None
    register_seconds: float | None = None
    client_list_seconds: float | None = None
    poll_unchanged_us: float | None = None
    poll_changed_ms: float | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rss_per_client_kib(self) -> float | None:
        if self.load is None or self.rss_before_kib is None or self.rss_connected_kib is None:
            return None
        return (self.rss_connected_kib - self.rss_before_kib) / self.load.clients


def _env(data_path: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TUNPLUG_")}
    return {**base, "TUNPLUG_DISABLE_PLUGIN_AUTOLOAD": "1", "TUNPLUG_DATA_PATH": data_path}


def _wait_for(path: Path, needle: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while needle not in path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{needle!r} not seen:\n{path.read_text()[-2000:]}")
        time.sleep(0.1)


def _plan(
    topo: LoadTopology, gateway_key: bytes, keys: Sequence[tuple[bytes, bytes | None, str]]
) -> LoadPlan:
    sources = topo.add_sources(len(keys))
    return LoadPlan(
        gateway_key,
        (topo.endpoint_address, PORT),
        topo.resource_address,
        client_specs(keys, sources),
        window=1024,
        timeout=max(60.0, len(keys) / 40),
    )


def _measure(
    column: Column,
    topo: LoadTopology,
    pid: int,
    plan: LoadPlan,
    workdir: Path,
    idle: float,
    log: Callable[[str], None],
) -> None:
    time.sleep(2)  # start-up done, first poll and stats write behind us
    column.rss_before_kib = rss_kib(pid)
    column.idle_registered = idle_cpu(pid, idle)
    log(f"  idle with {len(plan.clients)} registered: {column.idle_registered:.1%}")
    # The clients stay up past KEEPALIVE_TIMEOUT: their keepalives leave the gateway idle.
    column.load = topo.run_load(replace(plan, linger=11.0), workdir)
    log(f"  connected {column.load.connected}, echoed {column.load.echoed} "
        f"in {column.load.all_connected} s")  # fmt: skip
    column.rss_connected_kib = rss_kib(pid)
    column.idle_connected = idle_cpu(pid, idle)


def run_tunplug(kind: str, clients: int, idle: float, log: Callable[[str], None]) -> Column:
    column = Column(kind)
    data_path = kind.removeprefix("tunplug-")
    with tempfile.TemporaryDirectory(prefix="tunplug-clients-") as tmp, LoadTopology() as topo:
        workdir = Path(tmp)
        state = workdir / "state"
        started = time.monotonic()
        with Registry.init(
            state,
            endpoint=f"{topo.endpoint_address}:{PORT}",
            resources=[RESOURCES],
            crypto=App(load_settings()).crypto(),
        ) as registry:
            issued = registry.add_clients([f"load{i:05d}" for i in range(clients)])
            gateway_key = registry.gateway.public_key
        column.register_seconds = time.monotonic() - started
        keys = [
            (parse_key(token.decode(c.token).private_key), c.client.preshared_key,
             str(c.client.address_v4))
            for c in issued
        ]  # fmt: skip
        plan = _plan(topo, gateway_key, keys)
        gateway_log = workdir / "gateway.log"
        with gateway_log.open("wb") as out:
            process = topo.gateway.popen(
                str(BIN / "tunplug-gateway"), "run", "--state-dir", str(state),
                "--interface", "tpgw0", "--metrics-address", "off",
                stdout=out, stderr=subprocess.STDOUT, env=_env(data_path),
            )  # fmt: skip
        try:
            _wait_for(gateway_log, "tunnel is up on", process, 120)
            _measure(column, topo, process.pid, plan, workdir, idle, log)
            started = time.monotonic()
            subprocess.run(
                [str(BIN / "tunplug-gateway"), "client", "list", "--state-dir", str(state)],
                check=True, capture_output=True, env=_env(data_path), timeout=120,
            )  # fmt: skip
            column.client_list_seconds = time.monotonic() - started
            column.poll_unchanged_us, column.poll_changed_ms = registry_poll_cost(state)
        finally:
            process.terminate()
            process.wait(60)
    return column


def registry_poll_cost(state: Path) -> tuple[float, float]:
    """What ``follow_registry`` costs: one ``version()`` (µs), and when it changed the
    ``clients()`` read and the diff against the clients being served (ms)."""
    with Registry.open(state) as registry:
        rounds = 2000
        started = time.perf_counter()
        for _ in range(rounds):
            registry.version()
        unchanged = (time.perf_counter() - started) / rounds * 1e6
        serving = {client.public_key: client for client in registry.clients()}
        started = time.perf_counter()
        current = registry.clients()
        wanted = {client.public_key: client for client in current}
        _ = [key for key in serving if key not in wanted]
        _ = [key for key in wanted if key not in serving]
        changed = (time.perf_counter() - started) * 1e3
    return unchanged, changed


def _uapi(path: Path, request: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(str(path))
        sock.sendall(request.encode())
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply.decode()


def run_wggo(clients: int, idle: float, binary: Path, log: Callable[[str], None]) -> Column:
    column = Column(ANCHOR)
    crypto = App(load_settings()).crypto()
    with tempfile.TemporaryDirectory(prefix="tunplug-clients-") as tmp, LoadTopology() as topo:
        workdir = Path(tmp)
        interface = "wgc" + os.urandom(3).hex()
        gateway_key = crypto.generate_private_key()
        # The same addresses and keys as a tunplug registry would give (client n: n-th address).
        subnet_clients = []
        subnet = IPv4Network(WGGO_SUBNET)
        for index in range(clients):
            private_key = crypto.generate_private_key()
            psk = os.urandom(32)
            address = str(subnet[index + 2])
            subnet_clients.append((private_key, psk, address))
        process = topo.gateway.popen(
            "env", "LOG_LEVEL=error", str(binary), "-f", interface,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        uapi = Path("/var/run/wireguard") / f"{interface}.sock"
        try:
            deadline = time.monotonic() + 20
            while not uapi.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("wireguard-go did not open its UAPI socket")
                time.sleep(0.05)
            lines = [
                f"set=1\nprivate_key={gateway_key.hex()}\nlisten_port={PORT}\nreplace_peers=true"
            ]
            for private_key, psk, address in subnet_clients:
                lines.append(
                    f"public_key={crypto.public_key(private_key).hex()}\n"
                    f"preshared_key={psk.hex()}\nallowed_ip={address}/32"
                )
            started = time.monotonic()  # the request is built: time only wireguard-go's work
            reply = _uapi(uapi, "\n".join(lines) + "\n\n")
            if "errno=0" not in reply:
                raise RuntimeError(f"wireguard-go refused the peers: {reply.strip()}")
            column.register_seconds = time.monotonic() - started
            topo.gateway.run("ip", "addr", "add", "100.64.0.1/11", "dev", interface)
            topo.gateway.run("ip", "link", "set", interface, "up")
            topo.route_tunnel_back(WGGO_SUBNET)
            # `ip netns exec` runs the program itself: this PID is wireguard-go's.
            plan = _plan(topo, crypto.public_key(gateway_key), subnet_clients)
            _measure(column, topo, process.pid, plan, workdir, idle, log)
        finally:
            process.terminate()
            process.wait(30)
    return column


# -- the table --------------------------------------------------------------------------------
def _ratio(value: float | None, anchor: float | None) -> str:
    if value is None or anchor is None or anchor == 0:
        return ""
    return f" ({value / anchor:.2f}x)"


def rows(columns: Sequence[Column]) -> list[list[str]]:
    anchor = next((c for c in columns if c.kind == ANCHOR and c.error is None), None)

    def row(
        label: str,
        value: Callable[[Column], float | None],
        spec: str,
        unit: str = "",
        ratio: bool = True,
    ) -> list[str]:
        cells = [label]
        for column in columns:
            number = value(column) if column.error is None else None
            if number is None:
                cells.append("failed" if column.error else "-")
                continue
            base = value(anchor) if anchor is not None and ratio else None
            cells.append(
                f"{number:{spec}}{unit}" + ("" if column is anchor else _ratio(number, base))
            )
        return cells

    def load(attribute: str) -> Callable[[Column], float | None]:
        return lambda c: None if c.load is None else getattr(c.load, attribute)

    return [
        row("clients connected", load("connected"), ".0f", ratio=False),
        row("echo replies", load("echoed"), ".0f", ratio=False),
        row("time to connect all (s)", load("all_connected"), ".1f"),
        row("handshakes/s (all N / that time)", load("handshakes_per_second"), ".0f"),
        row("handshakes/s (best second)", load("peak_handshakes_per_second"), ".0f"),
        row("cookie replies received", load("cookie_replies"), ".0f", ratio=False),
        # tunplug: keys, tokens and the database; wireguard-go: taking N peers over UAPI.
        row("register N (s)", lambda c: c.register_seconds, ".1f", ratio=False),
        row(
            "RSS, N registered (MiB)",
            lambda c: None if c.rss_before_kib is None else c.rss_before_kib / 1024,
            ".0f",
        ),
        row("RSS per connected client (KiB)", lambda c: c.rss_per_client_kib, ".1f"),
        row(
            "idle CPU, N registered (% of a core)",
            lambda c: None if c.idle_registered is None else 100 * c.idle_registered,
            ".1f",
        ),
        row(
            "idle CPU, N connected (% of a core)",
            lambda c: None if c.idle_connected is None else 100 * c.idle_connected,
            ".1f",
        ),
        row("`client list` wall time (s)", lambda c: c.client_list_seconds, ".2f", ratio=False),
        row("registry poll, unchanged (µs)", lambda c: c.poll_unchanged_us, ".0f", ratio=False),
        row("registry poll, changed (ms)", lambda c: c.poll_changed_ms, ".0f", ratio=False),
    ]


def render(columns: Sequence[Column], clients: int, idle: float) -> str:
    header = ["", *(c.kind for c in columns)]
    lines = [
        f"Clients on one gateway, {clients} clients, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} CPUs, idle CPU over {idle:g} s (ratios: against {ANCHOR}).",
        "",
        render_markdown_table(header, rows(columns)),
    ]
    for column in columns:
        if column.error:
            lines.append(f"\n{column.kind} failed: {column.error}")
        for note in column.notes:
            lines.append(f"\n{column.kind}: {note}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/clients.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--clients", type=int, default=10000, metavar="N")
    parser.add_argument("--quick", action="store_true", help="1,000 clients, 5 s idle windows")
    parser.add_argument("--idle", type=float, default=10.0, metavar="SECONDS",
                        help="idle CPU window (default 10)")  # fmt: skip
    parser.add_argument("--only", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--output", type=Path, help="also write the table there")
    args = parser.parse_args(argv)
    clients, idle = (1000, 5.0) if args.quick else (args.clients, args.idle)
    if os.geteuid() != 0:
        print("benchmarks/clients.py: needs root (network namespaces)", file=sys.stderr)
        return 2

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    columns: list[Column] = []
    with exclusive_lock():
        for kind in args.only:
            log(f"{kind}: {clients} clients")
            try:
                if kind == ANCHOR:
                    binary = fetch(log=log).binary
                    columns.append(run_wggo(clients, idle, binary, log))
                else:
                    columns.append(run_tunplug(kind, clients, idle, log))
            except (RuntimeError, OSError, subprocess.SubprocessError, FetchError) as error:
                columns.append(Column(kind, error=str(error).strip()[:500]))
                log(f"  FAILED: {error}")
    table = render(columns, clients, idle)
    print(table)
    if args.output:
        args.output.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
