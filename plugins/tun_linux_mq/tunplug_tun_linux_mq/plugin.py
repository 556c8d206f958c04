"""Registers the ``linux-mq`` TUN backend with tunplug (builtin plugin ``tun-linux-mq``)."""

from __future__ import annotations

from collections.abc import Sequence

from tunplug._marker import hookimpl
from tunplug.tun import Tun
from tunplug_tun_linux_mq.device import LinuxMultiQueueTun


@hookimpl
def tunplug_register_tun_backends() -> Sequence[type[Tun]]:
    return [LinuxMultiQueueTun]
