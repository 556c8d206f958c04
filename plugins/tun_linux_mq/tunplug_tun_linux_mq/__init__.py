"""Linux multi-queue TUN backend (``linux-mq``) for tunplug.

One reader and one writer thread per device queue; each flow is written through one queue so
its packets stay in order; the device is created exclusively (``IFF_TUN_EXCL``) and vanishes
when closed. See :mod:`tunplug_tun_linux_mq.device`. Platform modules (``fcntl``, ``select.poll``,
pyroute2) are imported only when a device is opened, so this package imports on every OS.
"""

from tunplug_tun_linux_mq.device import LinuxMultiQueueTun

__all__ = ["LinuxMultiQueueTun"]
