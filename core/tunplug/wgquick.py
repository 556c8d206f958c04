"""wg-quick configuration files: ``[Interface]`` and ``[Peer]`` sections, as any WireGuard
server hands them out.

Who calls it: ``tunplug-headless-client standalone --config`` and the demo. A malformed file is
one :class:`~tunplug.exceptions.ConfigError` naming the file, line and key, so the CLI prints one
line and exits 2. wg-quick's hook keys (``PreUp``, ``PostUp``, ``Table``, ...) are ignored with a
warning: tunplug never runs shell commands from a config file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_interface,
    ip_network,
)
from pathlib import Path

from tunplug.endpoints import NOT_A_HOST_NAME, ResolveError, resolve_system
from tunplug.exceptions import ConfigError
from tunplug.transport import Endpoint
from tunplug.wireguard.keys import parse_key

log = logging.getLogger(__name__)

#: wg-quick keys tunplug accepts and ignores (they run commands or pick routing tables).
IGNORED_KEYS = frozenset(
    {"preup", "postup", "predown", "postdown", "table", "saveconfig", "fwmark"}
)


@dataclass(frozen=True, slots=True)
class PeerSection:
    public_key: bytes
    preshared_key: bytes | None = None
    endpoint: Endpoint | None = None
    endpoint_text: str | None = None
    allowed_ips: tuple[IPv4Network | IPv6Network, ...] = ()
    persistent_keepalive: int | None = None


@dataclass(frozen=True, slots=True)
class WgQuickConfig:
    private_key: bytes = field(repr=False)
    addresses: tuple[IPv4Interface | IPv6Interface, ...] = ()
    listen_port: int | None = None
    dns_servers: tuple[IPv4Address | IPv6Address, ...] = ()
    dns_domains: tuple[str, ...] = ()
    mtu: int | None = None
    peers: tuple[PeerSection, ...] = field(default_factory=tuple)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.line = 0

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}:{self.line}: {key}", message)

    def key(self, key: str, value: str) -> bytes:
        try:
            return parse_key(value, key)
        except ValueError as exc:
            raise ConfigError(f"{self.source}:{self.line}", str(exc)) from None

    def integer(self, key: str, value: str, low: int, high: int) -> int:
        try:
            number = int(value)
        except ValueError:
            raise self.fail(key, f"expected a whole number, got {value!r}") from None
        if not low <= number <= high:
            raise self.fail(key, f"must be between {low} and {high}, got {number}")
        return number

    def items(self, value: str) -> list[str]:
        return [item.strip() for item in value.split(",") if item.strip()]

    def endpoint(self, key: str, value: str) -> tuple[Endpoint, str]:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise self.fail(key, f"expected host:port or [v6-address]:port, got {value!r}")
        host = host.removeprefix("[").removesuffix("]")
        port = self.integer(key, port_text, 1, 65535)
        try:
            return resolve_system(host, port), value
        except ResolveError as exc:
            if exc.reason == NOT_A_HOST_NAME:
                raise self.fail(key, f"{host!r} is not a host name") from None
            raise self.fail(key, f"cannot resolve {host!r}: {exc.reason}") from None


@dataclass(slots=True)
class _InterfaceDraft:
    """[Interface] as it is being read; becomes the frozen :class:`WgQuickConfig`."""

    private_key: bytes | None = None
    addresses: list[IPv4Interface | IPv6Interface] = field(default_factory=list)
    listen_port: int | None = None
    dns_servers: list[IPv4Address | IPv6Address] = field(default_factory=list)
    dns_domains: list[str] = field(default_factory=list)
    mtu: int | None = None


@dataclass(slots=True)
class _PeerDraft:
    """One [Peer] as it is being read; ``line`` is where it starts, for errors."""

    line: int
    public_key: bytes | None = None
    preshared_key: bytes | None = None
    endpoint: Endpoint | None = None
    endpoint_text: str | None = None
    allowed_ips: list[IPv4Network | IPv6Network] = field(default_factory=list)
    persistent_keepalive: int | None = None


def parse_wg_quick(text: str, source: str = "<config>") -> WgQuickConfig:
    """Parse a wg-quick file's text. :raises ConfigError: with ``source:line: Key`` first."""
    parser = _Parser(source)
    section: str | None = None
    interface = _InterfaceDraft()
    peers: list[_PeerDraft] = []
    seen_interface = False
    for number, raw in enumerate(text.splitlines(), start=1):
        parser.line = number
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
            if section == "interface":
                if seen_interface:
                    raise parser.fail("[Interface]", "appears twice")
                seen_interface = True
            elif section == "peer":
                peers.append(_PeerDraft(number))
            else:
                raise parser.fail(line, "unknown section (expected [Interface] or [Peer])")
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise parser.fail(line[:20], "expected 'Key = Value'")
        if section is None:
            raise parser.fail(key, "appears before any [Interface] or [Peer] section")
        lowered = key.lower()
        if lowered in IGNORED_KEYS:
            log.warning("%s:%d: %s is a wg-quick option tunplug ignores", source, number, key)
            continue
        if section == "interface":
            _interface_key(parser, interface, key, lowered, value)
        else:
            _peer_key(parser, peers[-1], key, lowered, value)
    if not seen_interface:
        raise ConfigError(source, "has no [Interface] section")
    if interface.private_key is None:
        raise ConfigError(f"{source}: [Interface]", "PrivateKey is missing")
    sections = []
    for peer in peers:
        if peer.public_key is None:
            raise ConfigError(f"{source}:{peer.line}: [Peer]", "PublicKey is missing")
        sections.append(
            PeerSection(
                public_key=peer.public_key,
                preshared_key=peer.preshared_key,
                endpoint=peer.endpoint,
                endpoint_text=peer.endpoint_text,
                allowed_ips=tuple(peer.allowed_ips),
                persistent_keepalive=peer.persistent_keepalive,
            )
        )
    keys = [peer.public_key for peer in sections]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{source}: [Peer]", "the same PublicKey appears twice")
    return WgQuickConfig(
        private_key=interface.private_key,
        addresses=tuple(interface.addresses),
        listen_port=interface.listen_port,
        dns_servers=tuple(interface.dns_servers),
        dns_domains=tuple(interface.dns_domains),
        mtu=interface.mtu,
        peers=tuple(sections),
    )


