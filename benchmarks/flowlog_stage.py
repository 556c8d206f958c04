"""Cost per packet of the flow-log pipeline stage, against a bare per-packet loop as the anchor.

Who runs it: anyone, without root, when changing ``tunplug_flowlog.stage``::

    .venv/bin/python benchmarks/flowlog_stage.py            # about 10 seconds
    .venv/bin/python benchmarks/flowlog_stage.py --quick    # about 2 seconds

It calls the stage directly, the way the engine does: 100-packet batches of 1400-byte TCP
packets (IPv4 unless the row says otherwise). The anchor is the cheapest per-packet Python a
stage can do (a loop calling ``len`` on every packet), measured in the same run; compare the
ratios, not the nanoseconds, across machines. The last rows give the cost of flow churn (every
packet a new flow, so every packet also ends one and formats its JSON line) and of one idle
scan over a full table of 65536 flows at its worst (all old, none expired), which runs at
most once per second. The log goes to a
temporary directory that is removed afterwards. Nothing in CI runs this.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import tempfile
import time
from collections.abc import Callable
from functools import partial
from ipaddress import ip_address
from pathlib import Path

from tunplug.events import TunnelInfo
from tunplug.tun import Packet
from tunplug_flowlog.stage import (
    MAX_FLOWS,
    TCP_TRANSITORY_TIMEOUT,
    UDP_TIMEOUT,
    FlowLogStage,
)

BATCH = 100
PACKET_SIZE = 1400


def tcp_packet(src: str, dst: str, sport: int, dport: int, size: int = PACKET_SIZE) -> bytes:
    """A TCP/IP packet of ``size`` bytes with an ACK flag (checksums left zero)."""
    source, dest = ip_address(src), ip_address(dst)
    segment = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, 0x10, 65535, 0, 0)
    if source.version == 4:
        payload = bytes(size - 40)
        header = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, size, 0, 0x4000, 64, 6, 0, source.packed, dest.packed
        )
    else:
        payload = bytes(size - 60)
        header = struct.pack("!IHBB16s16s", 6 << 28, size - 40, 6, 64, source.packed, dest.packed)
    return header + segment + payload


def udp_packet(src: str, dst: str, sport: int, dport: int) -> bytes:
    """A small UDP/IPv4 packet (checksums left zero)."""
    payload = b"query"
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        28 + len(payload),
        0,
        0,
        64,
        17,
        0,
        ip_address(src).packed,
        ip_address(dst).packed,
    )
    return header + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def bare_loop(packets: list[Packet]) -> list[Packet]:
    """The anchor: the least a per-packet stage in Python does."""
    for packet in packets:
        len(packet)
    return packets


def time_batches(call: Callable[[list[Packet]], object], batches: list[list[Packet]]) -> float:
    """Nanoseconds per packet of ``call`` over ``batches`` (one pass)."""
    packets = sum(len(batch) for batch in batches)
    start = time.perf_counter_ns()
    for batch in batches:
        call(batch)
    return (time.perf_counter_ns() - start) / packets


def best_of(runs: int, measure: Callable[[], float]) -> float:
    """The median of the fastest half of ``runs`` measurements (noise only ever adds time)."""
    results = sorted(measure() for _ in range(runs))
    return statistics.median(results[: max(1, runs // 2)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    args = parser.parse_args()
    runs, batches_per_run = (5, 200) if args.quick else (15, 1000)
    tunnel = TunnelInfo(interface="bench0", tun_backend="fake", role="client")

    one_flow: list[Packet] = [tcp_packet("10.0.0.2", "10.0.0.1", 40000, 5201)] * BATCH
    one_flow_v6: list[Packet] = [tcp_packet("fd00::2", "fd00::1", 40000, 5201)] * BATCH
    many_flows: list[Packet] = [
        tcp_packet("10.0.0.2", "10.0.0.1", 40000 + n, 5201) for n in range(BATCH)
    ]
    rows: list[tuple[str, float]] = []

    with tempfile.TemporaryDirectory() as directory:
        stage = FlowLogStage(Path(directory), tunnel)
        cases: list[tuple[str, Callable[[list[Packet]], object], list[Packet]]] = [
            ("anchor: bare per-packet loop", bare_loop, one_flow),
            ("flow-log outbound, 1 flow", stage.outbound, one_flow),
            ("flow-log inbound, 1 flow", stage.inbound, one_flow),
            ("flow-log outbound, 1 flow, IPv6", stage.outbound, one_flow_v6),
            ("flow-log outbound, 100 flows", stage.outbound, many_flows),
        ]
        for label, call, batch in cases:
            batches = [batch] * batches_per_run
            rows.append((label, best_of(runs, partial(time_batches, call, batches))))
        stage.close()

        # Churn: a table kept full, so every packet starts a flow and evicts (logs) another.
        churn = FlowLogStage(Path(directory), tunnel, max_flows=1000)
        ports = iter(range(1 << 30))

        def churn_run() -> float:
            # 20 batches of 100 packets, each one of a flow not seen before (with 20 bytes of
            # data, so it starts a flow; the size does not matter here).
            batches: list[list[Packet]] = []
            for _ in range(20):
                numbers = [next(ports) for _ in range(BATCH)]
                batches.append(
                    [
                        tcp_packet("10.0.0.2", "10.0.0.1", 1 + (n >> 16), n & 0xFFFF, 60)
                        for n in numbers
                    ]
                )
            return time_batches(churn.outbound, batches)

        rows.append(("flow-log, every packet a new flow", best_of(max(3, runs // 3), churn_run)))
        churn.close()

        # The idle scan at its worst: every flow older than the shortest timeout (so each is
        # looked at closely) and none expired yet (so each is looked at again next second).
        clock = [time.time()]
        full = FlowLogStage(Path(directory), tunnel, clock=lambda: clock[0])
        for start in range(0, MAX_FLOWS, BATCH):
            full.outbound(
                [
                    udp_packet("10.0.0.2", "10.0.0.1", 1 + (n >> 16), n & 0xFFFF)
                    for n in range(start, start + BATCH)
                ]
            )
        assert full.open_flows == MAX_FLOWS
        clock[0] += TCP_TRANSITORY_TIMEOUT + 1
        assert TCP_TRANSITORY_TIMEOUT + 1 + runs < UDP_TIMEOUT  # each scan adds a second
        scan = best_of(runs, partial(_time_scan, full, clock))
        assert full.open_flows == MAX_FLOWS
        full.close()

    anchor = rows[0][1]
    print(f"flow-log stage, {BATCH}-packet batches of {PACKET_SIZE}-byte TCP packets")
    print(f"{'case':<40} {'ns/packet':>10} {'x anchor':>9}")
    for label, nanoseconds in rows:
        print(f"{label:<40} {nanoseconds:>10.0f} {nanoseconds / anchor:>9.1f}")
    print(f"idle scan of {MAX_FLOWS} open flows (at most once a second): {scan / 1e6:.1f} ms")


def _time_scan(stage: FlowLogStage, clock: list[float]) -> float:
    """Nanoseconds of one housekeeping pass, a second after the last one."""
    clock[0] += 1.0
    start = time.perf_counter_ns()
    stage.tick()
    return float(time.perf_counter_ns() - start)


if __name__ == "__main__":
    main()
