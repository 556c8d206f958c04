"""Client tokens: one opaque, versioned string carrying everything a client needs to connect.

Who calls it: the gateway (``tunplug-gateway client add`` issues a token with :func:`encode`)
and the headless client (reads ``TUNPLUG_TOKEN`` or the token file and calls :func:`decode`).

Format, version 1: ``tp1.<payload>.<check>``, where ``payload`` is base64url (no padding) of a
JSON object (:class:`ClientToken`) and ``check`` is base64url of a 16-byte keyed BLAKE2s digest
of the payload. The digest catches a token that was cut, mistyped or edited by hand; it is an
integrity check, not a signature. The token holds the client's private key: treat it like one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, ip_interface, ip_network

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunplug.endpoints import Resolver, first_address, parse_endpoint, system_resolver
from tunplug.exceptions import ConfigError
from tunplug.wgquick import WgQuickConfig, parse_wg_quick
from tunplug.wireguard.keys import parse_key

PREFIX = "tp1"
_CHECK_KEY = b"tunplug client token v1"
_CHECK_SIZE = 16


class ClientToken(BaseModel):
    """What version 1 of the token carries (field names are short: the token is typed by hand
    rarely, but copied into environment variables often)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The client's name at the gateway (for logs and ``tunplug status``).
    name: str = Field(min_length=1, max_length=64)
    #: The gateway's WireGuard public key, base64.
    gateway_key: str
    #: ``host:port`` endpoints of the gateway, tried in order.
    endpoints: list[str] = Field(min_length=1)
    #: The client's WireGuard private key, base64.
    private_key: str = Field(repr=False)
    #: A PresharedKey shared with the gateway, base64.
    preshared_key: str | None = Field(default=None, repr=False)
    #: The client's tunnel addresses with prefix, e.g. ``100.64.0.2/32``.
    addresses: list[str] = Field(min_length=1)
    #: Networks routed through the tunnel (the gateway's resources; ``0.0.0.0/0`` for all).
    routes: list[str] = Field(min_length=1)
    #: DNS servers and search domains for the tunnel.
    dns_servers: list[IPv4Address | IPv6Address] = Field(default_factory=list)
    dns_domains: list[str] = Field(default_factory=list)
    #: Seconds between keepalives (NAT traversal); 0 turns them off.
    persistent_keepalive: int = Field(default=25, ge=0, le=65535)
    #: ``address:port`` of the gateway's control channel, inside the tunnel: the client
    #: fetches its resources, routes and DNS there and follows changes (tokens issued before
    #: resources were live have none: their routes stay as issued).
    control: str | None = None

    @field_validator("gateway_key", "private_key", "preshared_key")
    @classmethod
    def _is_key(cls, value: str | None) -> str | None:
        if value is not None:
            parse_key(value)
        return value

    @field_validator("endpoints", "dns_domains")
    @classmethod
    def _are_single_values(cls, value: list[str]) -> list[str]:
        # They are written into wg-quick text (to_wg_quick): a line break would add lines
        # (another Address, a second [Peer]), a comma another item, '#' a comment.
        for item in value:
            if item.splitlines() != [item] or "," in item or "#" in item:
                raise ValueError(f"{item!r} is not one value (line break, ',' or '#')")
        return value

    @field_validator("endpoints")
    @classmethod
    def _are_endpoints(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_endpoint(item)
        return value

    @field_validator("addresses")
    @classmethod
    def _are_interfaces(cls, value: list[str]) -> list[str]:
        for item in value:
            ip_interface(item)
        return value

    @field_validator("routes")
    @classmethod
    def _are_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ip_network(item, strict=False)
        return value

    def to_wg_quick(self) -> str:
        """The same configuration as a wg-quick file (what stock WireGuard clients read): the
        first endpoint only, as they take one."""
        return self._wg_quick(self.endpoints[0])

    def _wg_quick(self, endpoint: str | None) -> str:
        lines = ["[Interface]", f"PrivateKey = {self.private_key}"]
        lines.append(f"Address = {', '.join(self.addresses)}")
        dns = [str(server) for server in self.dns_servers] + list(self.dns_domains)
        if dns:
            lines.append(f"DNS = {', '.join(dns)}")
        lines += ["", "[Peer]", f"PublicKey = {self.gateway_key}"]
        if self.preshared_key:
            lines.append(f"PresharedKey = {self.preshared_key}")
        if endpoint is not None:
            lines.append(f"Endpoint = {endpoint}")
        lines.append(f"AllowedIPs = {', '.join(self.routes)}")
        if self.persistent_keepalive:
            lines.append(f"PersistentKeepalive = {self.persistent_keepalive}")
        return "\n".join(lines) + "\n"

    def to_config(self, resolver: Resolver | None = None) -> WgQuickConfig:
        """The parsed configuration the client runs, its peer at the first endpoint.

        A first endpoint whose name does not resolve now (``resolver``: the system's) leaves
        the peer without an endpoint and logs a WARNING, instead of failing: the clients run
        :func:`tunplug.endpoints.failover_tasks` beside the tunnel, which resolves it later,
        and moves on to the other endpoints when one stops answering.
        """
        config = parse_wg_quick(self._wg_quick(None), "token")
        first = parse_endpoint(self.endpoints[0])
        address = first_address(first, resolver or system_resolver())
        peer = replace(config.peers[0], endpoint=address, endpoint_text=first.text)
        return replace(config, peers=(peer,))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _check(payload: str) -> bytes:
    return hashlib.blake2s(
        payload.encode("ascii"), key=_CHECK_KEY, digest_size=_CHECK_SIZE
    ).digest()


def encode(token: ClientToken) -> str:
    """The token as the one string a client is given."""
    payload = _b64(json.dumps(token.model_dump(mode="json"), separators=(",", ":")).encode())
    return f"{PREFIX}.{payload}.{_b64(_check(payload))}"


def decode(text: str, source: str = "TUNPLUG_TOKEN") -> ClientToken:
    """Parse and check a token; ``source`` names where it came from in errors.

    :raises ConfigError: not a tunplug token, a version this client does not know, damaged
        or edited (the check does not match), or the content is invalid. Never quotes the
        token itself.
    """
    parts = text.strip().split(".")
    if len(parts) != 3 or not parts[0].startswith("tp"):
        raise ConfigError(source, "is not a tunplug token (expected tp1.<payload>.<check>)")
    version, payload, check = parts
    if version != PREFIX:
        raise ConfigError(
            source, f"token version {version!r} is not supported (this client reads {PREFIX!r})"
        )
    try:
        given = _unb64(check)
        raw = _unb64(payload)
    except (binascii.Error, ValueError):
        raise ConfigError(source, "token is damaged (not base64url)") from None
    if not hmac.compare_digest(given, _check(payload)):
        raise ConfigError(source, "token is damaged or was edited (its check does not match)")
    try:
        return ClientToken.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "token"
        raise ConfigError(source, f"token field {where}: {first['msg']}") from None
