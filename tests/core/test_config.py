"""Settings from flags and TUNPLUG_* variables; bad values are one clear line."""

from __future__ import annotations

import pytest

from tunplug.config import load_settings
from tunplug.exceptions import ConfigError


def test_defaults():
    settings = load_settings()
    assert settings.tun_backend == "auto"
    assert settings.tun_threads == 1
    assert settings.batch_size == 100
    assert settings.blocked_plugins == frozenset()


def test_environment_and_flags(monkeypatch):
    monkeypatch.setenv("TUNPLUG_TUN_THREADS", "2")
    monkeypatch.setenv("TUNPLUG_LOG", "DEBUG")
    monkeypatch.setenv("TUNPLUG_DISABLE_PLUGINS", "a, b,,")
    settings = load_settings()
    assert settings.tun_threads == 2
    assert settings.log_level == "debug"
    assert settings.blocked_plugins == {"a", "b"}
    assert load_settings({"tun_threads": 4}).tun_threads == 4  # a flag wins


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("TUNPLUG_TUN_THREADS", "many", "TUNPLUG_TUN_THREADS: input should be a valid integer"),
        ("TUNPLUG_TUN_THREADS", "0", "TUNPLUG_TUN_THREADS: input should be greater than or equal"),
        ("TUNPLUG_LOG", "loud", "TUNPLUG_LOG: input should be"),
        ("TUNPLUG_OFFLOADS", "maybe", "TUNPLUG_OFFLOADS: input should be a valid boolean"),
    ],
)
def test_bad_environment_values_name_the_variable(monkeypatch, variable, value, expected):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(expected)
    assert repr(value) in message
    assert "\n" not in message


def test_bad_flag_values_name_the_flag():
    with pytest.raises(ConfigError) as caught:
        load_settings({"tun_threads": 0}, flags={"tun_threads": "--tun-threads"})
    assert str(caught.value).startswith("--tun-threads: input should be greater")


def test_test_timers_shorten_wireguard_timers_and_reject_nonsense():
    from tunplug.live_tunnel import parse_test_timers

    timing = parse_test_timers("rekey_after_time=3, keepalive_timeout=1,rekey_after_messages=100")
    assert (timing.rekey_after_time, timing.keepalive_timeout) == (3.0, 1.0)
    assert timing.rekey_after_messages == 100 and isinstance(timing.rekey_after_messages, int)
    assert timing.reject_after_time == 180.0  # untouched defaults stay
    with pytest.raises(ConfigError, match="unknown timer 'bogus'"):
        parse_test_timers("bogus=1")
    with pytest.raises(ConfigError, match="rekey_after_time: not a number"):
        parse_test_timers("rekey_after_time=soon")
