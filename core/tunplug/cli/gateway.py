"""``tunplug-gateway``: set up a gateway, issue and revoke client tokens, and run it.

Who calls it: operators and systemd, through the ``tunplug-gateway`` console script.
``init`` creates the state directory (keys and the SQLite registry of
:mod:`tunplug.gateway.registry`); ``client add|list|revoke`` manage clients, also while the
gateway runs (it picks up changes within a second); ``run`` hands over to
:mod:`tunplug.gateway.server`, imported only when it runs; ``status`` prints the registry and
the running gateway's firewall counter.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tunplug import __version__
from tunplug.app import App
from tunplug.cli import gateway_resources
from tunplug.cli._common import (
    EXIT_OK,
    add_plugin_settings,
    command_settings,
    load_plugins,
    run_command,
    setup_logging,
)
from tunplug.formatting import format_age, format_bytes, format_table
from tunplug.gateway.registry import (
    DB_NAME,
    DEFAULT_LISTEN_PORT,
    DEFAULT_SUBNET_V4,
    DEFAULT_SUBNET_V6,
    KEY_NAME,
    ClientRecord,
    Registry,
)
from tunplug.gateway.resource_store import port_rules_text
from tunplug.gateway.settings import (
    DEFAULT_INTERFACE,
    DEFAULT_METRICS_ADDRESS,
    DEFAULT_STATE_DIR,
    GatewaySettings,
)
from tunplug.plugins import PluginHost
from tunplug.wireguard.keys import format_key

PROG = "tunplug-gateway"

FLAGS = {
    "state_dir": "--state-dir",
    "interface": "--interface",
    "tun_threads": "--tun-threads",
    "data_path": "--data-path",
    "metrics_address": "--metrics-address",
    "dns_upstream": "--dns-upstream",
    "log_dir": "--log-dir",
    "log_level": "--log-level",
}

_EXIT_HELP = "exit status: 0 success; 1 runtime failure; 2 bad input or configuration."


def build_parser(plugins: PluginHost | None = None) -> argparse.ArgumentParser:
    """The parser; with ``plugins``, ``run`` has their settings' flags too."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="tunplug gateway: issues client tokens, revokes them, and forwards and "
        "NATs clients' traffic to the resources behind it.",
        epilog="start with: tunplug-gateway init --endpoint HOST:PORT; then "
        "tunplug-gateway resource add CIDR|NAME",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help=f"the gateway's keys and client registry (TUNPLUG_GATEWAY_STATE_DIR, default "
        f"{DEFAULT_STATE_DIR})",
    )

    def command(
        group: Any, name: str, handler: Callable[[argparse.Namespace], int], **kwargs: Any
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name,
            parents=[state],
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=_EXIT_HELP,
            **kwargs,
        )
        sub.set_defaults(handler=handler)
        return sub

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    init = command(
        commands,
        "init",
        _init,
        help="create the gateway's keys and client registry",
        description="Create the state directory (mode 0700) with the gateway's private key "
        f"({KEY_NAME}) and the client\nregistry ({DB_NAME}), both mode 0600, and print the "
        "gateway's public key. Refused when\nthe directory is already initialised, unless "
        "--force.",
    )
    init.add_argument(
        "--endpoint",
        required=True,
        metavar="HOST:PORT",
        help="where clients reach this gateway (public name or address and UDP port; [IPv6]:PORT)",
    )
    init.add_argument(
        "--listen-port",
        type=int,
        default=DEFAULT_LISTEN_PORT,
        metavar="PORT",
        help=f"UDP port the gateway listens on (default {DEFAULT_LISTEN_PORT})",
    )
    init.add_argument(
        "--subnet-v4",
        default=DEFAULT_SUBNET_V4,
        metavar="CIDR",
        help=f"clients' IPv4 addresses, /8 to /30 (default {DEFAULT_SUBNET_V4}; the gateway "
        "takes the first)",
    )
    init.add_argument(
        "--subnet-v6",
        default=DEFAULT_SUBNET_V6,
        metavar="CIDR",
        help=f"clients' IPv6 addresses, /32 to /120 (default {DEFAULT_SUBNET_V6})",
    )
    init.add_argument(
        "--resource",
        action="append",
        default=[],
        metavar="TARGET",
        help="a resource every client may reach (repeatable): a network, an address, a DNS "
        "name or wildcard, or 'internet' (0.0.0.0/0 means it too); more, with ports and "
        "groups, later with 'resource add'",
    )
    init.add_argument(
        "--dns",
        action="append",
        default=[],
        metavar="IP",
        help="a DNS server clients use while connected (repeatable; default none)",
    )
    init.add_argument(
        "--force",
        action="store_true",
        help="replace an existing gateway: new keys, no clients (every issued token stops "
        "working); stop the gateway first",
    )

    client = commands.add_parser(
        "client", help="add, list and revoke clients", description="Manage clients."
    )
    actions = client.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = command(
        actions,
        "add",
        _client_add,
        help="register a client and print its token",
        description="Register a client with new keys and the next free addresses, and print "
        "its token (only the token\non stdout: 'tunplug-gateway client add NAME > NAME.token'). "
        "The token holds the client's private\nkey, is not stored and is shown only once. The "
        "running gateway accepts the client within a second.",
    )
    add.add_argument("name", metavar="NAME", help="1-64 letters, digits, '.', '_' or '-'")
    add.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="GROUP",
        help="put the client into this group (repeatable; see 'group add')",
    )
    add.add_argument(
        "--wg-quick",
        action="store_true",
        help="print a standard WireGuard (wg-quick) configuration instead of a token",
    )
    listing = command(
        actions,
        "list",
        _client_list,
        help="show clients, their addresses, last handshake and traffic",
        description="Show active clients (with --all also revoked ones): addresses, last "
        "handshake and traffic\nreceived from (RX) and sent to (TX) each, as the running "
        "gateway last reported it.",
    )
    listing.add_argument("--all", action="store_true", help="include revoked clients")
    listing.add_argument("--json", action="store_true", help="print JSON for scripts")
    revoke = command(
        actions,
        "revoke",
        _client_revoke,
        help="revoke a client's token",
        description="Revoke a client: the running gateway drops it within a second and its "
        "token no longer\nconnects. The name may be used again by 'client add'.",
    )
    revoke.add_argument("name", metavar="NAME")
    command(
        commands,
        "rotate-key",
        _rotate_key,
        help="give the gateway a new key pair (every client needs a new token)",
        description="Replace the gateway's private key and store its new public key. A running "
        "gateway takes it\non SIGHUP (systemctl reload tunplug-gateway) and keeps its interface. "
        "Every client's\nconfiguration names the old public key: issue new tokens "
        "(client revoke, client add).",
    )
    gateway_resources.add_parsers(commands, command, _settings)

    run = command(
        commands,
        "run",
        _run,
        help="run the gateway in the foreground until SIGINT/SIGTERM",
        description="Bring up the gateway interface, accept every registered client, forward "
        "and NAT their\ntraffic to the resources, and serve /healthz, /readyz and /metrics. "
        "Clients added or\nrevoked meanwhile are picked up live. Needs CAP_NET_ADMIN (root).",
    )
    run.add_argument(
        "--interface",
        help=f"interface name (TUNPLUG_INTERFACE, default {DEFAULT_INTERFACE})",
    )
    run.add_argument(
        "--tun-threads",
        type=int,
        help="device queues, one reader and one writer thread each (TUNPLUG_TUN_THREADS, "
        "default 1)",
    )
    run.add_argument(
        "--data-path",
        choices=["auto", "native", "python"],
        help="who moves the packets: native (the Rust core), python (the reference) or auto "
        "(native when installed; TUNPLUG_DATA_PATH, default auto)",
    )
    run.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        help=f"address for /healthz, /readyz and /metrics (TUNPLUG_METRICS_ADDRESS, default "
        f"{DEFAULT_METRICS_ADDRESS}; 'off' disables them)",
    )
    run.add_argument(
        "--dns-upstream",
        metavar="IP[,IP...]",
        help="DNS servers that resolve the DNS resources (TUNPLUG_DNS_UPSTREAM; default: the "
        "nameservers in /etc/resolv.conf)",
    )
    run.add_argument(
        "--log-dir",
        type=Path,
        metavar="DIR",
        help="also write rotated log files there (LOG_DIR; default: stderr only)",
    )
    run.add_argument(
        "--log-level",
        choices=["trace", "debug", "info", "warning", "error"],
        help="log verbosity (TUNPLUG_LOG, default info)",
    )
    add_plugin_settings(run, plugins)
    status = command(
        commands,
        "status",
        _status,
        help="show whether the gateway runs, and its clients",
        description="Show the gateway's settings, whether it is running, and its clients.",
    )
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def command() -> int:
        plugins = load_plugins()
        args = build_parser(plugins).parse_args(argv)
        args.plugins = plugins
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)

    return run_command(PROG, command)


