"""The ``flow-log`` builtin plugin: a stage only when ``flow_logs`` is set, closed at down."""

from __future__ import annotations

import pytest

from tunplug.config import load_settings
from tunplug.events import TunnelInfo
from tunplug.exceptions import ConfigError
from tunplug.testing.packets import udp
from tunplug_flowlog import plugin
from tunplug_flowlog.stage import FlowLogStage

from ._helpers import read_log

TUNNEL = TunnelInfo(interface="wg-flow", tun_backend="fake", role="gateway")


def test_no_stage_and_no_directory_when_flow_logs_is_unset(tunplug_plugin_host, monkeypatch):
    monkeypatch.delenv("TUNPLUG_FLOW_LOGS", raising=False)
    host = tunplug_plugin_host(builtins=["flow-log"])
    assert host.pipeline(load_settings(), TUNNEL).stages == ()
    assert plugin._stages == {}


def test_tunnel_down_logs_open_flows_as_shutdown(tunplug_plugin_host, tmp_path):
    host = tunplug_plugin_host(builtins=["flow-log"])
    settings = load_settings({"flow_logs": tmp_path / "flows", "flow_logs_max_bytes": 8192})
    pipeline = host.pipeline(settings, TUNNEL)
    [stage] = pipeline.stages
    assert isinstance(stage, FlowLogStage)
    assert (pipeline.names, stage.writer.max_bytes) == (["flow-log"], 8192)
    pipeline.outbound([udp("10.0.0.1", "10.0.0.2", 53, 5000, b"answer")])
    assert read_log(tmp_path / "flows") == []

    host.notify_tunnel_down(TUNNEL, None)
    assert stage.closed
    assert plugin._stages == {}
    [line] = read_log(tmp_path / "flows")
    assert (line["reason"], line["interface"], line["payload_out"]) == ("shutdown", "wg-flow", 6)


def test_tunnel_down_of_another_interface_leaves_the_stage_open(tunplug_plugin_host, tmp_path):
    host = tunplug_plugin_host(builtins=["flow-log"])
    [stage] = host.pipeline(load_settings({"flow_logs": tmp_path}), TUNNEL).stages
    host.notify_tunnel_down(TunnelInfo(interface="other", tun_backend="fake", role="test"), None)
    assert isinstance(stage, FlowLogStage)
    assert not stage.closed
    host.notify_tunnel_down(TUNNEL, RuntimeError("link lost"))
    assert stage.closed


def test_an_unusable_directory_is_a_config_error_naming_the_flag(tmp_path):
    (tmp_path / "file").write_text("")
    settings = load_settings({"flow_logs": tmp_path / "file" / "logs"})
    with pytest.raises(ConfigError, match="--flow-logs"):
        plugin.tunplug_pipeline_stages(settings, TUNNEL)
    assert plugin._stages == {}
