"""``tunplug-headless-client``: the client as an operator runs it on a Linux server.

Who calls it: users and systemd, through the ``tunplug-headless-client`` console script.
``standalone --config wg.conf`` connects to any WireGuard server from a wg-quick file and runs
until SIGINT/SIGTERM, then removes its routes and device.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from functools import partial

import anyio

from tunplug.app import App
from tunplug.cli._common import EXIT_OK, run_command, setup_logging
from tunplug.config import load_settings
from tunplug.exceptions import ConfigError
from tunplug.node import RunningInterface, run_interface
from tunplug.wgquick import load_wg_quick

PROG = "tunplug-headless-client"
DEFAULT_INTERFACE = "tunplug0"

log = logging.getLogger(__name__)

FLAGS = {
    "tun_backend": "--tun",
    "tun_threads": "--tun-threads",
    "log_level": "--log-level",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="tunplug headless client: a WireGuard-compatible VPN client for servers.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    standalone = commands.add_parser(
        "standalone",
        help="run the client in the foreground until SIGINT/SIGTERM",
        description="Bring up a tunnel interface, carry traffic until SIGINT or SIGTERM, then "
        "remove the routes and the device. Needs CAP_NET_ADMIN (root).",
    )
    standalone.add_argument(
        "--config",
        metavar="FILE",
        required=True,
        help="wg-quick configuration file ([Interface] and [Peer] sections) of any WireGuard "
        "server",
    )
    standalone.add_argument(
        "--interface",
        default=DEFAULT_INTERFACE,
        help=f"interface name (default {DEFAULT_INTERFACE}); refused if it already exists",
    )
    standalone.add_argument(
        "--tun", dest="tun_backend", help="TUN backend (TUNPLUG_TUN_BACKEND, default auto)"
    )
    standalone.add_argument(
        "--tun-threads",
        type=int,
        help="device queues, one reader and one writer thread each "
        "(TUNPLUG_TUN_THREADS, default 1)",
    )
    standalone.add_argument(
        "--log-level",
        choices=["trace", "debug", "info", "warning", "error"],
        help="log verbosity (TUNPLUG_LOG, default info)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:
        settings = load_settings({field: getattr(args, field) for field in FLAGS}, flags=FLAGS)
        setup_logging(settings.log_level)
        config = load_wg_quick(args.config)
        if not config.peers:
            raise ConfigError(args.config, "has no [Peer] section: nothing to connect to")
        app = App(settings)
        anyio.run(
            partial(run_interface, app, config, name=args.interface, on_ready=_announce),
        )
        return EXIT_OK

    return run_command(PROG, command)


def _announce(running: RunningInterface) -> None:
    log.info("tunnel is up on %s (UDP port %d)", running.interface, running.listen_port)


if __name__ == "__main__":
    raise SystemExit(main())
