"""Registration, availability and import hygiene of the linux-mq plugin (no root)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tunplug.exceptions import BackendUnavailable
from tunplug.tun import TunOptions
from tunplug_tun_linux_mq import LinuxMultiQueueTun, device
from tunplug_tun_linux_mq.plugin import tunplug_register_tun_backends


def test_the_plugin_registers_the_backend_under_its_name():
    assert list(tunplug_register_tun_backends()) == [LinuxMultiQueueTun]
    assert LinuxMultiQueueTun.backend_name == "linux-mq"
    assert LinuxMultiQueueTun.description
    assert LinuxMultiQueueTun.platforms == {"linux"}  # what tun_backend = "auto" picks it for


def test_available_on_linux_with_dev_net_tun(monkeypatch):
    monkeypatch.setattr(device.sys, "platform", "linux")
    monkeypatch.setattr(device, "TUN_PATH", "/dev/null")
    assert LinuxMultiQueueTun.unavailable_reason() is None


@pytest.mark.parametrize("platform", ["win32", "darwin"])
def test_unavailable_off_linux(monkeypatch, platform):
    monkeypatch.setattr(device.sys, "platform", platform)
    assert LinuxMultiQueueTun.unavailable_reason() == f"needs Linux (this system is {platform})"


def test_unavailable_without_the_tun_module(monkeypatch):
    monkeypatch.setattr(device.sys, "platform", "linux")
    monkeypatch.setattr(device, "TUN_PATH", "/nonexistent/tun")
    reason = LinuxMultiQueueTun.unavailable_reason()
    assert reason is not None
    assert "/nonexistent/tun is missing" in reason


@pytest.mark.anyio
async def test_create_refuses_with_the_reason_when_unavailable(monkeypatch):
    monkeypatch.setattr(device.sys, "platform", "darwin")
    with pytest.raises(BackendUnavailable, match="linux-mq: needs Linux"):
        await LinuxMultiQueueTun.create(TunOptions())


def test_modules_import_without_fcntl_or_pyroute2():
    probe = (
        "import sys\n"
        "for name in ('fcntl', 'pyroute2', 'pyroute2.netlink', 'pyroute2.netlink.exceptions'):\n"
        "    sys.modules[name] = None\n"
        "import tunplug_tun_linux_mq.plugin, tunplug_tun_linux_mq.netlink\n"
        "import tunplug_tun_linux_mq.flow, tunplug_tun_linux_mq._ioctl\n"
        "import tunplug_tun_linux_mq.queues, tunplug_tun_linux_mq.routing\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
