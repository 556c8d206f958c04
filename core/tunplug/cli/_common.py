"""What every tunplug command shares: error reporting, exit codes and logging setup.

Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage (also argparse's own;
also an interface name that is taken), 130 interrupted.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from tunplug.exceptions import (
    BackendUnavailable,
    BusyResource,
    ConfigError,
    PluginError,
    TunplugError,
)

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


def setup_logging(level: str) -> None:
    """Human-readable logs on stderr."""
    logging.basicConfig(
        level=_LEVELS.get(level, logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_command(prog: str, command: Callable[[], int]) -> int:
    """Run ``command``, turning tunplug's errors into one line on stderr and an exit code."""
    try:
        return command()
    except (ConfigError, BackendUnavailable, PluginError, BusyResource) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except TunplugError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
