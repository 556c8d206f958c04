"""Differential tests: the native offload surgery gives exactly what the Python reference gives.

``tunplug_fastpath._native.split`` and ``coalesce`` (``plugins/fastpath/src/offload.rs``)
against ``tunplug_tun_linux_mq.offload`` on generated reads and batches: the same packets, the
same bytes written, the same reads refused for the same reason. Packets come from the
reference's own test builders (``tests/plugins/tun_linux_mq/test_mq_offload.py``).

The reference fails with ``IndexError`` or ``struct.error`` instead of ``OffloadError`` on a
few malformed reads (a TCP header cut before its data offset; an IPv6 ``csum_start`` inside
the IPv6 header that makes a segment's length field overflow); the native core refuses those
as ``rx_malformed_gso``, which :func:`assert_same_split` accepts and nothing else.
"""

from __future__ import annotations

import functools
import random
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tests.plugins.tun_linux_mq.test_mq_offload import (
    A4,
    A6,
    ACK,
    B4,
    B6,
    CWR,
    ECE,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    kernel_super_packet,
    stream,
    tcp,
    udp,
    word_sum,
)

from tunplug_tun_linux_mq import offload
from tunplug_tun_linux_mq.offload import (
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    NEEDS_CSUM,
    VNET_HDR,
    VNET_HDR_LEN,
    OffloadError,
)

_native = pytest.importorskip("tunplug_fastpath._native")

DIFFERENTIAL = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: The reference's failures that are not ``OffloadError`` (see the module docstring).
REFERENCE_CRASHES = (IndexError, struct.error)


def python_split(frame: bytes) -> tuple[str, Any]:
    try:
        return "packets", offload.split(frame)
    except OffloadError as exc:
        return "refused", (exc.reason, str(exc))
    except REFERENCE_CRASHES as exc:
        return "crashed", repr(exc)


def native_split(frame: bytes | bytearray | memoryview) -> tuple[str, Any]:
    try:
        packets = _native.split(frame)
    except _native.OffloadError as exc:
        reason, detail = exc.args
        assert exc.reason == reason
        return "refused", (reason, f"{reason}: {detail}")
    assert type(packets) is list
    assert all(type(p) is bytes for p in packets)
    return "packets", packets


def assert_same_split(frame: bytes) -> None:
    """Native ``split`` equals the reference on ``frame``, packets or refusal and reason."""
    expected = python_split(frame)
    got = native_split(frame)
    if expected[0] == "crashed":
        assert got[0] == "refused", expected
        assert got[1][0] == "rx_malformed_gso", (expected, got)
    else:
        assert got == expected


def python_writes(packets: list[bytes], verify: bool) -> list[tuple[bytes, int, int]]:
    writes = offload.coalesce(packets, verify_checksums=verify)
    return [(b"".join(bytes(b) for b in buffers), count, size) for buffers, count, size in writes]


def assert_same_coalesce(packets: list[bytes], verify: bool) -> list[tuple[bytes, int, int]]:
    expected = python_writes(packets, verify)
    got = _native.coalesce(packets, verify)
    assert got == expected
    assert all(type(frame) is bytes for frame, _count, _size in got)
    return got


def payload_of(seed: int, length: int) -> bytes:
    return random.Random(seed).randbytes(length)


def with_ip_options(packet: bytes, options: bytes) -> bytes:
    """IPv4 ``packet`` with ``options`` (a multiple of 4 bytes) after its 20-byte header."""
    header = bytearray(packet[:20] + options)
    header[0] = 0x40 | len(header) // 4
    struct.pack_into("!H", header, 2, len(packet) + len(options))
    struct.pack_into("!H", header, 10, 0)
    struct.pack_into("!H", header, 10, ~word_sum(bytes(header)) & 0xFFFF)
    return bytes(header) + packet[20:]


TCP_FLAGS = st.sampled_from(
    [ACK, ACK | PSH, ACK | FIN, ACK | PSH | FIN, ACK | CWR, ACK | ECE | CWR | PSH, SYN, RST, URG]
) | st.integers(0, 255)