def _settings(args: argparse.Namespace) -> GatewaySettings:
    """The settings of the command in ``args``; for ``run``, the plugins' settings too."""
    plugins: PluginHost | None = getattr(args, "plugins", None)
    return command_settings(
        args, FLAGS, GatewaySettings, plugins if args.command == "run" else None
    )


# -- commands ---------------------------------------------------------------------------------
def _init(args: argparse.Namespace) -> int:
    settings = _settings(args)
    state_dir = settings.state_dir
    replaced = (state_dir / DB_NAME).exists() if args.force else False
    crypto = App(settings, args.plugins).crypto()
    with Registry.init(
        state_dir,
        endpoint=args.endpoint,
        listen_port=args.listen_port,
        subnet_v4=args.subnet_v4,
        subnet_v6=args.subnet_v6,
        resources=args.resource,
        dns=args.dns,
        force=args.force,
        crypto=crypto,
    ) as registry:
        gateway = registry.gateway
        resources = registry.resources()
    print(f"public key: {format_key(gateway.public_key)}")
    print(f"state: {state_dir} ({KEY_NAME}, {DB_NAME})")
    print(f"endpoint: {gateway.endpoint} (listening on UDP port {gateway.listen_port})")
    print(
        f"client subnets: {gateway.subnet_v4}, {gateway.subnet_v6} (gateway "
        f"{gateway.gateway_address_v4}, {gateway.gateway_address_v6})"
    )
    print(f"resources: {', '.join(r.name for r in resources) or 'none yet'}")
    print(f"DNS: {', '.join(map(str, gateway.dns)) or 'none'}")
    if replaced:
        print(
            f"{PROG}: replaced the previous gateway: tokens issued before no longer work",
            file=sys.stderr,
        )
    print(f"next: {PROG} client add NAME > NAME.token; then {PROG} run", file=sys.stderr)
    return EXIT_OK


