"""The client of a gateway's control channel: fetch the resources, apply them, follow changes.

Who calls it: the headless client and the tunnel service, for a token with ``control`` (the
gateway's ``address:port`` inside the tunnel). They add :meth:`ControlChannel.run` to
``InterfaceHooks.controllers``; it gets the running tunnel
(:class:`~tunplug.live_tunnel.LiveTunnel`).

The channel is plain HTTP/1.1, one request per connection, over TCP through the tunnel:
``GET /v1/view`` answers the client's :class:`~tunplug.resources.ClientView` at once;
``GET /v1/view?since=N`` is held by the gateway until the view's version differs from ``N``
(or about 25 s), then answers the current view. 403: the gateway does not know the source
address. The first connection attempt is also what starts the WireGuard handshake, so failures
are retried with a backoff from :data:`RETRY_MIN` to :data:`RETRY_MAX` seconds; each new kind
of failure is logged once, and the recovery once.

Applying a view: the gateway peer's AllowedIPs and the routes become
``view.networks(internet=...)``, the DNS servers the view's ``default_dns_servers``, and the
routing-only DNS (names under ``dns_domains`` to ``dns_servers``) is handed over as
:class:`~tunplug.live_tunnel.RoutingDns`: all through :meth:`LiveTunnel.update`, the operation a
SIGHUP reload uses, which keeps the device and its sessions, diffs the routes and re-applies
DNS only when it changed. One INFO line says what changed::

    resources: +db (*.corp.example), -old (10.9.0.0/16); routes +2 -1; DNS corp.example
    via 100.64.0.1       (one line)

The Internet resource (``0.0.0.0/0`` and ``::/0``, the full tunnel) is used only while the user
asks for it (``--activate-internet-resource``, or ``SetInternetResource`` to the tunnel
service) and the view offers it; :meth:`ControlChannel.set_internet` switches it at run time.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import replace
from ipaddress import ip_address
from typing import TYPE_CHECKING

import anyio
from pydantic import ValidationError

from tunplug.exceptions import ConfigError, TunplugError
from tunplug.live_tunnel import Applied, LiveTunnel, RoutingDns
from tunplug.resources import ClientView, ResourceView
from tunplug.service import protocol as p
from tunplug.wireguard import Timing

if TYPE_CHECKING:
    from tunplug.wgquick import WgQuickConfig

log = logging.getLogger(__name__)

#: Seconds before the first retry after a failure; doubled each time up to :data:`RETRY_MAX`.
RETRY_MIN = 0.5
RETRY_MAX = 5.0
#: How long connecting may take (the first SYN waits for the WireGuard handshake).
CONNECT_TIMEOUT = 5.0
#: How long an answer may take: the gateway holds a long poll for about 25 s.
ANSWER_TIMEOUT = 40.0
#: The largest answer accepted, headers included.
MAX_ANSWER = 4 * 1024 * 1024
#: A resource counts as reachable while the gateway's last handshake is this recent (seconds;
#: WireGuard's REJECT_AFTER_TIME: a session older than that cannot carry traffic).
HANDSHAKE_FRESH = Timing().reject_after_time


_DIGITS = re.compile(r"[0-9]{1,9}")


class ControlError(TunplugError):
    """The control channel did not answer with a view; the message says why."""


def parse_control_address(text: str) -> tuple[str, int]:
    """``100.64.0.1:51820`` or ``[fd00::1]:51820``. :raises ConfigError: anything else."""
    host, sep, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ip_address(host)
        number = int(port)
    except ValueError:
        number = 0
    if not sep or not 1 <= number <= 65535:
        raise ConfigError("token", f"control {text!r} is not address:port")
    return host, number


async def fetch_view(
    address: tuple[str, int],
    since: int | None = None,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    answer_timeout: float = ANSWER_TIMEOUT,
) -> ClientView:
    """One request to the control channel: the view now, or (``since``) once it changed.

    :raises ControlError: no connection, no answer in time, a refusal, or not a view.
    """
    host, port = address
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    target = "/v1/view" if since is None else f"/v1/view?since={since}"
    request = f"GET {target} HTTP/1.1\r\nHost: {where}\r\nConnection: close\r\n\r\n"
    try:
        with anyio.fail_after(connect_timeout):
            stream = await anyio.connect_tcp(host, port)
    except TimeoutError:
        raise ControlError(
            f"{where} did not accept a connection within {connect_timeout:g} s"
        ) from None
    except OSError as exc:
        raise ControlError(f"cannot connect to {where}: {exc.strerror or exc}") from None
    async with stream:
        try:
            with anyio.fail_after(answer_timeout):
                await stream.send(request.encode("ascii"))
                status, body = await _read_answer(stream)
        except TimeoutError:
            raise ControlError(f"{where} did not answer within {answer_timeout:g} s") from None
        except (OSError, anyio.BrokenResourceError) as exc:
            raise ControlError(f"the connection to {where} failed: {exc}") from None
    if status == 403:
        raise ControlError(
            f"{where} refused this client (403): the gateway does not know its tunnel address "
            "(revoked, or a token of another gateway?)"
        )
    if status != 200:
        raise ControlError(f"{where} answered HTTP {status}")
    try:
        return ClientView.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(map(str, first["loc"])) or "view"
        raise ControlError(f"{where} sent no valid view ({field}: {first['msg']})") from None


async def _read_answer(stream: anyio.abc.ByteStream) -> tuple[int, bytes]:
    """The status and body of an HTTP/1.1 answer (``Content-Length``, or until the end)."""
    data = b""
    length: int | None = None
    head_end = -1
    while True:
        if head_end < 0:
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                status, length = _parse_head(data[:head_end])
        if head_end >= 0 and length is not None and len(data) >= head_end + 4 + length:
            break
        try:
            chunk = await stream.receive()
        except anyio.EndOfStream:
            break
        data += chunk
        if len(data) > MAX_ANSWER:
            raise ControlError(f"answer larger than {MAX_ANSWER} bytes")
    if head_end < 0:
        raise ControlError("the connection closed before a complete HTTP answer")
    body = data[head_end + 4 :]
    return status, body if length is None else body[:length]


def _parse_head(head: bytes) -> tuple[int, int | None]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    # ASCII digits only: isdigit() also takes '²', which int() refuses.
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not _DIGITS.fullmatch(parts[1]):
        raise ControlError(f"not an HTTP answer: {lines[0][:60]!r}")
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and _DIGITS.fullmatch(value.strip()):
            length = int(value.strip())
        if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
            raise ControlError("chunked answers are not supported")
    return int(parts[1]), length


def view_config(config: WgQuickConfig, view: ClientView, internet: bool) -> WgQuickConfig:
    """``config`` with the gateway peer's (the first peer's) AllowedIPs from ``view`` (and
    the Internet with ``internet``) and its DNS servers; keys, addresses, endpoint kept."""
    gateway = replace(config.peers[0], allowed_ips=tuple(view.networks(internet=internet)))
    return replace(
        config,
        peers=(gateway, *config.peers[1:]),
        dns_servers=tuple(ip_address(server) for server in view.default_dns_servers),
    )


def routing_dns(view: ClientView) -> RoutingDns:
    return RoutingDns(
        servers=tuple(ip_address(server) for server in view.dns_servers),
        domains=tuple(view.dns_domains),
    )


def describe(
    old: ClientView | None, new: ClientView, applied: Applied, internet: bool | None
) -> str | None:
    """The INFO line for an applied view; ``None`` when nothing a user sees changed."""
    before = {r.name: r for r in old.resources} if old else {}
    after = {r.name: r for r in new.resources}
    changes = [f"+{_label(r)}" for name, r in after.items() if before.get(name) != r]
    changes += [f"-{_label(r)}" for name, r in before.items() if name not in after]
    parts = [f"resources: {', '.join(changes)}"] if changes else []
    if applied.routes_added or applied.routes_removed:
        parts.append(f"routes +{len(applied.routes_added)} -{len(applied.routes_removed)}")
    if applied.dns_changed:
        if new.dns_domains and new.dns_servers:
            parts.append(f"DNS {' '.join(new.dns_domains)} via {', '.join(new.dns_servers)}")
        else:
            parts.append("DNS: no routing domains")
    if internet is not None:
        parts.append(f"Internet resource {'on' if internet else 'off'}")
    return "; ".join(parts) or None


def _label(resource: ResourceView) -> str:
    ports = f" {','.join(resource.ports)}" if resource.ports else ""
    return f"{resource.name} ({resource.target}{ports})"


def control_channel(control: str | None, internet: bool = False) -> ControlChannel | None:
    """The channel for a token's ``control`` (``None``: the token has none).

    :raises ConfigError: not ``address:port``.
    """
    if control is None:
        return None
    return ControlChannel(parse_control_address(control), internet=internet)


class ControlChannel:
    """Follows one gateway's control channel for one running tunnel (see the module doc)."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        internet: bool = False,
        connect_timeout: float = CONNECT_TIMEOUT,
        answer_timeout: float = ANSWER_TIMEOUT,
        retry: tuple[float, float] = (RETRY_MIN, RETRY_MAX),
    ) -> None:
        self.address = address
        #: Whether the user asked for the Internet resource.
        self.internet_wanted = internet
        #: Whether the tunnel routes everything now (asked for, and offered by the view).
        self.internet_active = False
        #: The view applied to the tunnel (``None`` before the first one).
        self.view: ClientView | None = None
        self.connect_timeout = connect_timeout
        self.answer_timeout = answer_timeout
        self.retry = retry
        self._tunnel: LiveTunnel | None = None
        self._lock = anyio.Lock()
        self._problem: str | None = None

    async def run(self, tunnel: LiveTunnel) -> None:
        """Fetch, apply, then long-poll for changes until cancelled (a controller task)."""
        self._tunnel = tunnel
        delay = self.retry[0]
        while True:
            since = self.view.version if self.view is not None else None
            try:
                view = await fetch_view(
                    self.address,
                    since,
                    connect_timeout=self.connect_timeout,
                    answer_timeout=self.answer_timeout,
                )
                if self.view is None or view != self.view:
                    await self._apply(view)
            except TunplugError as exc:
                self._failed(exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, self.retry[1])
                continue
            if self._problem is not None:
                log.info("control channel: working again")
                self._problem = None
            delay = self.retry[0]

    def _failed(self, exc: TunplugError) -> None:
        message = str(exc)
        if message != self._problem:
            what = "cannot fetch the resources" if self.view is None else "lost the gateway"
            if isinstance(exc, ControlError):
                log.warning("control channel: %s: %s (retrying)", what, message)
            else:
                log.error("control channel: cannot apply the resources: %s (retrying)", message)
            self._problem = message

    async def set_internet(self, active: bool) -> None:
        """Ask for the Internet resource, or stop using it; applied at once when running.

        :raises TunplugError: the system refused the change (the request is kept).
        """
        self.internet_wanted = active
        if self._tunnel is not None and self.view is not None:
            await self._apply(self.view)

    def overlay(self, config: WgQuickConfig) -> WgQuickConfig:
        """A configuration read again (SIGHUP) with the applied view's AllowedIPs and DNS, so
        that a reload keeps the resources."""
        if self.view is None:
            return config
        return view_config(config, self.view, self.internet_active)

    async def _apply(self, view: ClientView) -> None:
        tunnel = self._tunnel
        assert tunnel is not None
        async with self._lock:
            internet = self.internet_wanted and view.internet
            config = view_config(tunnel.config, view, internet)
            applied = await tunnel.update(config, routing_dns(view))
            old, self.view = self.view, view
            self.internet_active = internet
            line = describe(old, view, applied, applied.full_tunnel)
            if line is not None:
                log.info("%s", line)
            else:
                log.debug("control channel: view %d, nothing to change", view.version)
            if internet != self.internet_wanted and self.internet_wanted:
                log.info("the Internet resource is asked for, but the gateway does not offer it")

    # -- status -----------------------------------------------------------------------------
    def reachable(self) -> bool:
        """Whether the gateway's last handshake is recent enough to carry traffic."""
        if self._tunnel is None:
            return False
        gateway_key = self._tunnel.config.peers[0].public_key
        for peer in self._tunnel.device.peer_stats():
            if peer.public_key == gateway_key and peer.last_handshake is not None:
                return time.monotonic() - peer.last_handshake < HANDSHAKE_FRESH
        return False

    def resources(self) -> list[p.ResourceStatus]:
        """The applied view's resources for ``tunplug status`` and GUIs."""
        if self.view is None:
            return []
        fresh = self.reachable()
        return [
            p.ResourceStatus(
                name=r.name, kind=r.kind, target=r.target, ports=list(r.ports), reachable=fresh
            )
            for r in self.view.resources
        ]

    def internet_status(self) -> p.InternetResourceStatus:
        return p.InternetResourceStatus(
            offered=self.view is not None and self.view.internet,
            requested=self.internet_wanted,
            active=self.internet_active,
        )
