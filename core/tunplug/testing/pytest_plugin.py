"""pytest fixtures for tunplug and its plugin authors, registered through ``pytest11``.

- ``tunplug_plugin_host``: a factory for a :class:`~tunplug.plugins.PluginHost` holding only the
  plugins a test names (no entry points, no builtins unless asked);
- ``fake_tun``: an open :class:`~tunplug.testing.FakeTun` (async tests, via anyio's plugin);
- ``memory_network``: a fresh :class:`~tunplug.testing.MemoryNetwork`;
- ``tunnel_pair``: a client and a gateway joined by a real WireGuard tunnel over the memory
  network, engines running (async tests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from tunplug.plugins import PluginHost
from tunplug.testing.fake import FakeTun
from tunplug.testing.network import MemoryNetwork
from tunplug.testing.tunnel import TunnelPair, open_tunnel_pair
from tunplug.tun import TunOptions

PluginHostFactory = Callable[..., PluginHost]


@pytest.fixture
def tunplug_plugin_host() -> PluginHostFactory:
    """Build a loaded plugin host: ``tunplug_plugin_host(obj, ..., builtins=[...])``.

    Positional arguments are plugin objects (modules, classes, instances), registered under
    their ``__name__`` or class name; ``builtins`` picks builtin plugins by name
    (e.g. ``["tun-fake"]``). Entry points are never loaded.
    """
    from tunplug.plugins import BUILTIN_PLUGINS

    def build(*plugins: object, builtins: Sequence[str] = ()) -> PluginHost:
        chosen = [entry for entry in BUILTIN_PLUGINS if entry[0] in builtins]
        unknown = set(builtins) - {name for name, _ in chosen}
        if unknown:
            raise ValueError(f"no builtin plugin named {sorted(unknown)}")
        host = PluginHost(autoload=False, builtins=chosen)
        host.load()
        for plugin in plugins:
            name = getattr(plugin, "__name__", None) or type(plugin).__name__
            host.register(plugin, name)
        return host

    return build


@pytest.fixture
def memory_network() -> MemoryNetwork:
    return MemoryNetwork()


@pytest.fixture
async def fake_tun() -> AsyncIterator[FakeTun]:
    tun = FakeTun(TunOptions(name="fake-test"))
    try:
        yield tun
    finally:
        await tun.aclose()


@pytest.fixture
async def tunnel_pair(memory_network: MemoryNetwork) -> AsyncIterator[TunnelPair]:
    from tunplug.testing.crypto import crypto_backend

    async with open_tunnel_pair(crypto_backend(), network=memory_network) as pair:
        yield pair
