"""The example third-party plugin, installed as its own distribution by the test command.

It is the worked example of the plugin API: its settings reach the command line and the
environment through ``tunplug_add_settings``, its stage is per tunnel, ticked and closed.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import anyio
import pytest
from tunplug_example_pcap.pcap import read_packets, write_header, write_packet
from tunplug_example_pcap.plugin import PcapSettings, PcapWriter

from tunplug.config import load_settings
from tunplug.events import TunnelInfo
from tunplug.exceptions import BackendUnavailable
from tunplug.plugins import PluginHost
from tunplug.testing.packets import icmp_echo, udp
from tunplug.testing.tunnel import open_tunnel_pair
from tunplug.tun import TunOptions
from tunplug_crypto_cryptography.backend import CryptographyBackend

pytestmark = pytest.mark.anyio


def loaded_host() -> PluginHost:
    host = PluginHost()
    host.load()
    return host


def pcap_settings(**values: object):
    return load_settings(values, plugins=[PcapSettings], environ={})


def test_example_is_installed_as_a_separate_distribution_with_an_entry_point():
    dist = importlib.metadata.distribution("tunplug-example-pcap")
    entry_points = [ep for ep in dist.entry_points if ep.group == "tunplug"]
    assert [ep.name for ep in entry_points] == ["example-pcap"]


def test_example_is_discovered_with_its_backend_and_settings():
    host = loaded_host()
    record = host.records["example-pcap"]
    assert record.source == "entry-point"
    assert (record.distribution, record.version) == ("tunplug-example-pcap", "0.1.0")
    assert record.provides == {"tun": ["pcap-replay"]}
    assert record.settings == ["pcap_file", "pcap_snaplen", "pcap_replay_in", "pcap_replay_out"]
    assert ("example-pcap", PcapSettings) in [(m.plugin, m.model) for m in host.settings_models()]


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TUNPLUG_")}
    return subprocess.run(
        [sys.executable, "-m", "tunplug.cli.headless", *args],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_its_settings_are_flags_with_their_variables_in_help():
    result = run_cli("standalone", "--help")
    assert result.returncode == 0, result.stderr
    assert "settings of plugin example-pcap:" in result.stdout
    assert "--pcap-file FILE" in result.stdout
    assert "TUNPLUG_PCAP_SNAPLEN, default 65535" in " ".join(result.stdout.split())


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--pcap-snaplen", "10"], {}, "--pcap-snaplen"),
        ([], {"TUNPLUG_PCAP_SNAPLEN": "10"}, "TUNPLUG_PCAP_SNAPLEN"),
        ([], {"TUNPLUG_PCAP_SNAPLEN": "many"}, "TUNPLUG_PCAP_SNAPLEN"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_flag_or_variable_and_exit_2(args, env, named):
    result = run_cli("standalone", "--check", *args, **env)
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"tunplug-headless-client: error: {named}: "), line


def test_a_flag_wins_over_its_variable_which_wins_over_the_default():
    environ = {"TUNPLUG_PCAP_SNAPLEN": "128", "TUNPLUG_PCAP_FILE": "/tmp/x.pcap"}
    settings = load_settings({"pcap_snaplen": "256"}, plugins=[PcapSettings], environ=environ)
    own = settings.plugin(PcapSettings)
    assert (own.pcap_snaplen, own.pcap_file, own.pcap_replay_in) == (256, "/tmp/x.pcap", None)


async def test_pcap_replay_backend_plays_and_records_from_its_settings(tmp_path):
    capture, recorded = tmp_path / "in.pcap", tmp_path / "out.pcap"
    sent = [icmp_echo("10.0.0.1", "10.0.0.2", 1, seq) for seq in range(3)]
    with capture.open("wb") as stream:
        write_header(stream)
        for packet in sent:
            write_packet(stream, packet)
    backend = loaded_host().tun_backends()["pcap-replay"]
    with pytest.raises(BackendUnavailable, match="--pcap-replay-in"):
        await backend.create(TunOptions(settings=pcap_settings()))

    settings = pcap_settings(pcap_replay_in=capture, pcap_replay_out=recorded)
    async with await backend.create(TunOptions(batch_size=2, settings=settings)) as tun:
        assert list(await tun.recv_many()) == sent[:2]
        assert list(await tun.recv_many()) == sent[2:]
        reply = udp("10.0.0.2", "10.0.0.1", 53, 4000, b"answer")
        await tun.send_ready()
        tun.send([reply])
    with recorded.open("rb") as stream:
        assert list(read_packets(stream)) == [reply]


def test_no_stage_unless_a_capture_file_is_set():
    info = TunnelInfo(interface="t0", tun_backend="fake", role="test")
    assert "pcap-writer" not in loaded_host().pipeline(pcap_settings(), info).names


async def test_each_tunnel_has_its_own_capture_ticked_and_closed_with_it(tmp_path):
    host = loaded_host()
    settings = pcap_settings(pcap_file=str(tmp_path / "{interface}.pcap"), pcap_snaplen=64)
    client = host.pipeline(settings, TunnelInfo("client-fake", "fake", "client"))
    gateway = host.pipeline(settings, TunnelInfo("gateway-fake", "fake", "gateway"))
    [client_writer], [gateway_writer] = client.stages, gateway.stages
    assert isinstance(client_writer, PcapWriter) and isinstance(gateway_writer, PcapWriter)
    assert client_writer is not gateway_writer
    big = udp("10.99.0.2", "10.99.0.1", 4000, 53, b"q" * 200)

    async with open_tunnel_pair(
        CryptographyBackend(), client_pipeline=client, gateway_pipeline=gateway
    ) as pair:
        with anyio.fail_after(10):
            await pair.client.tun.inject([big])
            assert await pair.gateway.tun.delivered(1) == [big]
            while gateway_writer.ticks == 0 or client_writer.ticks == 0:  # noqa: ASYNC110
                await anyio.sleep(0.05)  # the engines tick their stages about once a second
        # Ticked: the records are on disk while the tunnels still run.
        with (tmp_path / "gateway-fake.pcap").open("rb") as stream:
            assert list(read_packets(stream)) == [big[:64]]
        assert not client_writer.stream.closed
    # Closed with their tunnels, each file holding its own tunnel's packet.
    assert client_writer.stream.closed and gateway_writer.stream.closed
    with (tmp_path / "client-fake.pcap").open("rb") as stream:
        assert list(read_packets(stream)) == [big[:64]]
