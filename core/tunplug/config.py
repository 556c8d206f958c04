"""Settings shared by every tunplug command, from flags, ``TUNPLUG_*`` variables and defaults.

Who calls it: the CLIs (through :func:`load_settings`) and :class:`tunplug.app.App`. A bad value
becomes one :class:`~tunplug.exceptions.ConfigError` naming the flag or variable to fix; the CLIs
print it as one line and exit with status 2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, overload

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from tunplug.exceptions import ConfigError, PluginError

ENV_PREFIX = "TUNPLUG_"

LogLevel = Literal["trace", "debug", "info", "warning", "error"]


class PluginSettings(BaseModel):
    """The base of a plugin's own settings, declared through the ``tunplug_add_settings`` hook.

    Each field becomes a command-line flag (``--`` + the field name with dashes) and an
    environment variable (``TUNPLUG_`` + the field name in capitals) of every tunplug command
    that runs tunnels, with its ``description`` as the ``--help`` text. Field names are global:
    prefix them with the plugin's name (``pcap_file``, ``flow_logs``). Values are validated like
    the core's: a bad one is one line naming the flag or variable, and exit status 2. A plugin
    reads its values with :meth:`TunplugSettings.plugin`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")


P = TypeVar("P", bound=PluginSettings)


class PluginLoading(BaseSettings):
    """Which plugins load: read from the environment alone, before the command line is parsed
    (plugins add flags to it), by :meth:`from_environment`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", validate_default=True, populate_by_name=True
    )

    disable_plugins: str = Field("", description="comma-separated plugin names that are not loaded")
    disable_plugin_autoload: bool = Field(
        False, description="do not load third-party plugins from entry points"
    )

    @classmethod
    def from_environment(cls) -> PluginLoading:
        """:raises ConfigError: a variable is invalid (one line)."""
        from_environment: dict[str, Any] = {}  # pydantic-settings reads the variables itself
        try:
            return PluginLoading(**from_environment)
        except ValidationError as exc:
            raise _config_error(exc, {}, {}) from None

    @property
    def blocked_plugins(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.disable_plugins.split(",") if name.strip())


class TunplugSettings(PluginLoading):
    """Every setting, with its environment variable (``TUNPLUG_`` + the field name in capitals).

    Flags win over variables, variables over defaults. Plugins' own settings are not fields:
    :meth:`plugin` returns them.
    """

    tun_backend: str = Field(
        "auto",
        description="TUN backend name; 'auto' picks the one for this operating system",
        min_length=1,
    )
    tun_threads: int = Field(
        1, ge=1, le=64, description="device queues, each with its own reader and writer thread"
    )
    batch_size: int = Field(100, ge=1, le=1024, description="packets per batch, each direction")
    offloads: bool = Field(True, description="use TSO/GRO and UDP GSO/GRO when available")
    crypto_backend: str = Field("cryptography", min_length=1, description="crypto backend name")
    data_path: str = Field(
        "auto",
        min_length=1,
        description="who does the per-packet work: 'native' (the Rust core, tunplug-fastpath), "
        "'python' (the reference), or 'auto' (native when installed)",
    )
    log_level: LogLevel = Field(
        "info",
        validation_alias=AliasChoices("tunplug_log", "tunplug_log_level"),
        description="log verbosity (TUNPLUG_LOG)",
    )
    test_timers: str = Field(
        "",
        description="test only: shortened WireGuard timers, e.g. 'rekey_after_time=5'",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    _plugin_settings: dict[type[PluginSettings], PluginSettings] = PrivateAttr(default_factory=dict)

    def plugin(self, model: type[P]) -> P:
        """The values of a plugin's settings ``model`` (its defaults when the plugin's settings
        were not loaded with these settings, e.g. in a test that builds settings itself)."""
        value = self._plugin_settings.get(model)
        if value is None:
            value = self._plugin_settings[model] = model()
        assert isinstance(value, model)
        return value


#: The names of the core's settings, which no plugin setting may take.
CORE_FIELDS = frozenset(TunplugSettings.model_fields)

_ENV_NAMES = {"log_level": "TUNPLUG_LOG", "log_dir": "LOG_DIR"}


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return _ENV_NAMES.get(field, ENV_PREFIX + field.upper())


S = TypeVar("S", bound=TunplugSettings)


@overload
def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    flags: Mapping[str, str] | None = None,
    plugins: Sequence[type[PluginSettings]] = (),
    environ: Mapping[str, str] | None = None,
) -> TunplugSettings: ...


@overload
def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    flags: Mapping[str, str] | None = None,
    model: type[S],
    plugins: Sequence[type[PluginSettings]] = (),
    environ: Mapping[str, str] | None = None,
) -> S: ...


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    flags: Mapping[str, str] | None = None,
    model: type[TunplugSettings] = TunplugSettings,
    plugins: Sequence[type[PluginSettings]] = (),
    environ: Mapping[str, str] | None = None,
) -> TunplugSettings:
    """Build settings from ``overrides`` (command-line values), the environment and defaults.

    ``flags`` maps a field name to the flag that set it, so that an error names what the user
    typed. ``model`` is :class:`TunplugSettings` or a command's subclass of it. ``plugins`` are
    the plugins' settings models (``PluginHost.settings_models()``): their values come from
    ``overrides`` (by field name), else from ``environ`` (default: the process environment),
    else their defaults, and :meth:`TunplugSettings.plugin` returns them.
    :raises ConfigError: a value is invalid; the message is one line.
    :raises PluginError: a plugin's setting has the name of one of ``model``'s.
    """
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    try:
        settings = model(**given)
    except ValidationError as exc:
        raise _config_error(exc, given, flags or {}) from None
    env = os.environ if environ is None else environ
    for plugin_model in plugins:
        taken = sorted(set(plugin_model.model_fields) & set(model.model_fields))
        if taken:
            raise PluginError(
                f"{plugin_model.__qualname__} declares {', '.join(taken)}, "
                f"which {model.__name__} already has"
            )
        values: dict[str, Any] = {}
        for name in plugin_model.model_fields:
            if name in given:
                values[name] = given[name]
            elif env_name(name) in env:
                values[name] = env[env_name(name)]
        try:
            settings._plugin_settings[plugin_model] = plugin_model(**values)
        except ValidationError as exc:
            raise _config_error(exc, given, flags or {}) from None
    return settings


def _config_error(
    exc: ValidationError, given: Mapping[str, Any], flags: Mapping[str, str]
) -> ConfigError:
    first = exc.errors()[0]
    loc = first["loc"]
    field = str(loc[0]) if loc else "settings"
    if field.startswith("tunplug_"):
        field = field.removeprefix("tunplug_")
    if field in given:
        setting = flags.get(field, f"--{field.replace('_', '-')}")
    else:
        setting = env_name(field)
    value = first.get("input")
    message = str(first["msg"])
    shown = f" (got {value!r})" if isinstance(value, str | int | float) else ""
    return ConfigError(setting, f"{message[0].lower()}{message[1:]}{shown}")
