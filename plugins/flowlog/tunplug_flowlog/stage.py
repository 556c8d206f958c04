"""The flow-log pipeline stage: tracks flows batch by batch and logs each one when it ends.

Who calls it: the tunnel engine, through the pipeline, once per batch in each direction (the
stage comes from :func:`tunplug_flowlog.plugin.tunplug_pipeline_stages` when ``--flow-logs`` is
set); the plugin's ``tunplug_tunnel_down`` calls :meth:`FlowLogStage.close`. The stage only
observes: it returns the list it was given, untouched.

A flow is (protocol, address, port, address, port) with both directions folded into one entry:
each flow is stored under its key and under the reversed key, so a packet costs one slice and
one dict lookup whichever way it goes. Outbound packets (device -> peer) count into ``*_out``,
inbound (peer -> device) into ``*_in``. ``payload_*`` is what follows the TCP or UDP header
(the TCP data offset is respected); for other protocols it is what follows the IP header. IPv6
extension headers are not walked: a packet whose fixed header's next header is not TCP or UDP
is a flow of that next-header number, without ports. Non-first IPv4 fragments carry no ports
and are not counted; anything too short or not IPv4/IPv6 is passed on and not counted.

A flow ends, and its line is written, when:

- TCP: FIN was seen in both directions, or RST in either ("fin", "rst"); the line is written
  at the end of the next batch call, so the last ACK of a close is usually counted too;
- nothing was seen for the idle timeout below ("idle"), checked at most once per second, from
  within batch calls (:data:`HOUSEKEEPING_INTERVAL`) or :meth:`FlowLogStage.tick`;
- :data:`MAX_FLOWS` flows are open and another one starts: the oldest goes ("evicted");
- the stage closes ("shutdown"; a flow that had already ended keeps its reason).

A TCP packet that finds no flow starts one only if it carries SYN or payload and no RST, so the
stray ACKs, FINs and RSTs that trail a logged connection do not show up as flows of their own.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from tunplug.events import TunnelInfo
from tunplug.tun import Packet
from tunplug_flowlog.writer import KEEP_ROTATED, RotatingLineWriter

log = logging.getLogger(__name__)

#: Idle timeouts in seconds. TCP is "established" once packets went both ways.
TCP_ESTABLISHED_TIMEOUT = 120.0
TCP_TRANSITORY_TIMEOUT = 30.0
UDP_TIMEOUT = 60.0
ICMP_TIMEOUT = 30.0
OTHER_TIMEOUT = 60.0
_SHORTEST_TIMEOUT = min(TCP_TRANSITORY_TIMEOUT, UDP_TIMEOUT, ICMP_TIMEOUT, OTHER_TIMEOUT)

#: Open flows at most; beyond that the oldest is logged with reason "evicted".
MAX_FLOWS = 65536
#: Idle flows are looked for, and buffered lines written, at most this often (seconds).
HOUSEKEEPING_INTERVAL = 1.0
#: Buffered lines that make a batch call write them at once rather than at the next second.
FLUSH_LINES = 4096

_TCP, _UDP, _ICMP, _ICMPV6 = 6, 17, 1, 58
_FIN, _SYN, _RST = 0x01, 0x02, 0x04
_PROTOCOL_NAMES: dict[int, str] = {_TCP: "tcp", _UDP: "udp", _ICMP: "icmp", _ICMPV6: "icmpv6"}

# A flow is a plain list, indexed by these constants: the hot loop updates counters with
# list-int subscripts, which CPython specialises, and a direction picks its three indices once
# per batch. Outbound counters are 0..2, inbound 3..5, so "inbound" is "outbound + 3".
BYTES_OUT, PACKETS_OUT, PAYLOAD_OUT = 0, 1, 2
BYTES_IN, PACKETS_IN, PAYLOAD_IN = 3, 4, 5
LAST = 6  # time of the last packet
START = 7
KEY = 8  # the key of the first packet seen (its source is the initiator)
REVERSE = 9  # the key of the other direction
PROTOCOL = 10
OUTBOUND_FIRST = 11  # True when the first packet was outbound (the device side initiated)
CLIENT = 12
FINS = 13  # bit 1: FIN seen outbound, bit 2: FIN seen inbound
REASON = 14  # None while open; why it ended once it did
TABLE = 15  # the dict the flow is stored in (by KEY and REVERSE)

Flow = list[Any]


class FlowLogStage:
    """Logs finished flows of one tunnel to ``directory/flows.jsonl``.

    ``clock`` returns Unix time (``start``/``end`` in the log, idle timeouts); tests inject one.
    ``max_bytes`` is the size at which the file is rotated (``keep`` rotated files are kept).
    :raises OSError: ``directory`` cannot be created.
    """

    name = "flow-log"

    def __init__(
        self,
        directory: Path,
        tunnel: TunnelInfo,
        *,
        max_bytes: int = 50 * 1024 * 1024,
        keep: int = KEEP_ROTATED,
        max_flows: int = MAX_FLOWS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_flows < 1:
            raise ValueError("max_flows must be positive")
        self.tunnel = tunnel
        self.writer = RotatingLineWriter(directory, max_bytes, keep)
        self.max_flows = max_flows
        self.clock = clock
        #: Flows logged with reason "evicted" because :attr:`max_flows` were open.
        self.evicted = 0
        #: Lines handed to the writer (written or buffered).
        self.flows_logged = 0
        self._tcp: dict[bytes, Flow] = {}
        self._udp: dict[bytes, Flow] = {}
        self._other: dict[tuple[int, bytes], Flow] = {}
        #: Every open flow once, oldest first (dicts keep insertion order): eviction and expiry.
        self._open: dict[int, Flow] = {}
        self._ended_now: list[Flow] = []  # ended during the current batch call
        self._ended_before: list[Flow] = []  # ended during the previous one: written next
        self._next_housekeeping = 0.0
        self._closed = False
        self._static = {"interface": tunnel.interface, "role": tunnel.role}

    @property
    def open_flows(self) -> int:
        return len(self._open)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the Stage protocol -------------------------------------------------------------------
    def outbound(self, packets: list[Packet]) -> list[Packet]:
        """Count packets read from the device (device -> peer); return them unchanged."""
        if not self._closed:
            self._observe(packets, BYTES_OUT, True)
        return packets

    def inbound(self, packets: list[Packet]) -> list[Packet]:
        """Count packets from the peer (peer -> device); return them unchanged."""
        if not self._closed:
            self._observe(packets, BYTES_IN, False)
        return packets

    # -- housekeeping and shutdown ------------------------------------------------------------
    def tick(self) -> None:
        """Expire idle flows and write buffered lines if a second has passed since last time.

        Batch calls do this themselves; a caller with a timer may call it when traffic stops,
        so that the last lines do not wait for the next packet.
        """
        if self._closed:
            return
        now = self.clock()
        if now >= self._next_housekeeping:
            self._housekeeping(now)

    def close(self) -> None:
        """Log every remaining flow (reason "shutdown" unless it had ended) and write them all.

        Idempotent. Batches passed to a closed stage go through uncounted.
        """
        if self._closed:
            return
        self._closed = True
        for flow in self._ended_before + self._ended_now:
            self._log(flow, flow[REASON])
        self._ended_before, self._ended_now = [], []
        for flow in list(self._open.values()):
            self._log(flow, "shutdown")
        self.writer.flush()

    # -- internals ----------------------------------------------------------------------------
    def _observe(self, packets: list[Packet], first_counter: int, outbound: bool) -> None:
        now = self.clock()
        if now >= self._next_housekeeping:
            self._housekeeping(now)
        tcp, udp = self._tcp, self._udp
        count_bytes, count_packets, count_payload = (
            first_counter,
            first_counter + 1,
            first_counter + 2,
        )
        # A slice of a bytes packet that is a memoryview hashes and compares like bytes, so
        # it may be looked up as it is; only a flow's stored key must be real bytes.
        tcp_get = cast("Callable[[Packet], Flow | None]", tcp.get)
        tcp_flags, new_flow = self._tcp_flags, self._new_flow
        for packet in packets:
            size = len(packet)
            first = packet[0] if size >= 40 else 0  # 40: IPv4 + TCP, or IPv6, headers
            if first == 0x45 and packet[9] == 6:
                # The fast path: TCP in IPv4 without options, indices written out.
                fragment = packet[6]  # flags and offset; 0x40 (DF) in nearly all TCP
                if fragment != 0x40 and (fragment & 0x1F or packet[7]):
                    continue  # a non-first fragment: no TCP header to read
                header = (packet[32] >> 2) & 0x3C  # the data offset, in bytes
                if header < 20 or size < 20 + header:
                    continue
                key = packet[12:24]
                try:
                    flow = tcp_get(key)
                except (TypeError, ValueError):  # slices of bytearrays cannot be hashed
                    key = bytes(key)
                    flow = tcp_get(key)
                payload = size - 20 - header
                flags = packet[33]
                if flow is None:
                    if flags & 0x04 or not (payload or flags & 0x02):  # RST; neither SYN nor data
                        continue
                    flow = new_flow(tcp, bytes(key), 6, outbound, now)
                if flags & 0x07:  # FIN, SYN or RST
                    flow = tcp_flags(flow, flags, outbound, now)
                flow[count_bytes] += size
                flow[count_packets] += 1
                flow[count_payload] += payload
                flow[LAST] = now
                continue
            if size < 20:
                continue
            first = packet[0]
            if first == 0x45:
                if packet[6] & 0x1F or packet[7]:
                    continue  # a non-first fragment: no ports to key it on
                protocol = packet[9]
                offset, key_start = 20, 12
            elif first >> 4 == 6:
                if size < 40:
                    continue
                protocol = packet[6]
                offset, key_start = 40, 8
            elif first >> 4 == 4:
                offset = (first & 0x0F) * 4
                if offset < 20 or size < offset or packet[6] & 0x1F or packet[7]:
                    continue
                protocol = packet[9]
                key_start = -1  # options sit between the addresses and the ports
            else:
                continue
            if protocol == _TCP:
                if size < offset + 20:
                    continue
                header = (packet[offset + 12] >> 4) * 4
                if header < 20 or size < offset + header:
                    continue
                if key_start >= 0:
                    key = packet[key_start : offset + 4]
                else:
                    key = bytes(packet[12:20]) + bytes(packet[offset : offset + 4])
                if type(key) is not bytes:
                    key = bytes(key)
                payload = size - offset - header
                flags = packet[offset + 13]
                flow = tcp_get(key)
                if flow is None:
                    if flags & _RST or not (payload or flags & _SYN):
                        continue
                    flow = new_flow(tcp, key, _TCP, outbound, now)
                if flags & 0x07:
                    flow = tcp_flags(flow, flags, outbound, now)
            elif protocol == _UDP:
                if size < offset + 8:
                    continue
                if key_start >= 0:
                    key = packet[key_start : offset + 4]
                else:
                    key = bytes(packet[12:20]) + bytes(packet[offset : offset + 4])
                if type(key) is not bytes:
                    key = bytes(key)
                payload = size - offset - 8
                flow = udp.get(key)
                if flow is None:
                    flow = new_flow(udp, key, _UDP, outbound, now)
            else:
                flow = self._other_flow(packet, protocol, first, outbound, now)
                payload = size - offset
            flow[count_bytes] += size
            flow[count_packets] += 1
            flow[count_payload] += payload
            flow[LAST] = now
        if self._ended_before or self._ended_now:
            for flow in self._ended_before:
                self._log(flow, flow[REASON])
            self._ended_before, self._ended_now = self._ended_now, []
        if self.writer.pending >= FLUSH_LINES:
            self.writer.flush()

    def _new_flow(
        self, table: dict[Any, Flow], key: Any, protocol: int, outbound: bool, now: float
    ) -> Flow:
        if len(self._open) >= self.max_flows:
            oldest = next(iter(self._open.values()))
            if oldest[REASON] is None:
                self.evicted += 1
            self._log(oldest, oldest[REASON] or "evicted")
        if isinstance(key, bytes):
            half = (len(key) - 4) // 2  # two addresses, then two ports
            reverse: Any = key[half : 2 * half] + key[:half] + key[-2:] + key[-4:-2]
            remote = key[half : 2 * half] if outbound else key[:half]
        else:
            addresses = key[1]
            half = len(addresses) // 2
            reverse = (protocol, addresses[half:] + addresses[:half])
            remote = addresses[half:] if outbound else addresses[:half]
        client = self._client(remote)
        # BYTES_OUT .. PAYLOAD_IN, LAST, START, KEY, REVERSE, PROTOCOL, OUTBOUND_FIRST, CLIENT,
        # FINS, REASON, TABLE
        flow: Flow = [0, 0, 0, 0, 0, 0, now, now, key, reverse, protocol, outbound, client]
        flow.extend((0, None, table))
        table[key] = flow
        table[reverse] = flow
        self._open[id(flow)] = flow
        return flow

    def _other_flow(
        self, packet: Packet, protocol: int, first: int, outbound: bool, now: float
    ) -> Flow:
        addresses = packet[12:20] if first >> 4 == 4 else packet[8:40]
        key = (protocol, bytes(addresses))
        flow = self._other.get(key)
        if flow is None:
            flow = self._new_flow(self._other, key, protocol, outbound, now)
        return flow

    def _tcp_flags(self, flow: Flow, flags: int, outbound: bool, now: float) -> Flow:
        """SYN, FIN or RST on a TCP flow: may end it, or (SYN after the end) start a new one."""
        if flow[REASON] is not None:
            if flags & _SYN and not flags & _RST:  # the 5-tuple is reused for a new connection
                ended = flow[REASON]
                self._log(flow, ended)
                key = flow[KEY] if flow[OUTBOUND_FIRST] == outbound else flow[REVERSE]
                flow = self._new_flow(self._tcp, key, _TCP, outbound, now)
            return flow
        if flags & _RST:
            self._end(flow, "rst")
        elif flags & _FIN:
            flow[FINS] |= 1 if outbound else 2
            if flow[FINS] == 3:
                self._end(flow, "fin")
        return flow

    def _end(self, flow: Flow, reason: str) -> None:
        """Mark ``flow`` as ended; it stays in its table (and counts) until it is logged."""
        flow[REASON] = reason
        self._ended_now.append(flow)

    def _housekeeping(self, now: float) -> None:
        self._next_housekeeping = now + HOUSEKEEPING_INTERVAL
        for flow in [f for f in self._open.values() if now - f[LAST] >= _SHORTEST_TIMEOUT]:
            if flow[REASON] is None and now - flow[LAST] >= _timeout(flow):
                self._log(flow, "idle")
        self.writer.flush()

    def _log(self, flow: Flow, reason: str) -> None:
        """Remove ``flow`` from the tables and buffer its line (once; later calls do nothing)."""
        if self._open.pop(id(flow), None) is None:
            return
        table = flow[TABLE]
        table.pop(flow[KEY], None)
        table.pop(flow[REVERSE], None)
        self.writer.add(self._line(flow, reason))
        self.flows_logged += 1

    def _line(self, flow: Flow, reason: str) -> bytes:
        protocol: int = flow[PROTOCOL]
        key = flow[KEY]
        if isinstance(key, bytes):
            half = (len(key) - 4) // 2
            src, dst = key[:half], key[half : 2 * half]
            sport, dport = int.from_bytes(key[-4:-2], "big"), int.from_bytes(key[-2:], "big")
        else:
            addresses = key[1]
            half = len(addresses) // 2
            src, dst, sport, dport = addresses[:half], addresses[half:], 0, 0
        record = {
            "start": round(flow[START], 6),
            "end": round(flow[LAST], 6),
            "protocol": _PROTOCOL_NAMES.get(protocol, protocol),
            "src": _address(src),
            "sport": sport,
            "dst": _address(dst),
            "dport": dport,
            "client": flow[CLIENT],
            **self._static,
            "bytes_out": flow[BYTES_OUT],
            "bytes_in": flow[BYTES_IN],
            "packets_out": flow[PACKETS_OUT],
            "packets_in": flow[PACKETS_IN],
            "payload_out": flow[PAYLOAD_OUT],
            "payload_in": flow[PAYLOAD_IN],
            "reason": reason,
        }
        return (json.dumps(record, separators=(",", ":")) + "\n").encode()

    def _client(self, remote: bytes) -> str:
        """Who is on the far side of the tunnel: ``peer_name(address)``, else the address."""
        address = _address(remote)
        lookup = self.tunnel.peer_name
        if lookup is None:
            return address
        try:
            name = lookup(address)
        except Exception:  # a plugin's lookup must not break the data path
            log.exception("peer_name(%r) failed", address)
            return address
        return name if name is not None else address


def _timeout(flow: Flow) -> float:
    protocol = flow[PROTOCOL]
    if protocol == _TCP:
        if flow[PACKETS_OUT] and flow[PACKETS_IN]:
            return TCP_ESTABLISHED_TIMEOUT
        return TCP_TRANSITORY_TIMEOUT
    if protocol == _UDP:
        return UDP_TIMEOUT
    if protocol in (_ICMP, _ICMPV6):
        return ICMP_TIMEOUT
    return OTHER_TIMEOUT


def _address(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)
