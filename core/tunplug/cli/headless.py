"""``tunplug-headless-client``: the client as an operator runs it on a Linux server.

Who calls it: users and systemd, through the ``tunplug-headless-client`` console script.
``standalone`` reads a token (``TUNPLUG_TOKEN`` or the token file) or a wg-quick file
(``--config``), brings up the interface, points DNS at the tunnel, and runs until SIGINT or
SIGTERM; then it removes routes, rules, DNS changes and the device. SIGHUP re-reads the token
or config file and applies it to the running device.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import anyio

from tunplug import __version__
from tunplug.app import App
from tunplug.cli._common import (
    EXIT_CONFIG,
    EXIT_OK,
    add_plugin_settings,
    command_settings,
    load_plugins,
    run_command,
    setup_logging,
)
from tunplug.control import control_channel
from tunplug.device_id import device_id_path, load_or_create_device_id, validate_device_id
from tunplug.endpoints import failover_tasks
from tunplug.exceptions import ConfigError, PermissionDenied
from tunplug.headless.dns_control import choose_dns_manager, dns_manager
from tunplug.headless.settings import DEFAULT_STATE_DIR, DEFAULT_TOKEN_PATH, HeadlessSettings
from tunplug.headless.sources import TOKEN_VARIABLE, ConfigSource, Source, take_token_variable
from tunplug.live_tunnel import is_full_tunnel
from tunplug.node import InterfaceHooks, RunningInterface, run_interface
from tunplug.plugins import PluginHost
from tunplug.service.status_file import DEFAULT_STATUS_FILE, status_file_task
from tunplug.systemd import Notifier
from tunplug.wireguard.keys import format_key

PROG = "tunplug-headless-client"
DEFAULT_INTERFACE = "tunplug0"
#: ``--exit`` waits this long for a handshake by default.
DEFAULT_EXIT_TIMEOUT = 30.0
#: ``CAP_NET_ADMIN``'s bit in the capability sets (linux/capability.h).
CAP_NET_ADMIN = 12

log = logging.getLogger(__name__)

FLAGS = {
    "tun_backend": "--tun",
    "tun_threads": "--tun-threads",
    "data_path": "--data-path",
    "log_level": "--log-level",
    "log_dir": "--log-dir",
    "token_path": "--token-path",
    "id": "--id",
    "dns_control": "--dns-control",
    "state_dir": "--state-dir",
    "activate_internet_resource": "--activate-internet-resource",
}


def build_parser(plugins: PluginHost | None = None) -> argparse.ArgumentParser:
    """The parser; with ``plugins``, ``standalone`` has their settings' flags too."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="tunplug headless client: a WireGuard-compatible VPN client for servers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    standalone = commands.add_parser(
        "standalone",
        help="run the client in the foreground until SIGINT/SIGTERM",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Bring up a tunnel interface, carry traffic until SIGINT or SIGTERM, then "
        "remove routes, DNS changes and the device.\nThe configuration is a token from "
        f"'tunplug-gateway client add' ({TOKEN_VARIABLE}, or the token file), or a wg-quick "
        "file (--config).\nSIGHUP re-reads it. Needs CAP_NET_ADMIN (root).",
        epilog="exit status: 0 stopped cleanly (or connected, with --exit); 1 runtime failure; "
        "2 bad configuration;\n130 interrupted before the tunnel was up.",
    )
    source, _, logs = add_client_options(
        standalone,
        token_help=f"file holding the token, root-owned with mode 600 (TUNPLUG_TOKEN_PATH, "
        f"default {DEFAULT_TOKEN_PATH}); the {TOKEN_VARIABLE} variable wins over it",
        dns_help="how DNS servers reach the system: systemd-resolved, etc-resolv-conf, "
        "disabled, or auto (TUNPLUG_DNS_CONTROL, default auto: systemd-resolved when it runs, "
        "else etc-resolv-conf)",
    )
    source.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="a wg-quick file ([Interface] and [Peer]) of any WireGuard server, instead of a "
        "token; root-owned, mode 600",
    )
    logs.add_argument(
        "--status-file",
        type=Path,
        metavar="FILE",
        help="write the tunnel's status there every second for 'tunplug status' "
        f"(the systemd unit uses {DEFAULT_STATUS_FILE}; default: none)",
    )
    source.add_argument(
        "--activate-internet-resource",
        action="store_true",
        default=None,
        help="route all traffic through the gateway while it offers the Internet resource; "
        "the local network stays reachable (TUNPLUG_ACTIVATE_INTERNET_RESOURCE; tokens with a "
        "control channel)",
    )
    mode = standalone.add_argument_group("mode")
    mode.add_argument(
        "--check",
        action="store_true",
        help="validate everything, print what would run, and exit (0 good, 2 bad)",
    )
    mode.add_argument(
        "--exit",
        action="store_true",
        help="exit 0 as soon as every peer has completed a handshake (for scripts)",
    )
    mode.add_argument(
        "--exit-timeout",
        type=float,
        default=DEFAULT_EXIT_TIMEOUT,
        metavar="SECONDS",
        help=f"with --exit: fail (status 1) after this long (default {DEFAULT_EXIT_TIMEOUT:g})",
    )
    add_plugin_settings(standalone, plugins)
    return parser


