"""Registers the ``wintun`` TUN backend with tunplug (builtin plugin ``tun-wintun``), and its
settings (:class:`~tunplug_tun_wintun.settings.WintunSettings`)."""

from __future__ import annotations

from collections.abc import Sequence

from tunplug._marker import hookimpl
from tunplug.config import PluginSettings
from tunplug.tun import Tun
from tunplug_tun_wintun.device import WintunTun
from tunplug_tun_wintun.settings import WintunSettings


@hookimpl
def tunplug_add_settings() -> type[PluginSettings]:
    return WintunSettings


@hookimpl
def tunplug_register_tun_backends() -> Sequence[type[Tun]]:
    return [WintunTun]
