"""``tunplug``: plugins, keys, status and the demo.

Who calls it: users, through the ``tunplug`` console script (see ``tunplug --help``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tunplug import __version__
from tunplug.app import App
from tunplug.cli._common import EXIT_OK, command_settings, load_plugins, run_command, setup_logging
from tunplug.config import PluginSettings, TunplugSettings, env_name
from tunplug.crypto import CryptoBackend
from tunplug.datapath import DataPath
from tunplug.dns import DnsManager
from tunplug.exceptions import ConfigError, TunplugError
from tunplug.plugins import Kind, PluginRecord
from tunplug.tun import Tun
from tunplug.wireguard.keys import format_key, parse_key

PROG = "tunplug"

Backend = Tun | DnsManager | CryptoBackend | DataPath


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="tunplug: a WireGuard-compatible VPN with pluggable TUN backends.",
        epilog="Environment: TUNPLUG_DISABLE_PLUGINS=a,b blocks plugins by name; "
        "TUNPLUG_DISABLE_PLUGIN_AUTOLOAD=1 skips third-party plugins; TUNPLUG_LOG sets the "
        "log level.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", choices=["trace", "debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    plugins = commands.add_parser(
        "plugins",
        help="list plugins, what they provide and where they come from",
        description="List every plugin tunplug found: builtin ones and those installed by "
        "other distributions (entry point group 'tunplug'), with the backends they register, "
        "their distribution and version, and whether they are blocked or broken.",
    )
    plugins.add_argument("--json", action="store_true", help="print JSON instead of a table")

    commands.add_parser(
        "keygen",
        help="print a new private key (base64, as 'wg genkey')",
        description="Print a new random X25519 private key in base64, like 'wg genkey'. "
        "Keep it secret: 'umask 077; tunplug keygen > private.key'.",
    )
    commands.add_parser(
        "pubkey",
        help="read a private key on stdin, print its public key (as 'wg pubkey')",
        description="Read a base64 private key from standard input and print the matching "
        "public key, like 'wg pubkey'.",
    )

    demo = commands.add_parser(
        "demo",
        help="run a client and a gateway and show traffic crossing the tunnel",
        description="Start a WireGuard gateway and client and send traffic through the tunnel. "
        "As root on Linux: a live demo in two fresh network namespaces (real TUN devices, the "
        "kernel's ping and iperf3), all removed afterwards. Otherwise, or with --in-process: "
        "both ends in this process on in-memory devices.",
    )
    demo.add_argument(
        "--in-process",
        action="store_true",
        help="fake TUN devices and an in-memory network in this process (no root needed; "
        "the default when the live demo cannot run)",
    )
    demo.add_argument("--count", type=int, default=5, help="pings to send (default 5)")
    _add_service_commands(commands)
    return parser


def _add_service_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``ctl`` and ``status``: clients of the tunnel service (:mod:`tunplug.service.client`)."""
    socket_help = "the tunnel service's socket (TUNPLUG_SERVICE_SOCKET, default "
    socket_help += "/run/dev.tunplug.client/tunnel.sock)"
    ctl = commands.add_parser(
        "ctl",
        help="drive the tunnel service: connect, disconnect, status, watch",
        description="Command-line client of tunplug-tunnel-service (protocol: docs/ipc.md).",
    )
    ctl.add_argument("--socket", type=Path, metavar="PATH", help=socket_help)
    # --socket also after the action ("tunplug ctl status --socket X"); SUPPRESS keeps a value
    # given before the action from being reset by the action's own default.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument(
        "--socket", type=Path, metavar="PATH", help=socket_help, default=argparse.SUPPRESS
    )
    actions = ctl.add_subparsers(dest="action", metavar="ACTION", required=True)
    connect = actions.add_parser(
        "connect",
        help="connect with a token (from --token-file, or standard input)",
        parents=[after],
    )
    connect.add_argument("--token-file", type=Path, metavar="FILE", help="mode 600 token file")
    actions.add_parser("disconnect", help="take the tunnel down", parents=[after])
    for name, text in (("status", "show the tunnel"), ("watch", "show events as they come")):
        action = actions.add_parser(name, help=text, parents=[after])
        action.add_argument("--json", action="store_true", help="print JSON")
    status = commands.add_parser(
        "status",
        help="show the tunnel (interface, peers, handshakes, transfer), like 'wg show'",
        description="Show the tunnel service's tunnel, or with --gateway-state a gateway's.",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--socket", type=Path, metavar="PATH", help=socket_help)
    status.add_argument(
        "--gateway-state", type=Path, metavar="DIR", help="a gateway's state directory"
    )
    status.add_argument(
        "--status-file", type=Path, metavar="FILE", help="a tunnel's status file (JSON)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:
        # Plugins' settings come from their variables here (the in-process demo runs tunnels).
        plugins = load_plugins()
        settings = command_settings(args, {"log_level": "--log-level"}, TunplugSettings, plugins)
        setup_logging(settings.log_level)
        if args.command == "plugins":
            return show_plugins(App(settings, plugins), as_json=args.json)
        if args.command == "keygen":
            print(format_key(App(settings, plugins).crypto().generate_private_key()))
            return EXIT_OK
        if args.command == "pubkey":
            try:
                private = parse_key(sys.stdin.read(), "private key")
            except ValueError as exc:
                raise ConfigError("stdin", str(exc)) from None
            print(format_key(App(settings, plugins).crypto().public_key(private)))
            return EXIT_OK
        if args.command in ("ctl", "status"):
            from tunplug.cli import ctl
            from tunplug.service.client import default_socket

            socket_path = args.socket or default_socket()
            if args.command == "status":
                return ctl.status_command(
                    args.socket,
                    as_json=args.json,
                    gateway_state=args.gateway_state,
                    status_file=args.status_file,
                )
            if args.action == "connect":
                return ctl.ctl_connect(socket_path, args.token_file)
            if args.action == "disconnect":
                return ctl.ctl_disconnect(socket_path)
            if args.action == "status":
                return ctl.ctl_status(socket_path, as_json=args.json)
            return ctl.ctl_watch(socket_path, as_json=args.json)
        if args.command == "demo":
            from tunplug import demo

            reason = demo.live_demo_unavailable_reason()
            if args.in_process or reason:
                if reason and not args.in_process:
                    print(f"({reason}: running the in-process demo instead)")
                return demo.run_in_process_demo(App(settings, plugins), count=args.count)
            return demo.run_live_demo(count=args.count)
        raise AssertionError(args.command)

    return run_command(PROG, command)


def _status(record: PluginRecord) -> str:
    if record.blocked:
        return "blocked"
    if record.error:
        return "error"
    return "loaded"


def show_plugins(app: App, *, as_json: bool = False) -> int:
    host = app.plugins
    records = host.describe()
    backends: dict[Kind, Mapping[str, type[Backend]]] = {
        "tun": host.tun_backends(),
        "dns": host.dns_managers(),
        "crypto": host.crypto_backends(),
        "datapath": host.data_paths(),
    }
    settings = {declared.plugin: declared.model for declared in host.settings_models()}
    if as_json:
        rows = []
        for record in records:
            provides = {
                kind: [
                    {
                        "name": name,
                        "available": backends[kind][name].unavailable_reason() is None,
                        "unavailable_reason": backends[kind][name].unavailable_reason(),
                        "description": backends[kind][name].description,
                        "caveat": getattr(backends[kind][name], "caveat", None),
                    }
                    for name in names
                ]
                for kind, names in record.provides.items()
            }
            rows.append(
                {
                    "name": record.name,
                    "module": record.module,
                    "source": record.source,
                    "distribution": record.distribution,
                    "version": record.version,
                    "status": _status(record),
                    "error": record.error,
                    "provides": provides,
                    "settings": _describe_settings(settings.get(record.name)),
                }
            )
        json.dump(rows, sys.stdout, indent=2)
        print()
        return EXIT_OK
    table = [("PLUGIN", "STATUS", "PROVIDES", "DISTRIBUTION")]
    for record in records:
        provided = []
        for kind, names in record.provides.items():
            for name in names:
                notes = []
                reason = backends[kind][name].unavailable_reason()
                if reason:
                    notes.append(f"unavailable: {reason}")
                caveat = getattr(backends[kind][name], "caveat", None)
                if caveat:
                    notes.append(caveat)
                provided.append(f"{kind}:{name}" + (f" ({'; '.join(notes)})" if notes else ""))
        provided += [
            f"setting:{item['flag']}" for item in _describe_settings(settings.get(record.name))
        ]
        status = _status(record) + (f": {record.error}" if record.error else "")
        table.append(
            (
                record.name,
                status,
                "; ".join(provided) or "-",
                f"{record.distribution} {record.version}",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    active = _active_data_path(app)
    print(f"data path: {active['name'] or '-'} ({active['note']})")
    return EXIT_OK


def _describe_settings(model: type[PluginSettings] | None) -> list[dict[str, Any]]:
    """A plugin's settings as ``tunplug plugins`` shows them: flag, variable, type, default."""
    if model is None:
        return []
    return [
        {
            "name": name,
            "flag": "--" + name.replace("_", "-"),
            "env": env_name(name),
            "type": _type_name(field.annotation),
            "default": _json_default(field.default),
            "description": field.description or "",
        }
        for name, field in model.model_fields.items()
    ]


def _type_name(annotation: object) -> str:
    name = getattr(annotation, "__name__", None)
    text = name if isinstance(name, str) else str(annotation)
    return text.replace("typing.", "").replace("pathlib.", "")


def _json_default(value: object) -> object:
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


def _active_data_path(app: App) -> dict[str, str]:
    """Which data path a tunnel started with these settings would use, and why."""
    try:
        path = app.data_path()
    except TunplugError as exc:
        return {"name": "", "note": str(exc)}
    note = app.data_path_note or (f"{path.description}; setting {app.settings.data_path!r}")
    return {"name": path.name, "note": note}


if __name__ == "__main__":
    raise SystemExit(main())