@st.composite
def super_packets(
    draw: st.DrawFn, flags: st.SearchStrategy[int] = TCP_FLAGS, plain: bool = False
) -> bytes:
    """What the kernel hands a tun reader with TSO/USO: valid TCP or UDP super-packets.

    ``plain``: only TCP without IP options, as :func:`coalesce` would merge it.
    """
    v6 = draw(st.booleans())
    src, dst = (A6, B6) if v6 else (A4, B4)
    protocol = "tcp" if plain else draw(st.sampled_from(["tcp", "udp"]))
    gso_size = draw(st.integers(1, 1500) | st.integers(1, 0xFFFF))
    # At most 64 KiB of IP packet with the longest headers (40 bytes each of IP and TCP
    # options), in at most 60 segments to keep the reference quick.
    segments = draw(st.integers(1, 60))
    longest = min(0xFFFF - 120, segments * gso_size)
    length = draw(st.integers(min(longest, (segments - 1) * gso_size), longest))
    payload = payload_of(draw(st.integers(0, 2**32)), length)
    ip_options = b""
    if not (v6 or plain):
        ip_options = draw(st.sampled_from([b"", b"", b"\x01\x01\x01\x00", bytes(40)]))
    if protocol == "tcp":
        options = bytes(draw(st.sampled_from([0, 4, 12, 40])))
        packet = tcp(
            payload,
            draw(st.integers(0, 2**32 - 1)),
            src=src,
            dst=dst,
            flags=draw(flags),
            options=options,
            ident=draw(st.integers(0, 0xFFFF)),
            ttl=draw(st.integers(0, 255)),
        )
        gso_type = (GSO_TCPV6 if v6 else GSO_TCPV4) | draw(st.sampled_from([0, GSO_ECN]))
    else:
        packet = udp(payload, src=src, dst=dst)
        gso_type = GSO_UDP_L4
    if ip_options:
        packet = with_ip_options(packet, ip_options)
    frame = kernel_super_packet(packet, gso_type, gso_size)
    if draw(st.booleans()):
        frame = bytes([frame[0] & ~NEEDS_CSUM]) + frame[1:]  # L4 offset from the IP header
    return frame


@st.composite
def single_packets(draw: st.DrawFn) -> bytes:
    """One packet behind a zero header, or with its checksum left partial (GSO_NONE)."""
    v6 = draw(st.booleans())
    src, dst = (A6, B6) if v6 else (A4, B4)
    payload = payload_of(draw(st.integers(0, 2**32)), draw(st.integers(0, 3000)))
    if draw(st.booleans()):
        packet = tcp(payload, src=src, dst=dst, flags=draw(TCP_FLAGS))
    else:
        packet = udp(payload, src=src, dst=dst)
    if draw(st.booleans()):
        return bytes(VNET_HDR_LEN) + packet
    return kernel_super_packet(packet, GSO_NONE, 0)


# Reads the reference does not refuse with an OffloadError (see the module docstring): a TCP
# header starting 10 bytes before the end of an 80-byte packet, and UDP at byte 20 of IPv6.
_TCP_CUT_BEFORE_DATA_OFFSET = VNET_HDR.pack(NEEDS_CSUM, GSO_TCPV4, 0, 100, 70, 16) + tcp(b"x" * 40)
_IPV6_CSUM_START_IN_HEADER = VNET_HDR.pack(NEEDS_CSUM, GSO_UDP_L4, 0, 5, 20, 6) + udp(
    b"y" * 30, src=A6, dst=B6
)


@DIFFERENTIAL
@given(frame=super_packets())
def test_super_packets_split_alike(frame):
    assert_same_split(frame)
    assert python_split(frame)[0] == "packets"


@DIFFERENTIAL
@given(frame=single_packets())
def test_single_packets_split_alike(frame):
    assert_same_split(frame)


@DIFFERENTIAL
@given(frame=st.binary(max_size=300))
@example(frame=b"")
@example(frame=bytes(9))
@example(frame=bytes(10))
@example(frame=VNET_HDR.pack(0, GSO_UDP, 0, 1000, 0, 0) + udp(b"x" * 3000))
@example(frame=_TCP_CUT_BEFORE_DATA_OFFSET)
@example(frame=_IPV6_CSUM_START_IN_HEADER)
def test_random_bytes_split_alike(frame):
    assert_same_split(frame)


