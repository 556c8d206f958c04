"""The crypto backend for test helpers, found through the plugin registry.

Who calls it: :mod:`tunplug.testing`'s helpers (flood initiations, interop keys, the
``tunnel_pair`` fixture) and tests. The core never imports a plugin package; it asks the
builtin plugins for the backend by name, as :meth:`tunplug.app.App.crypto` does.
"""

from __future__ import annotations

from functools import cache

from tunplug.crypto import CryptoBackend
from tunplug.exceptions import PluginError
from tunplug.plugins import PluginHost

#: The backend tunplug uses by default (``TunplugSettings.crypto_backend``).
DEFAULT_CRYPTO = "cryptography"


@cache
def _crypto_class(name: str) -> type[CryptoBackend]:
    host = PluginHost(autoload=False)
    host.load()
    backends = host.crypto_backends()
    if name not in backends:
        raise PluginError(f"no crypto backend {name!r} (installed: {', '.join(sorted(backends))})")
    return backends[name]


def crypto_backend(name: str = DEFAULT_CRYPTO) -> CryptoBackend:
    """A new instance of the crypto backend ``name`` from tunplug's builtin plugins.

    :raises PluginError: no such backend.
    """
    return _crypto_class(name)()
