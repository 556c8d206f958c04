"""Registers the ``darwin`` TUN backend (a placeholder until the macOS backend is built)."""

from __future__ import annotations

from collections.abc import Sequence

from tunplug import hookimpl
from tunplug._placeholder import PlaceholderTun
from tunplug.tun import Tun


class DarwinUtun(PlaceholderTun):
    """macOS utun device (planned: PF_SYSTEM control socket, 4-byte address family header)."""

    backend_name = "darwin"
    description = "macOS utun device (not implemented yet)"
    platform = "darwin"
    platform_name = "macOS"


@hookimpl
def tunplug_register_tun_backends() -> Sequence[type[Tun]]:
    return [DarwinUtun]
