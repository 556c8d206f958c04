"""TSO/USO split and TCP coalescing of the linux-mq backend (pure functions, no root).

Checksums are verified with the slow textbook sum of 16-bit words below, independent of
:mod:`tunplug.checksum` that the backend uses.
"""

from __future__ import annotations

import struct
from ipaddress import ip_address

import pytest

from tunplug_tun_linux_mq import offload
from tunplug_tun_linux_mq.offload import (
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    NEEDS_CSUM,
    VNET_HDR,
    OffloadError,
    coalesce,
    split,
)

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
A4, B4, A6, B6 = "10.1.0.1", "10.1.0.2", "fd01::1", "fd01::2"


# -- an independent checksum and packet builders ---------------------------------------------


def word_sum(data: bytes) -> int:
    """Ones'-complement sum of 16-bit words, the slow way (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo(src: str, dst: str, protocol: int, length: int) -> bytes:
    s, d = ip_address(src), ip_address(dst)
    if s.version == 4:
        return s.packed + d.packed + struct.pack("!BBH", 0, protocol, length)
    return s.packed + d.packed + struct.pack("!IxxxB", length, protocol)


def l4_valid(packet: bytes) -> bool:
    """Whether the TCP/UDP checksum of ``packet`` verifies (IPv6: no extension headers)."""
    if packet[0] >> 4 == 4:
        l4 = (packet[0] & 15) * 4
        src, dst, proto = str(ip_address(packet[12:16])), str(ip_address(packet[16:20])), packet[9]
    else:
        l4 = 40
        src, dst, proto = str(ip_address(packet[8:24])), str(ip_address(packet[24:40])), packet[6]
    segment = packet[l4:]
    return word_sum(pseudo(src, dst, proto, len(segment)) + segment) == 0xFFFF


def ip_valid(packet: bytes) -> bool:
    if packet[0] >> 4 == 6:
        return struct.unpack_from("!H", packet, 4)[0] + 40 == len(packet)
    ihl = (packet[0] & 15) * 4
    return word_sum(packet[:ihl]) == 0xFFFF and struct.unpack_from("!H", packet, 2)[0] == len(
        packet
    )


def ip_header(
    src: str,
    dst: str,
    protocol: int,
    l4_length: int,
    *,
    ident: int = 7,
    ttl: int = 64,
    tos: int = 0,
    df: bool = True,
    options: bytes = b"",
) -> bytes:
    s, d = ip_address(src), ip_address(dst)
    if s.version == 6:
        return struct.pack(
            "!IHBB16s16s", 6 << 28 | tos << 20, l4_length, protocol, ttl, s.packed, d.packed
        )
    ihl = 20 + len(options)
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl // 4,
            tos,
            ihl + l4_length,
            ident,
            0x4000 if df else 0,
            ttl,
            protocol,
            0,
            s.packed,
            d.packed,
        )
        + options
    )
    struct.pack_into("!H", header, 10, ~word_sum(bytes(header)) & 0xFFFF)
    return bytes(header)


def tcp(
    payload: bytes,
    seq: int = 1000,
    *,
    src: str = A4,
    dst: str = B4,
    sport: int = 40000,
    dport: int = 5201,
    ack: int = 555,
    flags: int = ACK,
    window: int = 512,
    options: bytes = b"",
    bad_checksum: bool = False,
    **ip: object,
) -> bytes:
    header = (
        struct.pack(
            "!HHIIBBHHH",
            sport,
            dport,
            seq & 0xFFFFFFFF,
            ack,
            (20 + len(options)) // 4 << 4,
            flags,
            window,
            0,
            0,
        )
        + options
    )
    segment = header + payload
    checksum = ~word_sum(pseudo(src, dst, 6, len(segment)) + segment) & 0xFFFF
    checksum ^= 0x5555 if bad_checksum else 0
    segment = segment[:16] + struct.pack("!H", checksum) + segment[18:]
    return ip_header(src, dst, 6, len(segment), **ip) + segment  # type: ignore[arg-type]


def udp(payload: bytes, *, src: str = A4, dst: str = B4, **ip: object) -> bytes:
    segment = struct.pack("!HHHH", 5000, 6000, 8 + len(payload), 0) + payload
    checksum = ~word_sum(pseudo(src, dst, 17, len(segment)) + segment) & 0xFFFF or 0xFFFF
    segment = segment[:6] + struct.pack("!H", checksum) + segment[8:]
    return ip_header(src, dst, 17, len(segment), **ip) + segment  # type: ignore[arg-type]


def kernel_super_packet(packet: bytes, gso_type: int, gso_size: int) -> bytes:
    """What the kernel hands a tun reader: vnet header + packet with a partial L4 checksum."""
    l4 = 40 if packet[0] >> 4 == 6 else (packet[0] & 15) * 4
    protocol = packet[6] if l4 == 40 else packet[9]
    field = l4 + (16 if protocol == 6 else 6)
    src, dst = (packet[8:24], packet[24:40]) if l4 == 40 else (packet[12:16], packet[16:20])
    partial = word_sum(
        pseudo(str(ip_address(src)), str(ip_address(dst)), protocol, len(packet) - l4)
    )
    packet = packet[:field] + struct.pack("!H", partial) + packet[field + 2 :]
    csum_offset = field - l4
    return VNET_HDR.pack(NEEDS_CSUM, gso_type, l4 + 20, gso_size, l4, csum_offset) + packet


def field(packet: bytes, fmt: str, offset: int) -> int:
    value: int = struct.unpack_from(fmt, packet, offset)[0]
    return value


def tcp_offset(packet: bytes) -> int:
    return 40 if packet[0] >> 4 == 6 else (packet[0] & 15) * 4


PAYLOAD = bytes(range(256)) * 20  # 5120 bytes, not a multiple of the segment size


# -- split -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("src", "dst", "gso_type"), [(A4, B4, GSO_TCPV4), (A6, B6, GSO_TCPV6)])
def test_a_tso_super_packet_splits_into_valid_segments(src, dst, gso_type):
    size = 1368
    big = tcp(PAYLOAD, seq=0xFFFFF000, src=src, dst=dst, flags=ACK | PSH | FIN | CWR, ident=65534)
    segments = split(kernel_super_packet(big, gso_type, size))

    assert [len(s) - tcp_offset(s) - 20 for s in segments] == [size, size, size, 1016]
    assert b"".join(s[tcp_offset(s) + 20 :] for s in segments) == PAYLOAD
    for i, segment in enumerate(segments):
        l4 = tcp_offset(segment)
        assert ip_valid(segment), i
        assert l4_valid(segment), i
        assert field(segment, "!I", l4 + 4) == (0xFFFFF000 + i * size) & 0xFFFFFFFF
        flags = segment[l4 + 13]
        last = i == len(segments) - 1
        assert flags == ACK | (PSH | FIN if last else 0) | (CWR if i == 0 else 0)
        assert segment[l4 : l4 + 4] == big[l4 : l4 + 4]  # ports
        if gso_type == GSO_TCPV4:
            assert field(segment, "!H", 4) == (65534 + i) & 0xFFFF
            assert segment[12:20] == big[12:20]
        else:
            assert segment[8:40] == big[8:40]


def test_a_tso_packet_with_tcp_options_keeps_them_in_every_segment():
    options = b"\x01\x01\x08\x0a" + bytes(range(8))  # NOP NOP timestamps
    big = tcp(PAYLOAD[:3000], options=options)
    segments = split(kernel_super_packet(big, GSO_TCPV4, 1000))
    assert len(segments) == 3
    for segment in segments:
        assert segment[40:52] == options
        assert len(segment) == 20 + 32 + 1000
        assert ip_valid(segment) and l4_valid(segment)


@pytest.mark.parametrize(("src", "dst"), [(A4, B4), (A6, B6)])
def test_a_uso_super_packet_splits_into_valid_datagrams(src, dst):
    big = udp(PAYLOAD[:2500], src=src, dst=dst)
    segments = split(kernel_super_packet(big, GSO_UDP_L4, 1000))
    assert [len(s) - tcp_offset(s) - 8 for s in segments] == [1000, 1000, 500]
    for segment in segments:
        l4 = tcp_offset(segment)
        assert field(segment, "!H", l4 + 4) == len(segment) - l4
        assert ip_valid(segment) and l4_valid(segment)
    assert b"".join(s[tcp_offset(s) + 8 :] for s in segments) == PAYLOAD[:2500]


@pytest.mark.parametrize("packet", [tcp(b"hello"), udp(b"hello", src=A6, dst=B6), udp(b"")])
def test_a_partial_checksum_is_completed(packet):
    frame = kernel_super_packet(packet, GSO_NONE, 0)
    assert not l4_valid(frame[10:])
    [completed] = split(frame)
    assert completed == packet
    assert l4_valid(completed)


def test_a_finished_packet_passes_through():
    packet = udp(b"x" * 100)
    assert split(bytes(10) + packet) == [packet]
    assert not offload.needs_work(bytes(10) + packet)
    assert offload.needs_work(kernel_super_packet(tcp(b"x" * 3000), GSO_TCPV4, 1000))


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\0" * 5, "rx_short_read"),
        (VNET_HDR.pack(0, GSO_UDP, 0, 1000, 0, 0) + udp(b"x" * 3000), "rx_gso_unsupported"),
        (kernel_super_packet(tcp(b"x" * 3000), GSO_TCPV4, 1000)[:-1], "rx_truncated"),
        (kernel_super_packet(tcp(b"x" * 3000), GSO_TCPV6, 1000), "rx_malformed_gso"),
        (kernel_super_packet(tcp(b"x" * 3000), GSO_TCPV4, 0), "rx_malformed_gso"),
        (VNET_HDR.pack(NEEDS_CSUM, 0, 0, 0, 30, 16) + udp(b"x"), "rx_malformed_csum"),
    ],
)
def test_malformed_reads_are_refused_with_a_reason(frame, reason):
    with pytest.raises(OffloadError) as caught:
        split(frame)
    assert caught.value.reason == reason


# -- coalesce --------------------------------------------------------------------------------


def stream(count: int, size: int = 1000, seq: int = 1000, last: int | None = None, **kw):
    """``count`` consecutive segments of one flow with consecutive IPv4 ids."""
    sizes = [size] * count if last is None else [size] * (count - 1) + [last]
    packets, offset = [], 0
    for i, n in enumerate(sizes):
        chunk = bytes((seq + offset + j) & 0xFF for j in range(n))
        packets.append(tcp(chunk, seq=seq + offset, ident=100 + i, **kw))
        offset += n
    return packets


def written(writes) -> list[bytes]:
    return [b"".join(bytes(b) for b in buffers) for buffers, _count, _size in writes]


def unwrapped(writes) -> list[bytes]:
    """The ordinary packets the kernel would see: what split() makes of every write."""
    return [p for frame in written(writes) for p in split(frame)]


@pytest.mark.parametrize(("src", "dst"), [(A4, B4), (A6, B6)])
def test_segments_of_one_flow_become_one_super_packet(src, dst):
    packets = stream(5, last=400, src=src, dst=dst, flags=ACK)
    packets[-1] = tcp(
        packets[-1][tcp_offset(packets[-1]) + 20 :],
        seq=5000,
        ident=104,
        src=src,
        dst=dst,
        flags=ACK | PSH,
    )
    writes = coalesce(packets)
    [(_buffers, count, size)] = writes
    assert count == 5
    assert size == sum(map(len, packets))
    [frame] = written(writes)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(frame)
    l4 = tcp_offset(packets[0])
    assert (flags, gso_size, csum_start, csum_offset) == (NEEDS_CSUM, 1000, l4, 16)
    assert hdr_len == l4 + 20
    assert gso_type == (GSO_TCPV4 if src == A4 else GSO_TCPV6)
    big = frame[10:]
    assert big[l4 + 20 :] == b"".join(p[l4 + 20 :] for p in packets)
    assert ip_valid(big)
    assert field(big, "!I", l4 + 4) == 1000
    assert big[l4 + 13] == ACK | PSH
    # The checksum field holds the pseudo-header sum over the whole TCP length, uncomplemented.
    expected = word_sum(pseudo(src, dst, 6, len(big) - l4))
    assert field(big, "!H", l4 + 16) in {expected, expected or 0xFFFF}
    assert split(frame) == packets  # and the round trip gives the segments back exactly


def test_a_batch_of_several_flows_and_other_packets_keeps_each_flow_in_order():
    a = stream(4, sport=1)
    b = stream(3, sport=2, seq=77777)
    ping = udp(b"ping")
    batch = [a[0], b[0], ping, a[1], b[1], a[2], a[3], b[2]]
    writes = coalesce(batch)
    assert [count for _, count, _ in writes] == [4, 3, 1]
    out = unwrapped(writes)
    assert out == a + b + [ping]
    assert sorted(out) == sorted(batch)


def not_coalesced_cases() -> dict[str, list[bytes]]:
    base = stream(3)
    payload = base[1][40:]
    return {
        "different flow": [base[0], tcp(payload, seq=2000, sport=1), base[2]],
        "gap in seq": [base[0], tcp(payload, seq=2001, ident=101), base[2]],
        "different ack": [base[0], tcp(payload, seq=2000, ack=556), base[2]],
        "different window": [base[0], tcp(payload, seq=2000, window=9), base[2]],
        "different ttl": [base[0], tcp(payload, seq=2000, ttl=3), base[2]],
        "different tos": [base[0], tcp(payload, seq=2000, tos=1), base[2]],
        "no DF": [base[0], tcp(payload, seq=2000, df=False), base[2]],
        "IP options": [base[0], tcp(payload, seq=2000, options=b"\x01\x01\x01\x00"), base[2]],
        "bigger after smaller": [base[0], tcp(payload + b"x", seq=2000), base[2]],
        "FIN": [base[0], tcp(payload, seq=2000, flags=ACK | FIN)],
        "SYN": [tcp(payload, seq=999, flags=SYN), base[0]],
        "pure ACK": [base[0], tcp(b"", seq=2000), base[1]],
        "TCP options differ": [base[0], tcp(payload, seq=2000, options=b"\x01" * 4), base[2]],
    }


@pytest.mark.parametrize("case", sorted(not_coalesced_cases()))
def test_packets_that_must_not_be_merged_stay_separate_and_in_order(case):
    batch = not_coalesced_cases()[case]
    writes = coalesce(batch)
    assert all(count == 1 for _, count, _ in writes)
    assert [bytes(buffers[0]) for buffers, _, _ in writes] == [bytes(10)] * len(batch)
    assert unwrapped(writes) == batch


def test_a_shorter_segment_ends_a_run_and_the_next_starts_another():
    first = stream(3, last=500)
    second = stream(2, seq=1000 + 2500)
    writes = coalesce(first + second)
    assert [count for _, count, _ in writes] == [3, 2]
    assert unwrapped(writes) == first + second


def test_psh_ends_a_run():
    base = stream(3)
    pushed = tcp(base[1][40:], seq=2000, ident=101, flags=ACK | PSH)
    writes = coalesce([base[0], pushed, base[2]])
    assert [count for _, count, _ in writes] == [2, 1]
    assert unwrapped(writes) == [base[0], pushed, base[2]]


def test_a_segment_with_a_bad_checksum_is_not_merged_when_checksums_are_verified():
    packets = stream(3)
    packets[1] = tcp(packets[1][40:], seq=2000, ident=101, bad_checksum=True)
    writes = coalesce(packets, verify_checksums=True)
    assert [count for _, count, _ in writes] == [1, 1, 1]
    assert written(writes) == [bytes(10) + p for p in packets]
    bad_ip = bytearray(stream(3)[1])
    bad_ip[10] ^= 0xFF
    assert [c for _, c, _ in coalesce([packets[0], bytes(bad_ip)], verify_checksums=True)] == [1, 1]
    assert [c for _, c, _ in coalesce(packets)] == [3]  # unverified: merged


def test_super_packets_stay_within_64_segments_and_64_kib():
    many = stream(100, size=100)
    assert [count for _, count, _ in coalesce(many)] == [64, 36]
    big = stream(60, size=1400)
    counts = [count for _, count, _ in coalesce(big)]
    assert counts == [46, 14]  # 20 + 20 + 46 * 1400 <= 65535 < 20 + 20 + 47 * 1400
    assert unwrapped(coalesce(big)) == big


def test_non_tcp_and_odd_packets_get_a_zero_header():
    batch = [udp(b"a"), b"\x60" + bytes(10), b"", bytes(60), udp(b"b", src=A6, dst=B6)]
    writes = coalesce(batch)
    assert written(writes) == [bytes(10) + p for p in batch]