@DIFFERENTIAL
@given(
    frame=super_packets() | single_packets(),
    cut=st.integers(0, 2**16),
    flips=st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), max_size=3),
    truncate=st.booleans(),
)
def test_damaged_reads_split_alike(frame, cut, flips, truncate):
    damaged = bytearray(frame)
    for at, value in flips:
        damaged[at % len(damaged)] = value
    if truncate:
        del damaged[cut % (len(damaged) + 1) :]
    assert_same_split(bytes(damaged))


GSO_TYPES = st.sampled_from(
    [GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, GSO_TCPV4 | GSO_ECN, GSO_TCPV6 | GSO_ECN]
)


@DIFFERENTIAL
@given(
    packet=super_packets(),
    flags=st.sampled_from([NEEDS_CSUM, 0]) | st.integers(0, 255),
    gso_type=GSO_TYPES | st.sampled_from([GSO_UDP, GSO_UDP_L4 | GSO_ECN, 2, 0x7F, 0xFF]),
    gso_size=st.integers(0, 2000) | st.integers(0, 0xFFFF),
    csum_start=st.none() | st.integers(0, 120) | st.integers(0, 0xFFFF),
    csum_offset=st.none() | st.sampled_from([6, 16]) | st.integers(0, 0xFFFF),
)
def test_any_vnet_header_splits_alike(packet, flags, gso_type, gso_size, csum_start, csum_offset):
    """Every header field varied on a valid packet (``None``: the field as the kernel set it)."""
    _flags, _type, _len, _size, kernel_start, kernel_offset = VNET_HDR.unpack_from(packet)
    csum_start = kernel_start if csum_start is None else csum_start
    csum_offset = kernel_offset if csum_offset is None else csum_offset
    header = VNET_HDR.pack(flags, gso_type, 0, gso_size, csum_start, csum_offset)
    frame = header + packet[VNET_HDR_LEN:]
    # Tiny gso sizes on big packets only make the reference slow, not different.
    if gso_size and len(frame) // gso_size > 2000:
        frame = frame[: VNET_HDR_LEN + 2000]
    assert_same_split(frame)


@DIFFERENTIAL
@given(
    header=st.builds(
        VNET_HDR.pack,
        st.sampled_from([NEEDS_CSUM, 0]),
        GSO_TYPES,
        st.just(0),
        st.integers(0, 1600),
        st.integers(0, 100),
        st.sampled_from([6, 16]) | st.integers(0, 100),
    ),
    first=st.sampled_from([0x45, 0x46, 0x4F, 0x41, 0x60, 0x65]) | st.integers(0, 255),
    body=st.binary(max_size=300),
    fix_length=st.booleans(),
)
def test_random_packets_behind_a_header_split_alike(header, first, body, fix_length):
    """Random IP-looking packets (often with a matching length field) behind plausible headers."""
    packet = bytearray([first]) + body
    if fix_length and first >> 4 == 4 and len(packet) >= 20:
        struct.pack_into("!H", packet, 2, len(packet))
    elif fix_length and first >> 4 == 6 and len(packet) >= 40:
        struct.pack_into("!H", packet, 4, len(packet) - 40)
    assert_same_split(header + bytes(packet))


def test_known_reference_crashes_are_refused_as_malformed():
    with pytest.raises(IndexError):
        offload.split(_TCP_CUT_BEFORE_DATA_OFFSET)
    with pytest.raises(struct.error):
        offload.split(_IPV6_CSUM_START_IN_HEADER)
    for frame in (_TCP_CUT_BEFORE_DATA_OFFSET, _IPV6_CSUM_START_IN_HEADER):
        with pytest.raises(_native.OffloadError) as caught:
            _native.split(frame)
        assert caught.value.args[0] == "rx_malformed_gso"


