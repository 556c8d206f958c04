"""Plugin loading and the typed facade over tunplug's hooks.

Who calls it: :class:`tunplug.app.App` builds one :class:`PluginHost` per application (nothing
happens at import time), and ``tunplug plugins`` lists what it found. Tests build hosts with
only the plugins they choose (see the ``tunplug_plugin_host`` fixture).

Where plugins come from, in order: the builtin modules in :data:`BUILTIN_PLUGINS`, then entry
points in group ``tunplug`` (skipped with ``TUNPLUG_DISABLE_PLUGIN_AUTOLOAD=1``). Any of them can
be blocked by name with ``TUNPLUG_DISABLE_PLUGINS=name,name``. A plugin that fails to import is
recorded with its error and the others still load.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, Literal, TypeVar, cast

import pluggy

from tunplug import hookspecs
from tunplug._marker import PROJECT_NAME
from tunplug.config import CORE_FIELDS, PluginLoading, PluginSettings, TunplugSettings
from tunplug.crypto import CryptoBackend
from tunplug.datapath import DataPath
from tunplug.dns import DnsManager
from tunplug.events import TunnelInfo
from tunplug.exceptions import PluginError
from tunplug.pipeline import Pipeline, Stage
from tunplug.tun import Tun

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "tunplug"

#: The plugins shipped in the ``tunplug`` distribution: (plugin name, module).
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("tun-linux-mq", "tunplug_tun_linux_mq.plugin"),
    ("tun-wintun", "tunplug_tun_wintun.plugin"),
    ("tun-darwin", "tunplug_tun_darwin.plugin"),
    ("tun-fake", "tunplug.testing.fake"),
    ("dns", "tunplug_dns.plugin"),
    ("flow-log", "tunplug_flowlog.plugin"),
    ("crypto-cryptography", "tunplug_crypto_cryptography.plugin"),
    ("crypto-sodium", "tunplug_crypto_sodium.plugin"),
    ("datapath-python", "tunplug.datapath"),
)

#: tunplug's own optional distributions: their entry points load even without autoload
#: (``TUNPLUG_DISABLE_PLUGIN_AUTOLOAD`` keeps third-party code out, not tunplug's native core).
FIRST_PARTY = frozenset({"tunplug-fastpath"})

Source = Literal["builtin", "entry-point", "direct"]
Kind = Literal["tun", "dns", "crypto", "datapath"]

T = TypeVar("T")

_REGISTRATION_HOOKS: dict[Kind, tuple[str, str]] = {
    "tun": ("tunplug_register_tun_backends", "backend_name"),
    "dns": ("tunplug_register_dns_managers", "name"),
    "crypto": ("tunplug_register_crypto_backends", "name"),
    "datapath": ("tunplug_register_data_paths", "name"),
}


@dataclass(slots=True)
class PluginRecord:
    """One plugin as ``tunplug plugins`` shows it."""

    name: str
    module: str
    source: Source
    distribution: str
    version: str
    blocked: bool = False
    error: str | None = None
    provides: dict[Kind, list[str]] = field(default_factory=dict)
    #: The fields of its settings model (``tunplug_add_settings``).
    settings: list[str] = field(default_factory=list)

    @property
    def loaded(self) -> bool:
        return not self.blocked and self.error is None


@dataclass(frozen=True, slots=True)
class PluginSettingsModel:
    """A plugin's settings model and the plugin that declared it."""

    plugin: str
    model: type[PluginSettings]


@dataclass(frozen=True, slots=True)
class Registered(Generic[T]):
    """A backend class and the plugin that registered it."""

    cls: T
    plugin: str


def _own_distribution() -> tuple[str, str]:
    try:
        return "tunplug", importlib.metadata.version("tunplug")
    except importlib.metadata.PackageNotFoundError:
        from tunplug import __version__

        return "tunplug", __version__