Group = argparse._ArgumentGroup


def add_client_options(
    parser: argparse.ArgumentParser, *, token_help: str, dns_help: str
) -> tuple[Group, Group, Group]:
    """The options every command that runs a client tunnel shares (the headless client and the
    tunnel service): token file, device id, state, device, DNS and logs. Returns the
    "configuration", "device" and "logs" groups, for command-specific options."""
    source = parser.add_argument_group("configuration")
    source.add_argument("--token-path", type=Path, metavar="FILE", help=token_help)
    source.add_argument(
        "--id",
        help="device id shown to gateways and GUIs (TUNPLUG_ID; default: generated once and "
        "stored in the state directory)",
    )
    source.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help=f"state: device id, DNS backups (TUNPLUG_STATE_DIR, default {DEFAULT_STATE_DIR})",
    )
    device = parser.add_argument_group("device")
    device.add_argument(
        "--interface",
        default=DEFAULT_INTERFACE,
        help=f"interface name (default {DEFAULT_INTERFACE}); refused if it already exists",
    )
    device.add_argument(
        "--tun", dest="tun_backend", help="TUN backend (TUNPLUG_TUN_BACKEND, default auto)"
    )
    device.add_argument(
        "--tun-threads",
        type=int,
        help="device queues, one reader and one writer thread each "
        "(TUNPLUG_TUN_THREADS, default 1)",
    )
    device.add_argument(
        "--data-path",
        choices=["auto", "native", "python"],
        help="who moves the packets: native (the Rust core), python (the reference) or auto "
        "(native when installed; TUNPLUG_DATA_PATH, default auto)",
    )
    device.add_argument("--dns-control", help=dns_help)
    logs = parser.add_argument_group("logs")
    logs.add_argument(
        "--log-dir",
        type=Path,
        metavar="DIR",
        help="also write rotated log files there (LOG_DIR; default: stderr only)",
    )
    logs.add_argument(
        "--log-level",
        choices=["trace", "debug", "info", "warning", "error"],
        help="log verbosity (TUNPLUG_LOG, default info)",
    )
    return source, device, logs


def main(argv: Sequence[str] | None = None) -> int:
    def command() -> int:
        plugins = load_plugins()
        args = build_parser(plugins).parse_args(argv)
        settings = command_settings(args, FLAGS, HeadlessSettings, plugins)
        setup_logging(
            settings.log_level,
            None if args.check else settings.log_dir,
            file_name=f"{PROG}.log",
            max_bytes=settings.log_max_bytes,
            backups=settings.log_backups,
        )
        source = ConfigSource(args.config, settings.token_path, take_token_variable())
        loaded = source.load()
        if not loaded.config.peers:
            raise ConfigError(loaded.origin, "has no [Peer] section: nothing to connect to")
        app = App(settings, plugins)
        app.tun_backend()  # an unknown or unavailable backend is a configuration error
        app.data_path()  # likewise an unknown or unavailable data path
        dns_name = choose_dns_manager(app, settings.dns_control, loaded)
        if args.check:
            return check(app, settings, args, loaded, dns_name)
        require_net_admin()
        device_id = settings.id and validate_device_id(settings.id, "--id")
        device_id = device_id or load_or_create_device_id(settings.state_dir)
        log.info(
            "tunplug %s, device id %s, configuration from %s%s",
            __version__,
            device_id,
            loaded.origin,
            f" (client {loaded.client_name!r})" if loaded.client_name else "",
        )
        control = control_channel(loaded.control, settings.activate_internet_resource)
        hooks = InterfaceHooks(
            on_ready=_announce,
            reload=source.reload if control is None else lambda: control.overlay(source.reload()),
            dns=dns_manager(app, dns_name, settings.state_dir),
            notifier=Notifier(),
            full_tunnel_mark=settings.full_tunnel_table,
            exit_after_handshake=args.exit_timeout if args.exit else None,
            background=[
                *failover_tasks(loaded.config, loaded.endpoints),
                *(
                    [status_file_task(args.status_file, loaded.client_name, control)]
                    if args.status_file
                    else []
                ),
            ],
        )
        if control is not None:
            hooks.controllers = [control.run]
            # The socket carries the full-tunnel mark from the start whenever the Internet
            # resource is asked for: the view may offer it at any time.
            hooks.mark_socket = settings.activate_internet_resource
        anyio.run(partial(run_interface, app, loaded.config, name=args.interface, hooks=hooks))
        return EXIT_OK

    return run_command(PROG, command)


