"""Registers the ``wintun`` TUN backend with tunplug (builtin plugin ``tun-wintun``)."""

from __future__ import annotations

from collections.abc import Sequence

from tunplug._marker import hookimpl
from tunplug.tun import Tun
from tunplug_tun_wintun.device import WintunTun


@hookimpl
def tunplug_register_tun_backends() -> Sequence[type[Tun]]:
    return [WintunTun]