def _client_add(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with Registry.open(settings.state_dir, crypto=App(settings, args.plugins).crypto()) as registry:
        issued = registry.add_client(args.name, args.group)
    client = issued.client
    what = "wg-quick configuration" if args.wg_quick else "token"
    sys.stdout.write(issued.wg_quick if args.wg_quick else issued.token + "\n")
    sys.stdout.flush()
    print(
        f"{PROG}: added client {client.name!r} ({client.address_v4}, {client.address_v6}); "
        f"the {what} above holds its private key and is shown only once",
        file=sys.stderr,
    )
    return EXIT_OK


def _client_list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with Registry.open(settings.state_dir) as registry:
        clients = registry.clients(include_revoked=args.all)
    if args.json:
        print(json.dumps([client_json(client) for client in clients], indent=2))
        return EXIT_OK
    if not clients:
        print(f"{PROG}: no clients yet; add one with: {PROG} client add NAME", file=sys.stderr)
        return EXIT_OK
    now = time.time()
    header = ["NAME", "IPV4", "IPV6", "LAST HANDSHAKE", "RX", "TX"]
    rows = [
        [
            client.name,
            str(client.address_v4),
            str(client.address_v6),
            format_age(client.last_handshake, now),
            format_bytes(client.rx_bytes),
            format_bytes(client.tx_bytes),
        ]
        for client in clients
    ]
    if args.all:
        header.append("STATUS")
        for row, client in zip(rows, clients, strict=True):
            revoked = client.revoked_at
            row.append("active" if revoked is None else f"revoked {format_age(revoked, now)}")
    print(format_table(header, rows))
    return EXIT_OK


def _client_revoke(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with Registry.open(settings.state_dir) as registry:
        client = registry.revoke(args.name)
    print(
        f"revoked client {client.name!r} ({client.address_v4}, {client.address_v6}); "
        "a running gateway drops it within a second"
    )
    return EXIT_OK


def _rotate_key(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with Registry.open(settings.state_dir, crypto=App(settings, args.plugins).crypto()) as registry:
        gateway = registry.rotate_key()
    print(
        f"new gateway public key {format_key(gateway.public_key)}; a running gateway takes it "
        "on SIGHUP (systemctl reload tunplug-gateway). Clients need new tokens: "
        "tunplug-gateway client revoke NAME, then client add NAME"
    )
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    setup_logging(settings.log_level, settings.log_dir, file_name=f"{PROG}.log")
    app = App(settings, args.plugins)
    app.data_path()  # an unknown or unavailable data path is a configuration error
    from tunplug.gateway.server import run_gateway

    with Registry.open(settings.state_dir, crypto=app.crypto()) as registry:
        run_gateway(app, registry, settings)
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with Registry.open(settings.state_dir) as registry:
        return print_status(registry, settings, args.json)


# -- formatting -------------------------------------------------------------------------------
def client_json(client: ClientRecord) -> dict[str, object]:
    """A client for ``--json`` output (never its PresharedKey)."""
    return {
        "name": client.name,
        "public_key": format_key(client.public_key),
        "address_v4": str(client.address_v4),
        "address_v6": str(client.address_v6),
        "created_at": client.created_at,
        "revoked_at": client.revoked_at,
        "last_handshake": client.last_handshake,
        "rx_bytes": client.rx_bytes,
        "tx_bytes": client.tx_bytes,
    }


def print_status(registry: Registry, settings: GatewaySettings, as_json: bool) -> int:
    """``tunplug-gateway status``: the interface and every client, like ``wg show``."""
    from tunplug.gateway import firewall

    gateway = registry.gateway
    clients = registry.clients()
    resources = registry.resources()
    dropped = firewall.dropped_packets(settings.interface)
    running = dropped is not None
    if as_json:
        json.dump(
            {
                "interface": settings.interface,
                "running": running,
                "public_key": format_key(gateway.public_key),
                "endpoint": gateway.endpoint,
                "listen_port": gateway.listen_port,
                "resources": [
                    {**r.view().model_dump(), "groups": list(r.groups)} for r in resources
                ],
                "dropped_not_resource": dropped,
                "peers": [
                    {
                        "name": c.name,
                        "public_key": format_key(c.public_key),
                        "allowed_ips": [f"{c.address_v4}/32", f"{c.address_v6}/128"],
                        "last_handshake": c.last_handshake,
                        "rx_bytes": c.rx_bytes,
                        "tx_bytes": c.tx_bytes,
                    }
                    for c in clients
                ],
            },
            sys.stdout,
            indent=2,
        )
        print()
        return EXIT_OK
    print(f"interface: {settings.interface} ({'running' if running else 'not running'})")
    print(f"  public key: {format_key(gateway.public_key)}")
    print(f"  endpoint: {gateway.endpoint} (listening on UDP {gateway.listen_port})")
    print(f"  resources:{'' if resources else ' none'}")
    for resource in resources:
        target: str = resource.kind
        if str(resource.target) != resource.name:
            target += f" {resource.target}"
        groups = f"groups {', '.join(resource.groups)}" if resource.groups else "every client"
        print(f"    {resource.name} ({target}): ports {port_rules_text(resource.ports)}; {groups}")
    for client in clients:
        print()
        print(f"peer: {format_key(client.public_key)} ({client.name})")
        print(f"  allowed ips: {client.address_v4}/32, {client.address_v6}/128")
        print(f"  latest handshake: {format_age(client.last_handshake, time.time())}")
        print(
            f"  transfer: {format_bytes(client.rx_bytes)} received, "
            f"{format_bytes(client.tx_bytes)} sent"
        )
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
