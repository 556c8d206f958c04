"""Choosing the data path: ``auto`` takes the native core when it is installed and says why
when it falls back to Python; an explicit choice that cannot be had is a configuration error."""

from __future__ import annotations

import importlib.util

import pytest

from tunplug.app import App
from tunplug.config import load_settings
from tunplug.datapath import PythonDataPath
from tunplug.exceptions import ConfigError
from tunplug.testing import FakeTun
from tunplug.wireguard.replay import ReplayWindow

NATIVE = importlib.util.find_spec("tunplug_fastpath") is not None


def app(**overrides: str) -> App:
    return App(load_settings(overrides))


def test_auto_without_the_native_core_runs_python_and_says_why():
    chosen = app(data_path="auto", disable_plugins="fastpath")
    path = chosen.data_path()
    assert isinstance(path, PythonDataPath)
    assert "tunplug-fastpath" in chosen.data_path_note
    assert "pure-Python" in chosen.data_path_note


def test_native_when_it_is_not_there_is_a_configuration_error():
    with pytest.raises(ConfigError, match="TUNPLUG_DATA_PATH: unknown data path 'native'"):
        app(data_path="native", disable_plugins="fastpath").data_path()


def test_python_is_always_there_and_uses_the_reference_pieces():
    path = app(data_path="python").data_path()
    assert path.name == "python"
    assert path.packet_ops() is None
    assert path.replay_windows() is None
    # No engine of its own: the Python TunnelEngine drives it.
    assert path.engine(FakeTun(), None, None, None) is None  # type: ignore[arg-type]


@pytest.mark.skipif(not NATIVE, reason="the native core is not built")
def test_auto_with_the_native_core_runs_native():
    chosen = app(data_path="auto")
    path = chosen.data_path()
    assert path.name == "native"
    assert chosen.data_path_note == ""
    ops = path.packet_ops()
    assert ops is not None and ops.rx_offloads
    windows = path.replay_windows()
    assert windows is not None
    window = windows(100)
    assert not isinstance(window, ReplayWindow)  # the native one, shared with the threads
    assert window.check(5) and not window.check(5) and not window.check(100)
