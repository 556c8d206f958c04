"""FlowLogStage fed hand-built packets: what it counts, when a flow ends, what the line says."""

from __future__ import annotations

import struct

import pytest

from tunplug.events import TunnelInfo
from tunplug.testing.packets import icmp_echo, udp
from tunplug_flowlog import stage as stage_module

from ._helpers import ACK, FIN, PSH, RST, SYN, T0, read_log, tcp

V4 = ("10.0.0.2", "10.0.0.1")
V6 = ("fd00::2", "fd00::1")


def _conversation(device: str, remote: str, options: bytes = b""):
    """A whole TCP connection opened by the device side: (direction, packet) in order."""
    d, r = device, remote
    return [
        ("out", tcp(d, r, 40000, 80, SYN)),
        ("in", tcp(r, d, 80, 40000, SYN | ACK)),
        ("out", tcp(d, r, 40000, 80, ACK)),
        ("out", tcp(d, r, 40000, 80, PSH | ACK, b"G" * 100, options=options)),
        ("in", tcp(r, d, 80, 40000, ACK, b"x" * 1000, options=options)),
        ("in", tcp(r, d, 80, 40000, PSH | ACK, b"y" * 500)),
        ("out", tcp(d, r, 40000, 80, FIN | ACK)),
        ("in", tcp(r, d, 80, 40000, FIN | ACK)),
        ("out", tcp(d, r, 40000, 80, ACK)),  # the last ACK, in the batch after both FINs
    ]


def _feed(stage, steps):
    for direction, packet in steps:
        (stage.outbound if direction == "out" else stage.inbound)([packet])


@pytest.mark.parametrize(("device", "remote"), [V4, V6], ids=["ipv4", "ipv6"])
def test_a_tcp_conversation_is_one_line_with_exact_counts(
    make_stage, log_dir, clock, device, remote
):
    stage = make_stage()
    steps = _conversation(device, remote, options=b"\x01\x01\x01\x01" * 3)  # data offset 32
    _feed(stage, steps[:-1])
    clock.now += 0.5
    _feed(stage, steps[-1:])
    assert stage.open_flows == 0, "the flow ended at the batch after both FINs"

    clock.now += 1.0
    stage.tick()  # a second later the line is on disk, before any close
    [line] = read_log(log_dir)
    out = [p for d, p in steps if d == "out"]
    inb = [p for d, p in steps if d == "in"]
    assert line == {
        "start": T0,
        "end": T0 + 0.5,
        "protocol": "tcp",
        "src": device,
        "sport": 40000,
        "dst": remote,
        "dport": 80,
        "client": remote,
        "interface": "tun-test",
        "role": "client",
        "bytes_out": sum(map(len, out)),
        "bytes_in": sum(map(len, inb)),
        "packets_out": 5,
        "packets_in": 4,
        "payload_out": 100,
        "payload_in": 1500,
        "reason": "fin",
    }


def test_the_stage_returns_the_very_batch_it_was_given(make_stage):
    stage = make_stage()
    batch = [tcp(*V4, 1, 2, SYN), bytearray(udp(*V4, 3, 4, b"u")), b"\x00" * 3]
    copy = [bytes(p) for p in batch]
    assert stage.outbound(batch) is batch
    assert stage.inbound(batch) is batch
    assert [bytes(p) for p in batch] == copy


def test_bytearray_and_memoryview_packets_are_counted_like_bytes(make_stage, log_dir):
    stage = make_stage()
    packet = udp(*V4, 5000, 53, b"q" * 10)
    stage.outbound([packet, bytearray(packet), memoryview(packet)])
    stage.inbound([memoryview(bytearray(udp(V4[1], V4[0], 53, 5000, b"a" * 30)))])
    stage.close()
    [line] = read_log(log_dir)
    assert (line["packets_out"], line["payload_out"], line["bytes_out"]) == (3, 30, 3 * 38)
    assert (line["packets_in"], line["payload_in"], line["reason"]) == (1, 30, "shutdown")


