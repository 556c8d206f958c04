"""Registers the ``darwin`` TUN backend with tunplug (builtin plugin ``tun-darwin``)."""

from __future__ import annotations

from collections.abc import Sequence

from tunplug._marker import hookimpl
from tunplug.tun import Tun
from tunplug_tun_darwin.device import DarwinUtunTun


@hookimpl
def tunplug_register_tun_backends() -> Sequence[type[Tun]]:
    return [DarwinUtunTun]
