"""The ``flow-log`` builtin plugin: its settings, a stage per tunnel only when ``flow_logs`` is
set, closed with its tunnel's pipeline."""

from __future__ import annotations

import pytest

from tunplug.config import load_settings
from tunplug.events import TunnelInfo
from tunplug.exceptions import ConfigError
from tunplug.testing.packets import udp
from tunplug_flowlog import plugin
from tunplug_flowlog.plugin import FlowLogSettings
from tunplug_flowlog.stage import FlowLogStage

from ._helpers import read_log

TUNNEL = TunnelInfo(interface="wg-flow", tun_backend="fake", role="gateway")


def settings_with(**values: object):
    return load_settings(values, plugins=[FlowLogSettings], environ={})


def test_the_plugin_declares_its_settings(tunplug_plugin_host):
    host = tunplug_plugin_host(builtins=["flow-log"])
    assert [(m.plugin, m.model) for m in host.settings_models()] == [("flow-log", FlowLogSettings)]


def test_settings_come_from_the_environment_and_are_validated(tmp_path):
    environ = {"TUNPLUG_FLOW_LOGS": str(tmp_path), "TUNPLUG_FLOW_LOGS_MAX_BYTES": "8192"}
    settings = load_settings(plugins=[FlowLogSettings], environ=environ)
    assert settings.plugin(FlowLogSettings) == FlowLogSettings(
        flow_logs=tmp_path, flow_logs_max_bytes=8192
    )
    with pytest.raises(ConfigError, match=r"^TUNPLUG_FLOW_LOGS_MAX_BYTES: .*4096"):
        load_settings(plugins=[FlowLogSettings], environ={"TUNPLUG_FLOW_LOGS_MAX_BYTES": "10"})
    with pytest.raises(ConfigError, match=r"^--flow-logs-max-bytes: .*4096"):
        load_settings({"flow_logs_max_bytes": "10"}, plugins=[FlowLogSettings], environ=environ)


def test_no_stage_and_no_directory_when_flow_logs_is_unset(tunplug_plugin_host):
    host = tunplug_plugin_host(builtins=["flow-log"])
    assert host.pipeline(settings_with(), TUNNEL).stages == ()


def test_closing_the_pipeline_logs_open_flows_as_shutdown(tunplug_plugin_host, tmp_path):
    host = tunplug_plugin_host(builtins=["flow-log"])
    settings = settings_with(flow_logs=tmp_path / "flows", flow_logs_max_bytes=8192)
    pipeline = host.pipeline(settings, TUNNEL)
    [stage] = pipeline.stages
    assert isinstance(stage, FlowLogStage)
    assert (pipeline.names, stage.writer.max_bytes) == (["flow-log"], 8192)
    pipeline.outbound([udp("10.0.0.1", "10.0.0.2", 53, 5000, b"answer")])
    assert read_log(tmp_path / "flows") == []

    pipeline.close()
    assert stage.closed
    [line] = read_log(tmp_path / "flows")
    assert (line["reason"], line["interface"], line["payload_out"]) == ("shutdown", "wg-flow", 6)


def test_two_tunnels_have_their_own_stage_and_close_alone(tunplug_plugin_host, tmp_path):
    host = tunplug_plugin_host(builtins=["flow-log"])
    settings = settings_with(flow_logs=tmp_path)
    first = host.pipeline(settings, TUNNEL)
    second = host.pipeline(settings, TunnelInfo(interface="other", tun_backend="fake", role="test"))
    [one], [two] = first.stages, second.stages
    assert isinstance(one, FlowLogStage) and isinstance(two, FlowLogStage)
    assert one is not two
    second.close()
    assert (one.closed, two.closed) == (False, True)
    first.close()
    assert one.closed


def test_an_unusable_directory_is_a_config_error_naming_the_flag(tmp_path):
    (tmp_path / "file").write_text("")
    settings = settings_with(flow_logs=tmp_path / "file" / "logs")
    with pytest.raises(ConfigError, match="--flow-logs"):
        plugin.tunplug_pipeline_stages(settings, TUNNEL)