def test_tcp_in_bytearrays_and_memoryviews_of_bytearrays_is_counted(make_stage, log_dir):
    stage = make_stage()
    syn = tcp(*V4, 7, 8, SYN)
    data = tcp(*V4, 7, 8, ACK, b"d" * 9)
    stage.outbound([bytearray(syn), memoryview(bytearray(data)), memoryview(data)])
    stage.inbound([bytearray(tcp(*V6, 7, 8, ACK, b"v6"))])
    stage.close()
    v4, v6 = read_log(log_dir)
    assert (v4["packets_out"], v4["payload_out"], v4["bytes_out"]) == (3, 18, 40 + 2 * 49)
    assert (v6["src"], v6["packets_in"], v6["payload_in"]) == (V6[0], 1, 2)


def test_rst_ends_the_flow_and_trailing_segments_start_none(make_stage, log_dir, clock):
    stage = make_stage()
    syn = tcp(*V4, 40001, 443, SYN)
    rst = tcp(V4[1], V4[0], 443, 40001, RST | ACK)
    stage.outbound([syn])
    stage.inbound([rst])
    stage.outbound([tcp(*V4, 40001, 443, ACK)])  # the batch after: the line is written
    assert stage.open_flows == 0
    stage.inbound([rst, tcp(V4[1], V4[0], 443, 40001, FIN | ACK)])  # strays: no new flow
    assert stage.open_flows == 0
    stage.close()
    [line] = read_log(log_dir)
    assert line["reason"] == "rst"
    assert (line["packets_out"], line["packets_in"]) == (2, 1)
    assert line["bytes_in"] == len(rst)


def test_a_syn_on_a_just_ended_flow_starts_a_new_one(make_stage, log_dir):
    stage = make_stage()
    steps = _conversation(*V4)[:-1]
    _feed(stage, steps)
    stage.outbound([tcp(*V4, 40000, 80, SYN)])  # the 5-tuple reused at once
    stage.close()
    first, second = read_log(log_dir)
    assert (first["reason"], first["packets_out"]) == ("fin", 4)
    assert (second["reason"], second["packets_out"], second["packets_in"]) == ("shutdown", 1, 0)


def test_a_flow_first_seen_inbound_has_the_peer_side_as_source_and_client(tmp_path, clock):
    names = {"10.0.0.9": "laptop"}
    tunnel = TunnelInfo(interface="wg-gw", tun_backend="fake", role="gateway", peer_name=names.get)
    stage = stage_module.FlowLogStage(tmp_path, tunnel, clock=clock)
    stage.inbound([udp("10.0.0.9", "192.168.1.5", 5353, 53, b"query")])
    stage.outbound([udp("192.168.1.5", "10.0.0.9", 53, 5353, b"answer!")])
    stage.inbound([udp("10.0.0.7", "192.168.1.5", 5353, 53, b"unknown client")])
    stage.close()
    first, second = read_log(tmp_path)
    assert (first["src"], first["sport"], first["dst"], first["dport"]) == (
        "10.0.0.9",
        5353,
        "192.168.1.5",
        53,
    )
    assert (first["client"], first["role"], first["interface"]) == ("laptop", "gateway", "wg-gw")
    assert (first["payload_in"], first["payload_out"]) == (5, 7)
    assert second["client"] == "10.0.0.7"  # peer_name returned None: the address


def test_a_failing_peer_name_falls_back_to_the_address(tmp_path, clock):
    def broken(address: str) -> str | None:
        raise RuntimeError("lookup failed")

    tunnel = TunnelInfo(interface="wg0", tun_backend="fake", role="gateway", peer_name=broken)
    stage = stage_module.FlowLogStage(tmp_path, tunnel, clock=clock)
    stage.inbound([udp("10.0.0.9", "10.0.0.1", 1, 2, b"x")])
    stage.close()
    assert read_log(tmp_path)[0]["client"] == "10.0.0.9"


