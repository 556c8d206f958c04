"""Linux multi-queue TUN backend (``linux-mq``) for tunplug.

One reader and one writer thread per device queue; each flow is written through one queue so
its packets stay in order; the device is created exclusively (``IFF_TUN_EXCL``) and vanishes
when closed. See :mod:`tunplug_tun_linux_mq.device`. Platform modules (``fcntl``, ``select.poll``)
are imported only when a device is opened, and pyroute2 only in the netlink child process
(:mod:`tunplug_tun_linux_mq.netlink`), so this package imports on every OS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunplug_tun_linux_mq.device import LinuxMultiQueueTun

__all__ = ["LinuxMultiQueueTun"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that the netlink child (started at every tunnel start-up and
    # shutdown) does not pay for the device module's imports (anyio, asyncio).
    if name == "LinuxMultiQueueTun":
        from tunplug_tun_linux_mq.device import LinuxMultiQueueTun

        return LinuxMultiQueueTun
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
