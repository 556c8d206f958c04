"""The ``dns`` builtin plugin registers every manager, and the app builds them by name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tunplug.exceptions import BackendUnavailable
from tunplug_dns.nrpt import WindowsNrpt
from tunplug_dns.plugin import DisabledDns
from tunplug_dns.resolv_conf import EtcResolvConf
from tunplug_dns.resolved import SystemdResolved


def test_the_plugin_registers_all_four_managers_by_name(tunplug_plugin_host):
    host = tunplug_plugin_host(builtins=["dns"])
    assert dict(host.dns_managers()) == {
        "disabled": DisabledDns,
        "etc-resolv-conf": EtcResolvConf,
        "systemd-resolved": SystemdResolved,
        "nrpt": WindowsNrpt,
    }
    assert all(cls.description for cls in host.dns_managers().values())


@pytest.mark.skipif(sys.platform != "linux", reason="checks the Linux availability answers")
def test_the_app_builds_a_manager_with_its_state_dir_and_refuses_one_that_cannot_run(
    tmp_path: Path,
):
    from tunplug.app import App
    from tunplug.config import load_settings

    app = App(load_settings())
    manager = app.dns_manager("etc-resolv-conf", tmp_path)
    assert isinstance(manager, EtcResolvConf)
    assert manager.state_dir == tmp_path
    assert manager.path == Path("/etc/resolv.conf")
    with pytest.raises(BackendUnavailable, match="runs on Windows only"):
        app.dns_manager("nrpt", tmp_path)