@pytest.mark.parametrize(("device", "remote", "name"), [(*V4, "icmp"), (*V6, "icmpv6")])
def test_an_echo_exchange_is_one_icmp_flow_without_ports(make_stage, log_dir, device, remote, name):
    stage = make_stage()
    request = icmp_echo(device, remote, 7, 1, b"ping" * 4)
    stage.outbound([request])
    stage.inbound([icmp_echo(remote, device, 7, 1, b"ping" * 4, reply=True)])
    stage.close()
    [line] = read_log(log_dir)
    assert (line["protocol"], line["sport"], line["dport"]) == (name, 0, 0)
    assert (line["packets_out"], line["packets_in"], line["bytes_out"]) == (1, 1, len(request))
    assert line["payload_out"] == 8 + 16  # for ICMP: everything after the IP header


def test_tcp_and_udp_with_the_same_ports_are_different_flows(make_stage, log_dir):
    stage = make_stage()
    stage.outbound([tcp(*V4, 1000, 2000, SYN), udp(*V4, 1000, 2000, b"d")])
    stage.close()
    assert sorted(line["protocol"] for line in read_log(log_dir)) == ["tcp", "udp"]


def _with_ipv4_options(packet: bytes) -> bytes:
    """``packet`` with 8 bytes of IPv4 options (NOPs) inserted; checksums left stale."""
    header = bytearray(packet[:20]) + b"\x01" * 8
    header[0] = 0x47
    struct.pack_into("!H", header, 2, len(packet) + 8)
    return bytes(header) + packet[20:]


def test_ipv4_options_shift_the_ports_and_are_not_payload(make_stage, log_dir):
    stage = make_stage()
    plain = udp(*V4, 1111, 2222, b"z" * 40)
    stage.outbound([_with_ipv4_options(plain), plain])
    stage.close()
    [line] = read_log(log_dir)
    assert (line["sport"], line["dport"], line["packets_out"]) == (1111, 2222, 2)
    assert (line["payload_out"], line["bytes_out"]) == (80, 2 * len(plain) + 8)


def _malformed() -> list[bytes]:
    good_tcp = tcp(*V4, 1, 2, SYN, b"data")
    bad_offset = bytearray(good_tcp)
    bad_offset[20 + 12] = 0x20  # data offset 8 bytes: less than a TCP header
    past_end = bytearray(good_tcp)
    past_end[20 + 12] = 0xF0  # data offset 60 bytes: past the end of the packet
    fragment = bytearray(udp(*V4, 1, 2, b"frag"))
    fragment[6:8] = b"\x00\x10"  # fragment offset 16 (x 8 bytes): no UDP header here
    short_ihl = bytearray(udp(*V4, 1, 2, b"x"))
    short_ihl[0] = 0x43
    return [
        b"",
        b"\x45",
        bytes(19),
        good_tcp[:30],  # IPv4 header, half a TCP header
        bytes(bad_offset),
        bytes(past_end),
        udp(*V4, 1, 2, b"")[:25],  # half a UDP header
        bytes(fragment),
        bytes(short_ihl),
        udp(*V6, 1, 2, b"six")[:39],  # shorter than the IPv6 header
        udp(*V6, 1, 2, b"six")[:44],  # IPv6 header, half a UDP header
        b"\x50" + bytes(40),  # IP version 5
    ]


def test_malformed_packets_pass_untouched_and_are_not_flows(make_stage, log_dir):
    stage = make_stage()
    batch = _malformed()
    copy = list(batch)
    assert stage.outbound(batch) is batch
    assert stage.inbound(batch) is batch
    assert batch == copy
    assert stage.open_flows == 0
    stage.close()
    assert read_log(log_dir) == []


def test_an_unknown_tcp_segment_without_syn_or_data_starts_no_flow(make_stage):
    stage = make_stage()
    stage.outbound([tcp(*V4, 5, 6, ACK), tcp(*V4, 5, 6, FIN | ACK), tcp(*V4, 5, 6, RST)])
    assert stage.open_flows == 0
    stage.outbound([tcp(*V4, 5, 6, ACK, b"mid-stream data")])  # joined mid-stream: tracked
    assert stage.open_flows == 1