def test_the_native_error_is_a_value_error_with_the_reason_first():
    assert issubclass(_native.OffloadError, ValueError)
    with pytest.raises(ValueError) as caught:
        _native.split(b"\0" * 5)
    assert caught.value.args == ("rx_short_read", "5 bytes")


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_split_takes_any_bytes_like(kind):
    frame = kernel_super_packet(tcp(b"x" * 3000, src=A6, dst=B6), GSO_TCPV6, 1000)
    assert _native.split(kind(frame)) == offload.split(frame)
    assert len(_native.split(kind(frame))) == 3


# -- coalesce ----------------------------------------------------------------------------------


@st.composite
def batches(draw: st.DrawFn) -> list[bytes]:
    """Interleaved in-order flows (some coalescible, some not) and unrelated packets."""
    flows: list[list[bytes]] = []
    for sport in range(draw(st.integers(1, 4))):
        v6 = draw(st.booleans())
        src, dst = (A6, B6) if v6 else (A4, B4)
        size = draw(st.integers(1, 1460))
        count = draw(st.integers(1, 70))
        last = draw(st.none() | st.integers(0, size + 1))
        flags = draw(st.sampled_from([ACK, ACK, ACK, ACK | PSH, ACK | FIN, SYN]))
        tcp_options = bytes(draw(st.sampled_from([0, 12])))
        packets = stream(
            count,
            size=size,
            seq=draw(st.integers(0, 2**32 - 1)),
            last=last,
            src=src,
            dst=dst,
            sport=sport,
            flags=flags,
            options=tcp_options,
        )
        # Now and then a segment that breaks the rules: PSH, another TTL, a bad checksum,
        # a gap in the sequence, a retransmission.
        for _ in range(draw(st.integers(0, 3))):
            at = draw(st.integers(0, len(packets) - 1))
            l4 = 40 if v6 else 20
            packet = bytearray(packets[at])
            change = draw(st.sampled_from(["psh", "ttl", "checksum", "seq", "repeat", "df"]))
            if change == "psh":
                packet[l4 + 13] |= PSH
            elif change == "ttl":
                packet[7 if v6 else 8] ^= 1
            elif change == "checksum":
                packet[l4 + 16] ^= 0x55
            elif change == "seq":
                packet[l4 + 7] ^= 1
            elif change == "df" and not v6:
                packet[6] = 0
            if change == "repeat":
                packets.insert(at, packets[at])
            else:
                packets[at] = bytes(packet)
        flows.append(packets)
    noise = draw(
        st.lists(
            st.binary(max_size=80)
            | st.builds(udp, st.binary(max_size=100))
            | st.builds(functools.partial(udp, src=A6, dst=B6), st.binary(max_size=100)),
            max_size=5,
        )
    )
    flows.append(noise)
    # Interleave, each flow's own order kept.
    order = draw(st.permutations([i for i, flow in enumerate(flows) for _ in flow]))
    positions = [0] * len(flows)
    batch = []
    for i in order:
        batch.append(flows[i][positions[i]])
        positions[i] += 1
    return batch


@DIFFERENTIAL
@given(packets=batches(), verify=st.booleans())
def test_batches_coalesce_alike(packets, verify):
    writes = assert_same_coalesce(packets, verify)
    assert sum(count for _frame, count, _size in writes) == len(packets)


@DIFFERENTIAL
@given(packets=st.lists(st.binary(min_size=0, max_size=120), max_size=20), verify=st.booleans())
def test_random_packets_coalesce_alike(packets, verify):
    assert_same_coalesce(packets, verify)


@DIFFERENTIAL
@given(frame=super_packets(st.sampled_from([ACK, ACK | PSH]), plain=True))
def test_split_segments_coalesce_alike_and_back(frame):
    """What split() makes of a super-packet coalesces alike (and into the same packets)."""
    segments = offload.split(frame)
    writes = assert_same_coalesce(segments, True)
    assert [p for w, _count, _size in writes for p in _native.split(w)] == segments


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_coalesce_takes_any_bytes_like(kind):
    packets = [*stream(5, last=300), udp(b"ping")]
    got = _native.coalesce([kind(p) for p in packets], False)
    assert got == python_writes(packets, False)
    assert [count for _, count, _ in got] == [5, 1]
    assert _native.coalesce(tuple(packets), verify_checksums=True) == got
