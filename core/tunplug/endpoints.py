"""A client's gateway endpoints: each ``host:port`` of a token tried in order, with failover
when handshakes stop being answered, and names resolved again at each switch.

Who calls it: :mod:`tunplug.token` (the endpoint a token's configuration starts with:
:func:`first_address`), and the clients that run a token, the headless client and the tunnel
service, which add :func:`failover_tasks` to the tunnel's ``InterfaceHooks.background``.

The rule (:class:`PathWatch`), looked at every ``WATCH_INTERVAL`` (0.5 s) by a background
task, never per packet, for the client's one peer (the gateway):

- *rx activity*: the peer's received bytes grew, or its last handshake changed, since the last
  look; *tx*: its sent bytes grew by more than one keepalive (a lone keepalive, persistent or
  passive, expects no answer, so it never raises a suspicion).
- *suspect*: tx was seen more than ``SUSPECT_AFTER`` (4 s) after the last rx activity (we send,
  nothing comes back), and there was no probe within the last ``SUSPECT_AFTER``. Then *probe*:
  a handshake with the current endpoint at once (:meth:`WireGuardDevice.retarget`).
- rx activity within ``PROBE_TIMEOUT`` (3 s) of the probe: the path works (a resource that does
  not answer is not the endpoint's fault). None: *switch* to the next endpoint (wrapping
  around; its name resolved again now; one that does not resolve is skipped) with a handshake
  there at once, logged as one INFO line::

      endpoint vpn1.example:51820 stopped answering: trying 10.0.0.2:51820 (vpn2.example:51820)

  The switch starts the rule over: the new endpoint gets the same 4 + 3 s.

So a path cut while traffic flows leads to the next endpoint about 7.5-8 s after the last
answer (4.5 s to the probe with 0.5 s looks, 3 s more to the switch), plus the engine's next
timer run (at most 0.1 s on the native data path, 1 s on the Python one). A tunnel sending
into a resource that never answers costs one handshake every 4-5 s while it does.

A name that does not resolve when the tunnel starts leaves the peer without an endpoint (the
token's configuration says so with a WARNING); the task then resolves the endpoints in order
every ``RESOLVE_RETRY`` (2 s), logs at most once a minute while none resolves, and hands the
first address found to the device.

``TUNPLUG_TEST_HOSTS`` (test only, like ``TUNPLUG_TEST_TIMERS``): a file in ``/etc/hosts``
format; when set, names resolve from that file alone, read again at each resolution, and never
through the system resolver, so a test can make a name resolve later without any DNS traffic.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from tunplug.exceptions import ConfigError, TunplugError
from tunplug.gateway.validation import validate_endpoint
from tunplug.transport import Endpoint

if TYPE_CHECKING:
    from tunplug.live_tunnel import LiveTunnel
    from tunplug.wgquick import WgQuickConfig
    from tunplug.wireguard.peer import PeerStats

log = logging.getLogger(__name__)

#: How often the background task looks at the peer's counters.
WATCH_INTERVAL = 0.5
#: Sending this long after the last answer makes the path suspect (and probed).
SUSPECT_AFTER = 4.0
#: A probe not answered within this long moves to the next endpoint.
PROBE_TIMEOUT = 3.0
#: While no endpoint resolves, how often the names are tried again.
RESOLVE_RETRY = 2.0
#: While no endpoint resolves, how often that is logged again.
RESOLVE_LOG_INTERVAL = 60.0
#: A transport message with no payload (16-byte header, 16-byte tag): a keepalive.
KEEPALIVE_SIZE = 32
#: :attr:`ResolveError.reason` of a host that is no name at all (a label over 63, a NUL byte).
NOT_A_HOST_NAME = "not a host name"
#: Test only: names resolve from this /etc/hosts-format file alone.
TEST_HOSTS_VARIABLE = "TUNPLUG_TEST_HOSTS"

#: Resolves ``(host, port)`` to the address to send to; blocking (run in a worker thread).
#: :raises ResolveError:
Resolver = Callable[[str, int], Endpoint]
BackgroundTask = Callable[["LiveTunnel"], Coroutine[Any, Any, None]]


class ResolveError(TunplugError):
    """A host name does not resolve (now)."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"cannot resolve {host} ({reason})")
        self.host = host
        self.reason = reason


@dataclass(frozen=True, slots=True)
class GatewayEndpoint:
    """One ``host:port`` as a token carries it; ``host`` without IPv6 brackets."""

    host: str
    port: int
    text: str

    @property
    def is_name(self) -> bool:
        """Whether ``host`` is a name (resolved), not an address."""
        try:
            ip_address(self.host)
        except ValueError:
            return True
        return False


