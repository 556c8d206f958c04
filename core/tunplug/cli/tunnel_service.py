"""``tunplug-tunnel-service``: the privileged daemon that runs the tunnel for GUIs.

Who calls it: systemd (``packaging/systemd/tunplug-tunnel-service.service``) and users, through
the ``tunplug-tunnel-service`` console script. ``run`` listens on a Unix socket (mode 0660,
group ``--group``) until SIGINT or SIGTERM; GUIs and ``tunplug ctl`` connect, disconnect and
watch the tunnel through it (protocol: ``docs/ipc.md``; server: :mod:`tunplug.service.server`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import anyio

from tunplug import __version__
from tunplug.app import App
from tunplug.cli._common import (
    EXIT_OK,
    add_plugin_settings,
    command_settings,
    load_plugins,
    run_command,
    setup_logging,
)
from tunplug.cli.headless import add_client_options, require_net_admin
from tunplug.device_id import load_or_create_device_id, validate_device_id
from tunplug.headless.settings import DEFAULT_TOKEN_PATH
from tunplug.headless.sources import ConfigSource, take_token_variable
from tunplug.plugins import PluginHost
from tunplug.service.access import resolve_group
from tunplug.service.server import TunnelService
from tunplug.service.settings import DEFAULT_GROUP, DEFAULT_SOCKET, TunnelServiceSettings
from tunplug.systemd import Notifier

PROG = "tunplug-tunnel-service"
LOG_FILE = f"{PROG}.log"

FLAGS = {
    "service_socket": "--socket",
    "service_group": "--group",
    "token_path": "--token-path",
    "id": "--id",
    "state_dir": "--state-dir",
    "dns_control": "--dns-control",
    "tun_backend": "--tun",
    "tun_threads": "--tun-threads",
    "data_path": "--data-path",
    "log_dir": "--log-dir",
    "log_level": "--log-level",
}


def build_parser(plugins: PluginHost | None = None) -> argparse.ArgumentParser:
    """The parser; with ``plugins``, ``run`` has their settings' flags too."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="tunplug tunnel service: runs the VPN tunnel for GUIs over a local socket.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run",
        help="listen on the socket until SIGINT/SIGTERM",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Listen on a Unix socket for GUIs (protocol: docs/ipc.md). Only root and "
        "members of --group may use it.\nA token file (or TUNPLUG_TOKEN) takes precedence: "
        "the service connects with it at start and refuses Connect from GUIs.\nSIGTERM: "
        "clients are told (TerminatingGracefully), the tunnel is taken down, the socket "
        "removed. Needs CAP_NET_ADMIN.",
    )
    service = run.add_argument_group("socket")
    service.add_argument(
        "--socket",
        dest="service_socket",
        type=Path,
        metavar="PATH",
        help=f"Unix socket to listen on (TUNPLUG_SERVICE_SOCKET, default {DEFAULT_SOCKET})",
    )
    service.add_argument(
        "--group",
        dest="service_group",
        metavar="NAME",
        help="group whose members may use the socket, besides root (TUNPLUG_SERVICE_GROUP, "
        f"default {DEFAULT_GROUP}; it must exist: groupadd --system {DEFAULT_GROUP})",
    )
    add_client_options(
        run,
        token_help=f"token file that, when present, manages the tunnel instead of GUIs "
        f"(TUNPLUG_TOKEN_PATH, default {DEFAULT_TOKEN_PATH}; root-owned, mode 600)",
        dns_help="systemd-resolved, etc-resolv-conf, disabled or auto (TUNPLUG_DNS_CONTROL, "
        "default auto); GUIs may change it (SetDnsControl)",
    )
    add_plugin_settings(run, plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def command() -> int:
        plugins = load_plugins()
        args = build_parser(plugins).parse_args(argv)
        settings = command_settings(args, FLAGS, TunnelServiceSettings, plugins)
        log_file = setup_logging(
            settings.log_level,
            settings.log_dir,
            file_name=LOG_FILE,
            max_bytes=settings.log_max_bytes,
            backups=settings.log_backups,
        )
        group_gid = resolve_group(settings.service_group)
        app = App(settings, plugins)
        app.tun_backend()  # an unknown or unavailable backend is a configuration error
        app.data_path()  # likewise an unknown or unavailable data path
        require_net_admin()
        device_id = settings.id and validate_device_id(settings.id, "--id")
        device_id = device_id or load_or_create_device_id(settings.state_dir)
        token_variable = take_token_variable()
        service = TunnelService(
            app,
            settings,
            device_id=device_id,
            source=ConfigSource(None, settings.token_path, token_variable),
            group_gid=group_gid,
            interface=args.interface,
            token_from_environment=token_variable is not None,
            notifier=Notifier(),
            log_file=log_file,
        )
        anyio.run(partial(service.serve))
        return EXIT_OK

    return run_command(PROG, command)


if __name__ == "__main__":
    raise SystemExit(main())
