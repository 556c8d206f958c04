"""Public test helpers for tunplug and its plugin authors (no root needed).

- :class:`FakeTun`: the ``fake`` TUN backend, an in-memory device with real backpressure;
- :class:`MemoryNetwork`: in-memory datagram transports joined without sockets;
- :mod:`tunplug.testing.packets`: build and read small IP packets;
- :mod:`tunplug.testing.pytest_plugin`: fixtures (loaded automatically by pytest through the
  ``pytest11`` entry point): ``tunplug_plugin_host``, ``fake_tun``, ``memory_network``,
  ``tunnel_pair``;
- :mod:`tunplug.testing.contract`: the shared Tun contract suite (a ``TunHarness`` per backend,
  ``cases()``, ``run_check()``) for backend authors; needs pytest, so it is not imported here.
"""

from tunplug.testing.fake import FakeTun
from tunplug.testing.network import MemoryNetwork, MemoryTransport

__all__ = ["FakeTun", "MemoryNetwork", "MemoryTransport"]