def has_net_admin() -> bool:
    """Whether this process holds CAP_NET_ADMIN (Linux); True elsewhere (not checked)."""
    if not sys.platform.startswith("linux"):
        return True
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        return True
    return True


def require_net_admin() -> None:
    """:raises PermissionDenied: CAP_NET_ADMIN is missing, saying how to get it."""
    if not has_net_admin():
        raise PermissionDenied(
            "CAP_NET_ADMIN is missing: run as root, or grant it "
            "(systemd: AmbientCapabilities=CAP_NET_ADMIN; shell: "
            "setpriv --inh-caps +net_admin --ambient-caps +net_admin ...)"
        )


def check(
    app: App, settings: HeadlessSettings, args: argparse.Namespace, loaded: Source, dns: str
) -> int:
    """``--check``: print what would run; 0 when it could, 2 (and why) when it could not."""
    config = loaded.config
    backend = app.tun_backend()
    if settings.id:
        identity = f"{validate_device_id(settings.id, '--id')} (from --id)"
    else:
        path = device_id_path(settings.state_dir)
        identity = f"stored in {path}" if path.exists() else f"would be created in {path}"
    lines = [
        f"configuration: {loaded.origin}"
        + (f" (client {loaded.client_name!r})" if loaded.client_name else ""),
        f"device id: {identity}",
        f"interface: {args.interface} via {backend.backend_name}, "
        f"{settings.tun_threads} queue(s), MTU {config.mtu or 'default'}",
        f"data path: {app.data_path().name}"
        + (f" ({app.data_path_note})" if app.data_path_note else ""),
        f"addresses: {', '.join(map(str, config.addresses)) or 'none'}",
    ]
    for peer in config.peers:
        lines.append(
            f"peer {format_key(peer.public_key)[:8]}...: endpoint "
            f"{peer.endpoint_text or 'none (waits for the peer)'}, AllowedIPs "
            f"{', '.join(map(str, peer.allowed_ips)) or 'none'}"
        )
    full = is_full_tunnel(config)
    lines.append(
        f"full tunnel: yes (policy routing, table and fwmark {settings.full_tunnel_table})"
        if full
        else "full tunnel: no"
    )
    servers = ", ".join(map(str, config.dns_servers))
    domains = f", search {', '.join(config.dns_domains)}" if config.dns_domains else ""
    lines.append(
        f"DNS: {servers}{domains} via {dns}" if servers else "DNS: none in the configuration"
    )
    internet = "requested" if settings.activate_internet_resource else "not requested"
    if loaded.control:
        lines.append(f"resources: from the control channel {loaded.control}")
        lines.append(f"internet resource: {internet} (used while the gateway offers it)")
    else:
        lines.append("resources: none (no control channel: the routes are fixed)")
        if settings.activate_internet_resource:
            lines.append("internet resource: requested, but without a control channel ignored")
    lines.append(f"logs: stderr{f' and {settings.log_dir}' if settings.log_dir else ''}")
    problems = []
    if not has_net_admin():
        problems.append("CAP_NET_ADMIN is missing: run as root")
    if Path("/sys/class/net", args.interface).exists():
        problems.append(f"interface {args.interface!r} already exists: choose another --interface")
    for line in lines:
        print(f"  {line}")
    if problems:
        for problem in problems:
            print(f"{PROG}: error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{PROG}: configuration OK")
    return EXIT_OK


def _announce(running: RunningInterface) -> None:
    log.info("tunnel is up on %s (UDP port %d)", running.interface, running.listen_port)


if __name__ == "__main__":
    raise SystemExit(main())
