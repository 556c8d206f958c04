"""The hooks tunplug plugins implement: the whole plugin API in one place.

Every hook is called a bounded number of times per application (at startup, or on a lifecycle
event), never per packet. Per-packet work belongs in pipeline stages, which plugins hand over
through :func:`tunplug_pipeline_stages`.

A plugin is a module or object with functions decorated by :data:`tunplug.hookimpl`, loaded
from the builtin list or from an entry point in group ``tunplug``. Call hooks through
:class:`tunplug.plugins.PluginHost`, which types them; ``pm.hook.*`` is untyped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tunplug._marker import hookspec

if TYPE_CHECKING:
    from tunplug.config import PluginSettings, TunplugSettings
    from tunplug.crypto import CryptoBackend
    from tunplug.datapath import DataPath
    from tunplug.dns import DnsManager
    from tunplug.events import TunnelInfo
    from tunplug.pipeline import Stage
    from tunplug.tun import Tun


@hookspec
def tunplug_add_settings() -> type[PluginSettings] | None:
    """Return the model of this plugin's own settings (a :class:`~tunplug.config.PluginSettings`
    subclass), or ``None``.

    Called once per application, before the command line is parsed (like pytest's
    ``pytest_addoption``). Every field of the model becomes a flag (``--pcap-file``) and an
    environment variable (``TUNPLUG_PCAP_FILE``) of the commands that run tunnels, with the
    field's ``description`` in ``--help``; flags win over variables, variables over defaults. A
    bad value is a :class:`~tunplug.exceptions.ConfigError` naming the flag or variable (one
    line, exit status 2). Read the values in any later hook with
    ``settings.plugin(MySettings)``. A field name already taken by the core or by another
    plugin is a :class:`~tunplug.exceptions.PluginError`.
    """
    raise NotImplementedError


@hookspec
def tunplug_register_tun_backends() -> Sequence[type[Tun]]:
    """Return the TUN backend classes this plugin provides.

    Called once per application, when plugins are loaded. Each class is keyed by its
    ``backend_name``; two plugins returning the same name is a
    :class:`~tunplug.exceptions.PluginError` naming both distributions. A backend that cannot
    run on this system is still registered and reports why through ``unavailable_reason()``.

    Not ``firstresult``: every plugin's list is collected.
    """
    raise NotImplementedError


@hookspec
def tunplug_register_dns_managers() -> Sequence[type[DnsManager]]:
    """Return the DNS manager classes this plugin provides, keyed by their ``name``.

    Called once per application. Duplicate names are a :class:`~tunplug.exceptions.PluginError`.
    """
    raise NotImplementedError


@hookspec
def tunplug_register_crypto_backends() -> Sequence[type[CryptoBackend]]:
    """Return the crypto backend classes this plugin provides, keyed by their ``name``.

    Called once per application. Duplicate names are a :class:`~tunplug.exceptions.PluginError`.
    """
    raise NotImplementedError


@hookspec
def tunplug_register_data_paths() -> Sequence[type[DataPath]]:
    """Return the data path classes this plugin provides, keyed by their ``name``.

    Called once per application. A data path supplies the per-packet pieces of a tunnel
    (transport AEAD, TUN offload surgery) for batches; the builtin ``python`` one is the
    reference, the ``tunplug-fastpath`` distribution adds ``native``. Duplicate names are a
    :class:`~tunplug.exceptions.PluginError`.
    """
    raise NotImplementedError


@hookspec
def tunplug_pipeline_stages(settings: TunplugSettings, tunnel: TunnelInfo) -> Sequence[Stage]:
    """Return the pipeline stages this plugin wants in ``tunnel``'s data path (may be empty).

    Called once per tunnel, before it starts carrying traffic. The stages of all plugins are
    chained in hook-call order (see :class:`~tunplug.pipeline.Pipeline`); each stage then sees
    every batch of packets in both directions without any further hook call.

    The stages are the plugin's per-tunnel state: create them here (never keep them in module
    globals). A stage with a ``tick()`` method is ticked about once a second while the tunnel
    runs; one with a ``close()`` method is closed once when the tunnel goes down, after the data
    path stopped and before :func:`tunplug_tunnel_down` (see :class:`~tunplug.pipeline.Stage`).
    """
    raise NotImplementedError


@hookspec
def tunplug_configured(settings: TunplugSettings) -> None:
    """Settings are loaded and validated, and every plugin is registered.

    Called once per application, before any device is opened. Raise
    :class:`~tunplug.exceptions.ConfigError` to refuse a setting the plugin depends on.
    """


@hookspec
def tunplug_tunnel_up(tunnel: TunnelInfo) -> None:
    """The tunnel's device is open and configured, and traffic can flow.

    Called once per tunnel. Exceptions are logged and do not stop the tunnel.
    """


@hookspec
def tunplug_tunnel_down(tunnel: TunnelInfo, error: BaseException | None) -> None:
    """The tunnel stopped: ``error`` is ``None`` for a clean shutdown, or what ended it.

    Called once per tunnel that was up, after the data path has stopped and before the device
    is closed. Exceptions are logged and do not stop the shutdown.
    """
