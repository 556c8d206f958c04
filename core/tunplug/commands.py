"""Configuring a device with the system's command-line tools (``ifconfig``, ``route``, ``netsh``).

Who uses it: TUN backends whose operating system has no API tunplug calls directly for
addresses and routes: ``darwin`` (``ifconfig``/``route``) and ``wintun`` (``netsh``), and any
third-party backend built the same way. Everything here blocks: call it from a worker thread
(``anyio.to_thread.run_sync``). Commands run without a shell; their output is kept for errors.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import Protocol

from tunplug.exceptions import TunError

log = logging.getLogger(__name__)

#: Runs a command: ``argv`` -> (exit status, output of both streams). Tests pass fakes.
Runner = Callable[[Sequence[str]], tuple[int, str]]


class RouteCommand(Protocol):
    """The command that adds (or, with ``delete=True``, removes) the route of a network."""

    def __call__(self, network: IPv4Network | IPv6Network, *, delete: bool = False) -> list[str]:
        """The argv to run."""
        ...


#: How long one command may take before it counts as failed.
COMMAND_TIMEOUT = 30


def run_command(argv: Sequence[str]) -> tuple[int, str]:
    """Run ``argv`` without a shell; return its exit status and its output (both streams).

    A command that cannot start or times out is status 1 with the reason as output.
    """
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return result.returncode, (result.stdout + result.stderr).strip()


def check_command(run: Runner, command: Sequence[str], action: str | None = None) -> None:
    """Run ``command``. :raises TunError: it failed ("failed to ACTION: output")."""
    status, output = run(command)
    if status != 0:
        what = action or " ".join(command)
        raise TunError(f"failed to {what}: {output or f'exit status {status}'}")


def add_routes(
    run: Runner, route_command: RouteCommand, networks: Sequence[IPv4Network | IPv6Network]
) -> list[IPv4Network | IPv6Network]:
    """Add the route of each network in turn; if one fails, remove the ones this call added
    (a failure to remove is logged) and raise.

    :returns: the networks routed. :raises TunError: a route could not be added.
    """
    added: list[IPv4Network | IPv6Network] = []
    for network in networks:
        try:
            check_command(run, route_command(network), f"add the route to {network}")
        except TunError:
            for done in reversed(added):
                status, output = run(route_command(done, delete=True))
                if status != 0:
                    log.warning("could not remove the route to %s: %s", done, output)
            raise
        added.append(network)
    return added
