"""Offloads of the linux-mq backend against the kernel, inside a throw-away namespace (root).

The kernel must hand TCP streams over as TSO super-packets that ``recv_many`` returns as
valid ordinary segments, UDP_SEGMENT sends as USO super-packets split the same way, and it
must accept and deliver the TCP super-packets the writer coalesces. A kernel that refuses
the offloads must leave a working plain device. Checksums are verified with the test's own
textbook sum (:mod:`.test_mq_offload`).
"""

from __future__ import annotations

import struct

import pytest

from .test_mq_offload import ip_valid, l4_valid, tcp_offset

pytestmark = pytest.mark.root


@pytest.mark.parametrize("family", [4, 6])
def test_a_tcp_stream_read_with_offloads_comes_as_super_packets_split_into_valid_segments(
    agent, family
):
    size = 60000
    result = agent.run(
        "tcp_read", name="tp0", offloads=True, rx_offloads=True, family=family, bytes=size
    )
    assert result["offloads"] is True
    assert result["complete"], "the whole stream arrived"
    stats = result["stats"]
    assert stats["rx_super_packets"] > 0
    assert stats["rx_segments"] > stats["rx_super_packets"]
    assert stats["drops"] == {}
    assert result["largest"] <= 1420, "recv_many hands out packets within the MTU"
    payload = b""
    expected_seq = None
    for hexed in result["segments"]:
        segment = bytes.fromhex(hexed)
        assert ip_valid(segment)
        assert l4_valid(segment)
        l4 = tcp_offset(segment)
        seq = struct.unpack_from("!I", segment, l4 + 4)[0]
        data = segment[l4 + (segment[l4 + 12] >> 4) * 4 :]
        assert len(data) <= result["mss"]
        if expected_seq is None or seq == expected_seq:  # skip retransmissions, if any
            payload += data
            expected_seq = seq + len(data)
    assert payload == bytes(i % 251 for i in range(size))


@pytest.mark.parametrize("offloads", [False, True])
def test_without_rx_offloads_a_tcp_stream_is_read_as_plain_segments(agent, offloads):
    result = agent.run("tcp_read", name="tp0", offloads=offloads, bytes=20000)
    assert result["offloads"] is offloads  # vnet headers (write coalescing) but no TSO
    assert result["complete"]
    assert result["stats"]["rx_super_packets"] == 0
    assert all(l4_valid(bytes.fromhex(h)) for h in result["segments"])


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("offloads", [False, True])
def test_a_burst_of_tcp_segments_written_reaches_a_socket_coalesced_when_offloads_are_on(
    agent, family, offloads
):
    result = agent.run("tcp_write", name="tp0", offloads=offloads, family=family, segments=30)
    assert result["offloads"] is offloads
    assert result["delivered"], f"{result['received']} bytes arrived"
    stats = result["stats"]
    assert stats["drops"] == {}
    if offloads:
        # One write, one packet for the device counters, taken apart by the kernel.
        assert result["device_rx_packets"] == 1
        assert stats["tx_super_packets"] == 1
        assert stats["tx_coalesced_packets"] == 30
    else:
        assert result["device_rx_packets"] == 30
        assert stats["tx_super_packets"] == 0
    assert stats["tx_packets"] == 32  # SYN, ACK and the 30 segments


@pytest.mark.parametrize("family", [4, 6])
def test_udp_segment_sends_are_split_into_valid_datagrams(agent, family):
    result = agent.run(
        "uso_read", name="tp0", offloads=True, rx_offloads=True, family=family, sends=3, segments=8
    )
    assert result["offloads"] is True
    datagrams = [bytes.fromhex(h) for h in result["datagrams"]]
    assert len(datagrams) == 24
    for datagram in datagrams:
        assert ip_valid(datagram) and l4_valid(datagram)
        assert len(datagram) - tcp_offset(datagram) == 8 + 1000
    payloads = [d[tcp_offset(d) + 8 :] for d in datagrams]
    assert payloads == [bytes([i]) * 1000 for i in range(3) for _ in range(8)]
    assert result["stats"]["rx_super_packets"] == 3
    assert result["stats"]["rx_segments"] == 24


@pytest.mark.parametrize("rx_offloads", [False, True])
def test_a_kernel_refusing_offloads_leaves_a_plain_working_device(agent, rx_offloads):
    args = {"name": "tp0", "queues": 2, "offloads": True, "refuse_offloads": True}
    args["rx_offloads"] = rx_offloads
    written = agent.run("write", flows=4, per_flow=50, **args)
    assert written["offloads"] is False
    assert written["all_in_order"] and written["flows"] == 8
    assert written["echo_replies"] == [4, 6]
    assert any("refused TUNSETOFFLOAD" in line for line in written["log"])
    read = agent.run("read", count=500, **args)
    assert read["offloads"] is False
    assert read["udp4"] == read["udp6"] == 500


@pytest.mark.parametrize("queues", [1, 2])
def test_with_offloads_ordinary_packets_still_flow_both_ways(agent, queues):
    written = agent.run("write", name="tp0", queues=queues, offloads=True, flows=8, per_flow=200)
    assert written["offloads"] is True
    assert written["flows"] == 16 and written["all_in_order"]
    assert written["echo_replies"] == [4, 6]
    assert written["stats"]["drops"] == {"write_einval": 1}  # the version-0 packet
    assert written["log"] == []
    read = agent.run("read", name="tp0", queues=queues, offloads=True, count=2000)
    assert read["offloads"] is True
    assert read["udp4"] == read["udp6"] == 2000
    assert read["in_order"]
    assert read["echo_requests"] >= 3
