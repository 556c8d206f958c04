"""Plugin discovery, blocking, failures, duplicate names and the typed hook facade."""

from __future__ import annotations

import logging
import uuid

import pytest

from tunplug import hookimpl
from tunplug.config import load_settings
from tunplug.events import TunnelInfo
from tunplug.exceptions import ConfigError, PluginError
from tunplug.plugins import BUILTIN_PLUGINS, FIRST_PARTY, PluginHost
from tunplug.testing import FakeTun

from ._dists import make_distribution

BACKEND_SOURCE = """
from tunplug import hookimpl
from tunplug.testing import FakeTun

class Backend(FakeTun):
    backend_name = {name!r}

@hookimpl
def tunplug_register_tun_backends():
    return [Backend]
"""


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_builtin_plugins_register_the_documented_backends():
    host = PluginHost(autoload=False)
    host.load()
    assert {"linux-mq", "wintun", "darwin", "fake"} <= set(host.tun_backends())
    assert "disabled" in host.dns_managers()
    assert {"cryptography", "sodium"} <= set(host.crypto_backends())
    records = {record.name: record for record in host.describe()}
    builtin = {name for name, record in records.items() if record.source == "builtin"}
    assert builtin == {name for name, _ in BUILTIN_PLUGINS}
    # Without autoload, only tunplug's own optional distribution (the native core) joins them.
    assert {r.distribution for r in records.values() if r.source != "builtin"} <= FIRST_PARTY
    assert all(record.loaded for record in records.values()), records
    assert records["tun-fake"].provides == {"tun": ["fake"]}
    assert records["tun-fake"].distribution == "tunplug"


def test_each_host_has_its_own_manager():
    first, second = PluginHost(autoload=False), PluginHost(autoload=False)
    first.load()
    second.load()
    assert first.pm is not second.pm
    first.register(type("Extra", (), {}), "extra")
    assert "extra" not in second.records


def test_blocked_plugins_are_listed_but_not_loaded(monkeypatch):
    monkeypatch.setenv("TUNPLUG_DISABLE_PLUGINS", "tun-fake, crypto-sodium")
    host = PluginHost.from_settings(load_settings())
    assert "fake" not in host.tun_backends()
    assert "sodium" not in host.crypto_backends()
    records = {record.name: record for record in host.describe()}
    assert records["tun-fake"].blocked and not records["tun-fake"].loaded
    assert "cryptography" in host.crypto_backends()


