"""The example third-party plugin, installed as its own distribution by the test command."""

from __future__ import annotations

import importlib.metadata

import pytest

from tunplug.config import load_settings
from tunplug.events import TunnelInfo
from tunplug.plugins import PluginHost
from tunplug.testing.packets import icmp_echo, udp

pytestmark = pytest.mark.anyio


def test_example_is_installed_as_a_separate_distribution_with_an_entry_point():
    dist = importlib.metadata.distribution("tunplug-example-pcap")
    entry_points = [ep for ep in dist.entry_points if ep.group == "tunplug"]
    assert [ep.name for ep in entry_points] == ["example-pcap"]


def test_example_is_discovered_through_its_entry_point():
    host = PluginHost()
    host.load()
    record = host.records["example-pcap"]
    assert record.source == "entry-point"
    assert (record.distribution, record.version) == ("tunplug-example-pcap", "0.1.0")
    assert record.provides == {"tun": ["pcap-replay"]}


async def test_pcap_replay_backend_plays_and_records(tmp_path, monkeypatch):
    from tunplug_example_pcap.pcap import read_packets, write_header, write_packet

    capture, recorded = tmp_path / "in.pcap", tmp_path / "out.pcap"
    sent = [icmp_echo("10.0.0.1", "10.0.0.2", 1, seq) for seq in range(3)]
    with capture.open("wb") as stream:
        write_header(stream)
        for packet in sent:
            write_packet(stream, packet)
    monkeypatch.setenv("TUNPLUG_PCAP_REPLAY_IN", str(capture))
    monkeypatch.setenv("TUNPLUG_PCAP_REPLAY_OUT", str(recorded))

    host = PluginHost()
    host.load()
    backend = host.tun_backends()["pcap-replay"]
    assert backend.unavailable_reason() is None
    from tunplug.tun import TunOptions

    async with await backend.create(TunOptions(batch_size=2)) as tun:
        assert list(await tun.recv_many()) == sent[:2]
        assert list(await tun.recv_many()) == sent[2:]
        reply = udp("10.0.0.2", "10.0.0.1", 53, 4000, b"answer")
        await tun.send_ready()
        tun.send([reply])
    with recorded.open("rb") as stream:
        assert list(read_packets(stream)) == [reply]


def test_pcap_writer_stage_is_offered_only_when_configured(tmp_path, monkeypatch):
    info = TunnelInfo(interface="t0", tun_backend="fake", role="test")
    host = PluginHost()
    host.load()
    assert "pcap-writer" not in host.pipeline(load_settings(), info).names
    monkeypatch.setenv("TUNPLUG_PCAP_FILE", str(tmp_path / "t.pcap"))
    pipeline = host.pipeline(load_settings(), info)
    assert pipeline.names == ["pcap-writer"]
    packet = udp("10.0.0.1", "10.0.0.2", 1, 2, b"x")
    assert pipeline.outbound([packet]) == [packet]
    host.notify_tunnel_down(info, None)
    from tunplug_example_pcap.pcap import read_packets

    with (tmp_path / "t.pcap").open("rb") as stream:
        assert list(read_packets(stream)) == [packet]