def _interface_key(
    parser: _Parser, interface: _InterfaceDraft, key: str, lowered: str, value: str
) -> None:
    if lowered == "privatekey":
        interface.private_key = parser.key(key, value)
    elif lowered == "address":
        for item in parser.items(value):
            try:
                interface.addresses.append(ip_interface(item))
            except ValueError:
                raise parser.fail(key, f"{item!r} is not an address with a prefix") from None
    elif lowered == "listenport":
        interface.listen_port = parser.integer(key, value, 0, 65535)
    elif lowered == "mtu":
        interface.mtu = parser.integer(key, value, 576, 65535)
    elif lowered == "dns":
        for item in parser.items(value):
            try:
                interface.dns_servers.append(ip_address(item))
            except ValueError:
                interface.dns_domains.append(item)  # wg-quick: non-addresses are domains
    else:
        raise parser.fail(key, "unknown [Interface] key")


def _peer_key(parser: _Parser, peer: _PeerDraft, key: str, lowered: str, value: str) -> None:
    if lowered == "publickey":
        peer.public_key = parser.key(key, value)
    elif lowered == "presharedkey":
        peer.preshared_key = parser.key(key, value)
    elif lowered == "endpoint":
        peer.endpoint, peer.endpoint_text = parser.endpoint(key, value)
    elif lowered == "allowedips":
        for item in parser.items(value):
            try:
                peer.allowed_ips.append(ip_network(item, strict=False))
            except ValueError:
                raise parser.fail(key, f"{item!r} is not a network (a.b.c.d/n)") from None
    elif lowered == "persistentkeepalive":
        peer.persistent_keepalive = (
            None if value == "off" else parser.integer(key, value, 0, 65535) or None
        )
    else:
        raise parser.fail(key, "unknown [Peer] key")


def load_wg_quick(path: str | Path) -> WgQuickConfig:
    """Read and parse a wg-quick file. :raises ConfigError: unreadable or malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "is not UTF-8 text") from None
    return parse_wg_quick(text, str(path))