def test_entry_point_plugins_are_discovered_with_their_distribution(tmp_path, monkeypatch):
    module = unique("thirdparty")
    make_distribution(
        tmp_path,
        "acme-tun",
        "2.5.1",
        {"acme": module},
        {module: BACKEND_SOURCE.format(name="acme")},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    host = PluginHost()
    host.load()
    record = {r.name: r for r in host.describe()}["acme"]
    assert (record.source, record.distribution, record.version) == (
        "entry-point",
        "acme-tun",
        "2.5.1",
    )
    assert record.provides == {"tun": ["acme"]}
    assert issubclass(host.tun_backends()["acme"], FakeTun)


def test_autoload_off_skips_entry_points(tmp_path, monkeypatch):
    module = unique("thirdparty")
    make_distribution(
        tmp_path, "acme-tun", "1.0", {"acme": module}, {module: BACKEND_SOURCE.format(name="acme")}
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TUNPLUG_DISABLE_PLUGIN_AUTOLOAD", "1")
    host = PluginHost.from_settings(load_settings())
    assert "acme" not in host.tun_backends()
    assert "acme" not in host.records


def test_a_plugin_that_fails_to_import_is_reported_and_the_rest_load(tmp_path, monkeypatch, caplog):
    broken, good = unique("broken"), unique("good")
    make_distribution(
        tmp_path,
        "broken-dist",
        "0.1",
        {"broken": broken},
        {broken: "raise RuntimeError('boom at import')\n"},
    )
    make_distribution(
        tmp_path, "good-dist", "0.2", {"good": good}, {good: BACKEND_SOURCE.format(name="good")}
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        host = PluginHost()
        host.load()
    record = host.records["broken"]
    assert record.error == "RuntimeError: boom at import"
    assert "good" in host.tun_backends()
    assert "fake" in host.tun_backends()
    assert "plugin broken (broken-dist) failed to import" in caplog.text


def test_two_plugins_claiming_one_name_is_an_error_naming_both_distributions(tmp_path, monkeypatch):
    module = unique("impostor")
    make_distribution(
        tmp_path,
        "impostor-dist",
        "9.9",
        {"impostor": module},
        {module: BACKEND_SOURCE.format(name="fake")},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    host = PluginHost()
    with pytest.raises(PluginError) as caught:
        host.load()
    message = str(caught.value)
    assert "'fake'" in message
    assert "tun-fake from tunplug" in message
    assert "impostor from impostor-dist 9.9" in message


def test_a_hook_implementation_without_a_spec_is_refused():
    class Typo:
        @hookimpl
        def tunplug_register_tun_backend(self):  # missing "s"
            return []

    host = PluginHost(autoload=False, builtins=())
    host.load()
    host.register(Typo(), "typo")
    assert "unknown hook(s): tunplug_register_tun_backend" in (host.records["typo"].error or "")
    assert host.pm.get_plugin("typo") is None


class Counting:
    """A stage that counts calls and packets, and drops packets starting with 0xFF."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0
        self.seen: list[bytes] = []

    def outbound(self, packets):
        self.calls += 1
        self.seen.extend(bytes(p) for p in packets)
        return [p for p in packets if p[:1] != b"\xff"]

    def inbound(self, packets):
        self.calls += 1
        return packets


def test_pipeline_stages_come_from_the_hook_in_load_order(tunplug_plugin_host):
    first, second = Counting(), Counting()
    first.name, second.name = "first", "second"

    class One:
        @hookimpl
        def tunplug_pipeline_stages(self, settings, tunnel):
            return [first]

    class Two:
        @hookimpl
        def tunplug_pipeline_stages(self, tunnel):  # may take a subset of the arguments
            return [second]

    host = tunplug_plugin_host(One(), Two())
    info = TunnelInfo(interface="t0", tun_backend="fake", role="test")
    pipeline = host.pipeline(load_settings(), info)
    assert pipeline.names == ["first", "second"]
    out = pipeline.outbound([b"\x45keep", b"\xffdrop"])
    assert out == [b"\x45keep"]
    assert second.seen == [b"\x45keep"]  # the first stage's drop is not seen downstream


def test_lifecycle_hook_failures_are_logged_not_raised(tunplug_plugin_host, caplog):
    calls: list[str] = []

    class Faulty:
        @hookimpl
        def tunplug_tunnel_up(self, tunnel):
            raise RuntimeError("plugin bug")

    class Fine:
        @hookimpl
        def tunplug_tunnel_up(self, tunnel):
            calls.append(tunnel.interface)

    host = tunplug_plugin_host(Faulty(), Fine())
    with caplog.at_level(logging.ERROR):
        host.notify_tunnel_up(TunnelInfo(interface="t0", tun_backend="fake", role="test"))
    assert calls == ["t0"]
    assert "failed in tunplug_tunnel_up" in caplog.text


def test_plugin_host_fixture_loads_only_what_is_asked(tunplug_plugin_host):
    host = tunplug_plugin_host(builtins=["tun-fake"])
    assert list(host.tun_backends()) == ["fake"]
    assert host.crypto_backends() == {}
    with pytest.raises(ValueError, match="no builtin plugin"):
        tunplug_plugin_host(builtins=["nope"])


# -- settings (tunplug_add_settings) ----------------------------------------------------------
SETTINGS_SOURCE = """
from pydantic import Field
from tunplug import hookimpl
from tunplug.config import PluginSettings

class Settings(PluginSettings):
    {field}: int = Field(default=7, ge=1, description="how many")

@hookimpl
def tunplug_add_settings():
    return Settings
"""


def test_a_third_party_distribution_declares_settings(tmp_path, monkeypatch):
    module = unique("settled")
    make_distribution(
        tmp_path, "settled-dist", "1.0", {"settled": module},
        {module: SETTINGS_SOURCE.format(field="settled_count")},
    )  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    host = PluginHost()
    host.load()
    [declared] = [m for m in host.settings_models() if m.plugin == "settled"]
    assert host.records["settled"].settings == ["settled_count"]
    models = [m.model for m in host.settings_models()]
    settings = load_settings(plugins=models, environ={"TUNPLUG_SETTLED_COUNT": "3"})
    assert settings.plugin(declared.model).settled_count == 3  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"^TUNPLUG_SETTLED_COUNT: "):
        load_settings(plugins=models, environ={"TUNPLUG_SETTLED_COUNT": "0"})


@pytest.mark.parametrize("field", ["tun_threads", "flow_logs"])
def test_a_setting_taken_by_the_core_or_another_plugin_stops_startup(field, tmp_path, monkeypatch):
    module = unique("greedy")
    make_distribution(
        tmp_path, "greedy-dist", "0.3", {"greedy": module},
        {module: SETTINGS_SOURCE.format(field=field)},
    )  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as caught:
        PluginHost().load()
    message = str(caught.value)
    assert f"plugin greedy (greedy-dist) declares setting {field!r}" in message
    owner = "tunplug's own settings" if field == "tun_threads" else "plugin flow-log (tunplug)"
    assert owner in message


def test_a_setting_of_the_commands_own_model_is_refused(tunplug_plugin_host):
    from tunplug.config import PluginSettings
    from tunplug.headless.settings import HeadlessSettings

    class Clash(PluginSettings):
        state_dir: str = "x"

    with pytest.raises(PluginError, match="state_dir"):
        load_settings(model=HeadlessSettings, plugins=[Clash], environ={})


def test_settings_hook_must_return_a_plugin_settings_model(tunplug_plugin_host):
    class Wrong:
        @hookimpl
        def tunplug_add_settings(self) -> object:
            return dict

    with pytest.raises(PluginError, match=r"not a tunplug\.config\.PluginSettings subclass"):
        tunplug_plugin_host(Wrong()).settings_models()


# -- pluggy's own hook calls ------------------------------------------------------------------
def test_registration_and_lifecycle_calls_go_through_pluggy_wrappers(tunplug_plugin_host):
    seen: list[str] = []

    class Tracer:
        @hookimpl(wrapper=True)
        def tunplug_register_tun_backends(self):  # type: ignore[no-untyped-def]
            seen.append("register")
            return (yield)

        @hookimpl(wrapper=True)
        def tunplug_tunnel_down(self, tunnel, error):  # type: ignore[no-untyped-def]
            seen.append(f"down {tunnel.interface}")
            return (yield)

    class Extra(FakeTun):
        backend_name = "extra"

    class Provider:
        @hookimpl
        def tunplug_register_tun_backends(self) -> list[type[FakeTun]]:
            return [Extra]

        @hookimpl
        def tunplug_tunnel_down(self, tunnel: TunnelInfo, error: BaseException | None) -> None:
            raise RuntimeError("one plugin failing does not stop the others")

    host = tunplug_plugin_host(Tracer(), Provider(), builtins=["tun-fake", "flow-log"])
    assert host.tun_backends()["extra"] is Extra
    assert host.records["Provider"].provides == {"tun": ["extra"]}
    # One call per implementing plugin (tun-fake and Provider), each through the wrapper.
    assert seen.count("register") == 2
    host.notify_tunnel_down(TunnelInfo("wg9", "fake", "test"), None)
    assert seen.count("down wg9") == 1