def parse_endpoint(text: str) -> GatewayEndpoint:
    """``host:port`` or ``[v6-address]:port``, checked but not resolved.

    :raises ValueError: not one of those (the message says why).
    """
    try:
        text = validate_endpoint(text)
    except ConfigError as exc:
        raise ValueError(exc.message) from None
    host, _, port = text.rpartition(":")
    return GatewayEndpoint(host.removeprefix("[").removesuffix("]"), int(port), text)


def format_endpoint(address: Endpoint) -> str:
    """``(host, port)`` as ``host:port``, an IPv6 address in brackets."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def system_resolver(environ: Mapping[str, str] = os.environ) -> Resolver:
    """getaddrinfo (IPv4 preferred, as wg(8) does), or the ``TUNPLUG_TEST_HOSTS`` file."""
    hosts = environ.get(TEST_HOSTS_VARIABLE)
    return partial(_from_hosts_file, Path(hosts)) if hosts else resolve_system


def resolve_system(host: str, port: int) -> Endpoint:
    """An address as it is, a name through getaddrinfo, IPv4 preferred as wg(8) does when a
    name has both (blocking; also what a wg-quick file's ``Endpoint`` goes through).

    :raises ResolveError: the name does not resolve, or is not a host name at all
        (:data:`NOT_A_HOST_NAME`).
    """
    try:
        return str(ip_address(host)), port
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise ResolveError(host, exc.strerror or str(exc)) from None
    except ValueError:  # UnicodeError from IDNA (e.g. a label over 63), a NUL byte
        raise ResolveError(host, NOT_A_HOST_NAME) from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return str(infos[0][4][0]), port


def _from_hosts_file(path: Path, host: str, port: int) -> Endpoint:
    try:
        return str(ip_address(host)), port
    except ValueError:
        pass
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        address, *names = line.split("#", 1)[0].split() or [""]
        if host.lower() in (name.lower() for name in names):
            return str(ip_address(address)), port
    raise ResolveError(host, f"not in {TEST_HOSTS_VARIABLE} file {path}")


def first_address(endpoint: GatewayEndpoint, resolver: Resolver) -> Endpoint | None:
    """The address a tunnel starts with, resolved now (blocking); None, with a WARNING, when
    the name does not resolve: :func:`failover_tasks` tries again while the tunnel runs."""
    try:
        return resolver(endpoint.host, endpoint.port)
    except ResolveError as exc:
        log.warning("%s: retrying every %g s", exc, RESOLVE_RETRY)
        return None


class Verdict(enum.Enum):
    """What :meth:`PathWatch.look` asks for."""

    PROBE = "probe"
    SWITCH = "switch"


class PathWatch:
    """The detection rule (see the module's docstring) as a function of counters and time."""

    def __init__(self, now: float) -> None:
        self._seen: tuple[int, int, float | None] | None = None
        self.restart(now)

    def restart(self, now: float) -> None:
        """A new endpoint: it gets the full SUSPECT_AFTER + PROBE_TIMEOUT from ``now``."""
        self.last_rx = now
        self.last_tx = float("-inf")
        self._probe_at: float | None = None
        self._last_probe = float("-inf")

    def look(
        self, rx_bytes: int, tx_bytes: int, last_handshake: float | None, now: float
    ) -> Verdict | None:
        """The peer's counters as they are at ``now``; what to do, if anything."""
        if self._seen is not None:
            seen_rx, seen_tx, seen_handshake = self._seen
            if rx_bytes > seen_rx or last_handshake != seen_handshake:
                self.last_rx = now
            if tx_bytes - seen_tx > KEEPALIVE_SIZE:
                self.last_tx = now
        self._seen = (rx_bytes, tx_bytes, last_handshake)
        if self._probe_at is not None:
            if self.last_rx >= self._probe_at:
                self._probe_at = None  # answered: the path works
            elif now - self._probe_at >= PROBE_TIMEOUT:
                self._probe_at = None
                return Verdict.SWITCH
            else:
                return None
        if self.last_tx - self.last_rx > SUSPECT_AFTER and now - self._last_probe >= SUSPECT_AFTER:
            self._probe_at = self._last_probe = now
            return Verdict.PROBE
        return None


class _Device(Protocol):
    """What the failover needs of :class:`~tunplug.wireguard.WireGuardDevice`."""

    def peer_stats(self) -> list[PeerStats]: ...

    def retarget(self, public_key: bytes, endpoint: Endpoint | None = None) -> None: ...


class EndpointFailover:
    """One tunnel's gateway: which of its endpoints is in use, and the task that changes it.

    ``address`` is where the device's peer starts (None: the first name did not resolve).
    ``resolver`` runs in a worker thread; ``clock`` is anyio's by default.
    """

    def __init__(
        self,
        public_key: bytes,
        endpoints: Sequence[str],
        *,
        address: Endpoint | None,
        resolver: Resolver | None = None,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        if not endpoints:
            raise ValueError("a failover needs at least one endpoint")
        self.public_key = public_key
        self.endpoints = [parse_endpoint(text) for text in endpoints]
        self.index = 0
        self.address = address
        self._resolver = resolver or system_resolver()
        self._clock = clock
        self._watch: PathWatch | None = None
        self._next_resolve = float("-inf")
        self._last_warning: float | None = None

    async def run(self, tunnel: LiveTunnel) -> None:
        """Watch the peer until cancelled (an ``InterfaceHooks.background`` task), on the
        device the tunnel runs at each look."""
        while True:
            await self.step(tunnel.device)
            await anyio.sleep(WATCH_INTERVAL)

    async def step(self, device: _Device) -> None:
        """One look at the peer (what :meth:`run` does every WATCH_INTERVAL)."""
        stats = next((s for s in device.peer_stats() if s.public_key == self.public_key), None)
        if stats is None:
            return
        now = self._clock()
        if stats.endpoint is None:
            if now >= self._next_resolve:
                self._next_resolve = now + RESOLVE_RETRY
                await self._resolve_missing(device, now)
            return
        if self._watch is None:
            self._watch = PathWatch(now)
        verdict = self._watch.look(stats.rx_bytes, stats.tx_bytes, stats.last_handshake, now)
        if verdict is Verdict.PROBE:
            log.debug(
                "no answer from %s for %.1f s while sending: handshaking to check it",
                self._describe_current(stats.endpoint),
                now - self._watch.last_rx,
            )
            device.retarget(self.public_key)
        elif verdict is Verdict.SWITCH:
            await self._switch(device, stats.endpoint)
            self._watch.restart(self._clock())

    def _describe_current(self, endpoint: Endpoint) -> str:
        if endpoint == self.address:
            return self.endpoints[self.index].text
        return format_endpoint(endpoint)  # the peer roamed, or we do not know its name

    def _describe(self, index: int, address: Endpoint) -> str:
        name = self.endpoints[index]
        return f"{format_endpoint(address)} ({name.text})" if name.is_name else name.text

    async def _resolve(self, index: int) -> Endpoint:
        name = self.endpoints[index]
        return await anyio.to_thread.run_sync(self._resolver, name.host, name.port)

    async def _switch(self, device: _Device, current: Endpoint) -> None:
        count = len(self.endpoints)
        failures = []
        for step in range(1, count + 1):
            index = (self.index + step) % count
            try:
                address = await self._resolve(index)
            except ResolveError as exc:
                failures.append(str(exc))
                continue
            log.log(
                logging.DEBUG if address == current else logging.INFO,
                "endpoint %s stopped answering: trying %s",
                self._describe_current(current),
                self._describe(index, address),
            )
            self.index, self.address = index, address
            device.retarget(self.public_key, address)
            return
        log.warning(
            "endpoint %s stopped answering, and no endpoint resolves (%s): handshaking again",
            self._describe_current(current),
            "; ".join(failures),
        )
        device.retarget(self.public_key)

    async def _resolve_missing(self, device: _Device, now: float) -> None:
        failures = []
        for index in range(len(self.endpoints)):
            try:
                address = await self._resolve(index)
            except ResolveError as exc:
                failures.append(exc)
                continue
            log.info("gateway endpoint resolved: connecting to %s", self._describe(index, address))
            self.index, self.address = index, address
            device.retarget(self.public_key, address)
            self._watch = None  # starts over when the endpoint shows
            return
        # The first failure was logged where the configuration was built (first_address).
        if self._last_warning is None:
            self._last_warning = now
        elif now - self._last_warning >= RESOLVE_LOG_INTERVAL:
            self._last_warning = now
            log.warning("%s: retrying every %g s", "; ".join(map(str, failures)), RESOLVE_RETRY)


def failover_tasks(config: WgQuickConfig, endpoints: Sequence[str]) -> list[BackgroundTask]:
    """``InterfaceHooks.background`` for a token's tunnel: one :class:`EndpointFailover` for
    its peer (the gateway). None without endpoints (a wg-quick file) or with another number of
    peers than one."""
    if not endpoints or len(config.peers) != 1:
        return []
    peer = config.peers[0]
    failover = EndpointFailover(peer.public_key, endpoints, address=peer.endpoint)
    return [failover.run]