class PluginHost:
    """A fresh pluggy manager with tunplug's hookspecs, and typed access to every hook.

    ``blocked`` names plugins not to load; ``autoload`` loads entry points; ``builtins`` lists
    the builtin plugin modules (tests pass a subset). Call :meth:`load` once.
    """

    def __init__(
        self,
        *,
        blocked: Iterable[str] = (),
        autoload: bool = True,
        builtins: Sequence[tuple[str, str]] = BUILTIN_PLUGINS,
    ) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.blocked = frozenset(blocked)
        self.autoload = autoload
        self.builtins = tuple(builtins)
        self.records: dict[str, PluginRecord] = {}
        self._registries: dict[Kind, dict[str, Registered[Any]]] = {}
        self._settings_models: list[PluginSettingsModel] | None = None
        self._loaded = False

    @classmethod
    def from_settings(cls, settings: PluginLoading) -> PluginHost:
        """A loaded host, blocking and autoloading as ``settings`` say (read them from the
        environment with :meth:`PluginLoading.from_environment` before the command line is
        parsed, so that plugins can add flags to it)."""
        host = cls(blocked=settings.blocked_plugins, autoload=not settings.disable_plugin_autoload)
        host.load()
        return host

    # -- loading --------------------------------------------------------------------------
    def load(self) -> None:
        """Import and register the builtin plugins, then the entry points: all of them with
        autoload, else only those of :data:`FIRST_PARTY` distributions."""
        if self._loaded:
            raise RuntimeError("PluginHost.load() called twice")
        self._loaded = True
        own_dist, own_version = _own_distribution()
        for name, module in self.builtins:
            self._load_one(
                name,
                module,
                "builtin",
                own_dist,
                own_version,
                partial(importlib.import_module, module),
            )
        for ep in sorted(
            importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name
        ):
            dist = ep.dist
            if not (self.autoload or (dist is not None and dist.name in FIRST_PARTY)):
                continue
            if ep.name in self.records:
                continue  # the same distribution seen twice on sys.path
            self._load_one(
                ep.name,
                ep.value,
                "entry-point",
                dist.name if dist else "?",
                dist.version if dist else "?",
                ep.load,
            )
        self.pm.check_pending()
        for kind in _REGISTRATION_HOOKS:
            self._registry(kind)
        self.settings_models()

    def register(self, plugin: object, name: str) -> None:
        """Register an already-imported plugin object (tests, embedding applications)."""
        self._loaded = True
        record = PluginRecord(name, type(plugin).__name__, "direct", "(direct)", "")
        self.records[name] = record
        self._register(plugin, record)
        self._registries.clear()
        self._settings_models = None

    def _load_one(
        self,
        name: str,
        module: str,
        source: Source,
        dist: str,
        version: str,
        loader: Callable[[], object],
    ) -> None:
        record = PluginRecord(name, module, source, dist, version)
        self.records[name] = record
        if name in self.blocked:
            record.blocked = True
            self.pm.set_blocked(name)
            log.debug("plugin %s is blocked by TUNPLUG_DISABLE_PLUGINS", name)
            return
        try:
            plugin = loader()
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            log.warning("plugin %s (%s) failed to import: %s", name, dist, record.error)
            return
        self._register(plugin, record)

    def _register(self, plugin: object, record: PluginRecord) -> None:
        try:
            self.pm.register(plugin, name=record.name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            record.error = f"invalid plugin: {exc}"
            log.warning("plugin %s (%s) is invalid: %s", record.name, record.distribution, exc)
            return
        unknown = [c.name for c in self.pm.get_hookcallers(plugin) or () if not c.has_spec()]
        if unknown:
            self.pm.unregister(plugin)
            record.error = f"implements unknown hook(s): {', '.join(sorted(unknown))}"
            log.warning("plugin %s (%s) %s", record.name, record.distribution, record.error)

    # -- calling hooks one plugin at a time ------------------------------------------------
    def _callers(self, hook_name: str) -> Iterator[tuple[str, Callable[..., Any]]]:
        """For each plugin implementing ``hook_name`` (load order): its name, and a pluggy hook
        caller with every wrapper and only that plugin's implementation.

        Calls through these are real pluggy hook calls, so wrappers and tracing see them, and
        each result is known to come from its plugin: what the duplicate-name errors, ``tunplug
        plugins`` and per-plugin error isolation need.
        """
        implementers = [impl.plugin for impl in _plain_impls(self.pm, hook_name)]
        for plugin in implementers:
            others = [other for other in implementers if other is not plugin]
            name = self.pm.get_name(plugin) or "?"
            yield name, self.pm.subset_hook_caller(hook_name, remove_plugins=others)

    def _call_each(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """``hook_name``'s results, each with the plugin that returned it (pluggy leaves out
        ``None``)."""
        return [
            (name, result)
            for name, caller in self._callers(hook_name)
            for result in caller(**kwargs)
        ]

    # -- registries -----------------------------------------------------------------------
    def _registry(self, kind: Kind) -> dict[str, Registered[Any]]:
        if kind in self._registries:
            return self._registries[kind]
        hook_name, key = _REGISTRATION_HOOKS[kind]
        registry: dict[str, Registered[Any]] = {}
        for plugin_name, classes in self._call_each(hook_name):
            record = self.records[plugin_name]
            for cls in cast("Sequence[type] | None", classes) or ():
                backend_name = getattr(cls, key, None)
                if not isinstance(backend_name, str) or not backend_name:
                    raise PluginError(
                        f"plugin {record.name} ({record.distribution}) registered {cls!r} "
                        f"without a {key!r} string attribute"
                    )
                if backend_name in registry:
                    other = self.records[registry[backend_name].plugin]
                    raise PluginError(
                        f"{kind} backend name {backend_name!r} is claimed by two plugins: "
                        f"{other.name} from {other.distribution} {other.version} and "
                        f"{record.name} from {record.distribution} {record.version}; "
                        f"block one with TUNPLUG_DISABLE_PLUGINS"
                    )
                registry[backend_name] = Registered(cls, plugin_name)
                record.provides.setdefault(kind, []).append(backend_name)
        self._registries[kind] = registry
        return registry

    def settings_models(self) -> list[PluginSettingsModel]:
        """Every plugin's settings model (``tunplug_add_settings``), in load order.

        :raises PluginError: a model is not a :class:`PluginSettings` subclass, or one of its
            fields is taken by the core's settings or by another plugin.
        """
        if self._settings_models is not None:
            return self._settings_models
        models: list[PluginSettingsModel] = []
        owners: dict[str, str] = {name: "tunplug's own settings" for name in CORE_FIELDS}
        for plugin_name, model in self._call_each("tunplug_add_settings"):
            record = self.records[plugin_name]
            who = f"plugin {record.name} ({record.distribution})"
            if not (isinstance(model, type) and issubclass(model, PluginSettings)):
                raise PluginError(
                    f"{who} returned {model!r} from tunplug_add_settings, "
                    "not a tunplug.config.PluginSettings subclass"
                )
            for field_name in model.model_fields:
                if field_name in owners:
                    raise PluginError(
                        f"{who} declares setting {field_name!r}, which {owners[field_name]} "
                        "already has; prefix a plugin's settings with its name"
                    )
                owners[field_name] = who
            record.settings = list(model.model_fields)
            models.append(PluginSettingsModel(plugin_name, model))
        self._settings_models = models
        return models

    def tun_backends(self) -> Mapping[str, type[Tun]]:
        return {name: reg.cls for name, reg in self._registry("tun").items()}

    def dns_managers(self) -> Mapping[str, type[DnsManager]]:
        return {name: reg.cls for name, reg in self._registry("dns").items()}

    def crypto_backends(self) -> Mapping[str, type[CryptoBackend]]:
        return {name: reg.cls for name, reg in self._registry("crypto").items()}

    def data_paths(self) -> Mapping[str, type[DataPath]]:
        return {name: reg.cls for name, reg in self._registry("datapath").items()}

    # -- startup and lifecycle ------------------------------------------------------------
    def pipeline(self, settings: TunplugSettings, tunnel: TunnelInfo) -> Pipeline:
        """Collect every plugin's stages for ``tunnel``, in plugin load order."""
        results: list[Sequence[Stage]] = self.pm.hook.tunplug_pipeline_stages(
            settings=settings, tunnel=tunnel
        )
        stages: list[Stage] = []
        for batch in reversed(results):
            for stage in batch:
                if not isinstance(stage, Stage):
                    raise PluginError(f"pipeline stage {stage!r} lacks name/outbound/inbound")
                stages.append(stage)
        return Pipeline(tuple(stages))

    def notify_configured(self, settings: TunplugSettings) -> None:
        self.pm.hook.tunplug_configured(settings=settings)

    def notify_tunnel_up(self, tunnel: TunnelInfo) -> None:
        self._notify_each("tunplug_tunnel_up", tunnel=tunnel)

    def notify_tunnel_down(self, tunnel: TunnelInfo, error: BaseException | None) -> None:
        self._notify_each("tunplug_tunnel_down", tunnel=tunnel, error=error)

    def _notify_each(self, hook_name: str, **kwargs: Any) -> None:
        """A lifecycle hook, per plugin: one failing is logged and the others are still told."""
        for name, caller in self._callers(hook_name):
            try:
                caller(**kwargs)
            except Exception:
                log.exception("plugin %s failed in %s", name, hook_name)

    def describe(self) -> list[PluginRecord]:
        """Every plugin seen, loaded or not, in load order."""
        return list(self.records.values())


def _plain_impls(pm: pluggy.PluginManager, hook_name: str) -> list[pluggy.HookImpl]:
    """A hook's non-wrapper implementations in plugin load order (pluggy keeps them in
    registration order and calls them last first), for calling one by one."""
    impls = getattr(pm.hook, hook_name).get_hookimpls()
    return [impl for impl in impls if not (impl.wrapper or impl.hookwrapper)]
