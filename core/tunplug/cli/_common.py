"""What every tunplug command shares: error reporting, exit codes and logging setup.

Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage (also argparse's own;
also an interface name that is taken), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tunplug.config import PluginLoading, TunplugSettings, env_name, load_settings
from tunplug.exceptions import (
    BackendUnavailable,
    BusyResource,
    ConfigError,
    PluginError,
    TunplugError,
    single_leaf,
)

if TYPE_CHECKING:
    from tunplug.plugins import PluginHost

S = TypeVar("S", bound=TunplugSettings)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _PrivateRotatingFileHandler(RotatingFileHandler):
    """Rotated log files that only the owner and group can read (0640), the rotated ones too."""

    def _open(self) -> Any:
        stream = super()._open()
        os.chmod(self.baseFilename, 0o640)
        return stream


def setup_logging(
    level: str,
    log_dir: Path | None = None,
    *,
    file_name: str = "tunplug.log",
    max_bytes: int = 10 * 1024 * 1024,
    backups: int = 5,
) -> Path | None:
    """Human-readable logs on stderr, and with ``log_dir`` also in a size-capped rotated file.

    The directory is created (mode 0750) if needed and the file is mode 0640. Returns the log
    file's path. :raises ConfigError: the directory or file cannot be created (``LOG_DIR``).
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    path = None
    if log_dir is not None:
        path = log_dir / file_name
        try:
            log_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
            handlers.append(
                _PrivateRotatingFileHandler(
                    path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
                )
            )
        except OSError as exc:
            raise ConfigError("LOG_DIR", f"cannot write logs to {path}: {exc.strerror}") from None
    logging.basicConfig(
        level=_LEVELS.get(level, logging.INFO), format=LOG_FORMAT, handlers=handlers, force=True
    )
    return path


def _unwrapped(command: Callable[[], int]) -> int:
    """Run ``command``; an error that escaped a task group alone is raised as itself."""
    try:
        return command()
    except BaseExceptionGroup as group:
        leaf = single_leaf(group)
        if leaf is group:
            raise
        raise leaf from None


def run_command(prog: str, command: Callable[[], int]) -> int:
    """Run ``command``, turning tunplug's errors into one line on stderr and an exit code."""
    try:
        return _unwrapped(command)
    except (ConfigError, BackendUnavailable, PluginError, BusyResource) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except TunplugError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


# -- plugins' settings on the command line -----------------------------------------------------
def load_plugins() -> PluginHost:
    """The plugins of a command, loaded before its parser is built so that their settings
    (``tunplug_add_settings``) become flags. Which plugins load comes from the environment
    alone (``TUNPLUG_DISABLE_PLUGINS``, ``TUNPLUG_DISABLE_PLUGIN_AUTOLOAD``).

    :raises ConfigError: one of those variables is invalid. :raises PluginError: two plugins
        claim one name or one setting.
    """
    from tunplug.plugins import PluginHost

    return PluginHost.from_settings(PluginLoading.from_environment())


def add_plugin_settings(parser: argparse.ArgumentParser, plugins: PluginHost | None) -> None:
    """One argument group per plugin with settings: a flag per field, its variable and default
    in the help (a field's ``json_schema_extra={"metavar": "DIR"}`` names its value). Flags
    default to ``None`` (unset), so variables and defaults still apply."""
    if plugins is None:
        return
    for declared in plugins.settings_models():
        group = parser.add_argument_group(f"settings of plugin {declared.plugin}")
        for name, field in declared.model.model_fields.items():
            flag = "--" + name.replace("_", "-")
            default = "" if field.default is None else f", default {field.default}"
            text = f"{field.description or name} ({env_name(name)}{default})"
            if field.annotation is bool:
                group.add_argument(
                    flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text
                )
            else:
                extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
                metavar = str(extra.get("metavar", name.upper()))
                group.add_argument(flag, dest=name, metavar=metavar, default=None, help=text)


def command_settings(
    args: argparse.Namespace,
    flags: Mapping[str, str],
    model: type[S],
    plugins: PluginHost | None = None,
) -> S:
    """A command's settings: the fields in ``flags`` from ``args`` (unset ones from their
    variables and defaults), and with ``plugins`` each plugin's settings too, from the flags
    :func:`add_plugin_settings` added, their variables and defaults.

    :raises ConfigError: a value is invalid (one line). :raises PluginError: a plugin's
        setting has the name of one of ``model``'s.
    """
    overrides = {field: getattr(args, field, None) for field in flags}
    if plugins is None:
        return load_settings(overrides, flags=flags, model=model)
    declared = plugins.settings_models()
    for each in declared:
        overrides.update({name: getattr(args, name, None) for name in each.model.model_fields})
    return load_settings(
        overrides, flags=flags, model=model, plugins=[each.model for each in declared]
    )