@pytest.mark.parametrize(
    ("packets", "timeout"),
    [
        ([udp(*V4, 1, 53, b"q")], stage_module.UDP_TIMEOUT),
        ([icmp_echo(*V4, 1, 1)], stage_module.ICMP_TIMEOUT),
        ([tcp(*V4, 1, 80, SYN)], stage_module.TCP_TRANSITORY_TIMEOUT),
    ],
    ids=["udp", "icmp", "tcp-handshake"],
)
def test_idle_flows_end_after_their_timeout(make_stage, log_dir, clock, packets, timeout):
    stage = make_stage()
    stage.outbound(packets)
    clock.now = T0 + timeout - 0.5
    stage.outbound([])
    assert stage.open_flows == 1
    clock.now = T0 + timeout + 0.5
    stage.outbound([])
    assert stage.open_flows == 0
    [line] = read_log(log_dir)
    assert (line["reason"], line["start"], line["end"]) == ("idle", T0, T0)


def test_an_established_tcp_flow_gets_the_long_timeout(make_stage, log_dir, clock):
    stage = make_stage()
    stage.outbound([tcp(*V4, 1, 80, SYN)])
    stage.inbound([tcp(V4[1], V4[0], 80, 1, SYN | ACK)])
    clock.now = T0 + stage_module.TCP_TRANSITORY_TIMEOUT + 1
    stage.tick()
    assert stage.open_flows == 1
    clock.now = T0 + stage_module.TCP_ESTABLISHED_TIMEOUT + 1
    stage.tick()
    assert [line["reason"] for line in read_log(log_dir)] == ["idle"]


def test_idle_expiry_is_checked_at_most_once_per_second(make_stage, clock, monkeypatch):
    stage = make_stage()
    scans = 0
    housekeeping = stage._housekeeping

    def counting(now: float) -> None:
        nonlocal scans
        scans += 1
        housekeeping(now)

    monkeypatch.setattr(stage, "_housekeeping", counting)
    for step in range(50):  # 50 batches over 2.45 s
        clock.now = T0 + step * 0.05
        stage.outbound([udp(*V4, step, 53, b"q")])
    assert scans == 3  # at 0, 1.0 and 2.0 s


def test_beyond_max_flows_the_oldest_is_evicted_and_counted(make_stage, log_dir):
    stage = make_stage(max_flows=3)
    stage.outbound([udp(*V4, port, 53, b"q") for port in range(1, 6)])
    assert (stage.open_flows, stage.evicted) == (3, 2)
    stage.close()
    lines = read_log(log_dir)
    assert [(line["sport"], line["reason"]) for line in lines] == [
        (1, "evicted"),
        (2, "evicted"),
        (3, "shutdown"),
        (4, "shutdown"),
        (5, "shutdown"),
    ]


def test_close_logs_open_flows_as_shutdown_and_stops_counting(make_stage, log_dir):
    stage = make_stage()
    stage.outbound([udp(*V4, 1, 53, b"q")])
    stage.close()
    stage.close()  # idempotent
    packet = udp(*V4, 2, 53, b"after")
    assert stage.outbound([packet]) == [packet]
    assert stage.open_flows == 0
    assert [line["reason"] for line in read_log(log_dir)] == ["shutdown"]


def test_a_flow_that_ended_keeps_its_reason_at_close(make_stage, log_dir):
    stage = make_stage()
    _feed(stage, _conversation(*V4)[:-1])  # both FINs, no batch after them
    stage.close()
    assert [line["reason"] for line in read_log(log_dir)] == ["fin"]


def test_lines_are_written_before_close_once_a_second_has_passed(make_stage, log_dir, clock):
    stage = make_stage(max_flows=1)
    stage.outbound([udp(*V4, 1, 53, b"q"), udp(*V4, 2, 53, b"q")])  # evicts the first
    assert read_log(log_dir) == []  # buffered
    clock.now += 0.4
    stage.inbound([udp(V4[1], V4[0], 53, 2, b"a")])
    assert read_log(log_dir) == []  # less than a second: still buffered
    clock.now += 0.7
    stage.inbound([udp(V4[1], V4[0], 53, 2, b"a")])
    assert [line["sport"] for line in read_log(log_dir)] == [1]
