"""Gateway endpoints: parsing, the test hosts file, the detection rule on a fake clock, failover
and name retries with a fake device and resolver (no sockets, no sleeping)."""

from __future__ import annotations

import itertools
import logging
import socket
from dataclasses import dataclass, field

import pytest

from tunplug import token
from tunplug.endpoints import (
    KEEPALIVE_SIZE,
    PROBE_TIMEOUT,
    RESOLVE_LOG_INTERVAL,
    RESOLVE_RETRY,
    SUSPECT_AFTER,
    TEST_HOSTS_VARIABLE,
    WATCH_INTERVAL,
    EndpointFailover,
    GatewayEndpoint,
    PathWatch,
    ResolveError,
    Verdict,
    failover_tasks,
    parse_endpoint,
    system_resolver,
)
from tunplug.exceptions import ConfigError
from tunplug.testing.interop import Keys
from tunplug.transport import Endpoint
from tunplug.wireguard.peer import PeerStats

GATEWAY_KEY = bytes(range(32))


# -- parsing and resolving --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "host", "port", "is_name"),
    [
        ("vpn.example:51820", "vpn.example", 51820, True),
        ("192.0.2.1:1", "192.0.2.1", 1, False),
        ("[2001:db8::1]:65535", "2001:db8::1", 65535, False),
    ],
)
def test_an_endpoint_is_parsed_without_resolving_it(text, host, port, is_name):
    assert parse_endpoint(text) == GatewayEndpoint(host, port, text)
    assert parse_endpoint(text).is_name is is_name


@pytest.mark.parametrize("text", ["vpn.example", "vpn.example:0", "2001:db8::1:51820", ":51820"])
def test_a_malformed_endpoint_is_a_value_error(text):
    with pytest.raises(ValueError):
        parse_endpoint(text)


def test_a_token_with_a_malformed_endpoint_stays_a_config_error():
    client = _token(["192.0.2.1:51820"])
    bad = client.model_copy(update={"endpoints": ["192.0.2.1:51820", "vpn.example"]})
    with pytest.raises(ConfigError, match="token field endpoints"):
        token.decode(token.encode(bad))


def test_the_test_hosts_file_alone_resolves_names(tmp_path, monkeypatch):
    def no_dns(*args: object, **kwargs: object) -> None:
        raise AssertionError("getaddrinfo must not be called")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    hosts = tmp_path / "hosts"
    resolve = system_resolver({TEST_HOSTS_VARIABLE: str(hosts)})
    with pytest.raises(ResolveError, match=r"cannot resolve vpn\.invalid \(not in"):
        resolve("vpn.invalid", 51820)  # the file does not exist yet
    hosts.write_text("# test\n10.9.0.1 other.invalid\n10.9.0.2  VPN.invalid alias.invalid\n")
    assert resolve("vpn.invalid", 51820) == ("10.9.0.2", 51820)  # read again each time
    assert resolve("alias.invalid", 1) == ("10.9.0.2", 1)
    assert resolve("2001:db8::1", 2) == ("2001:db8::1", 2)


def test_the_system_resolver_takes_an_address_as_it_is():
    assert system_resolver({})("192.0.2.7", 51820) == ("192.0.2.7", 51820)


def test_an_unresolvable_first_name_leaves_the_peer_without_endpoint(caplog):
    client = _token(["vpn.invalid:51820", "192.0.2.2:51820"])
    with caplog.at_level(logging.WARNING, logger="tunplug.endpoints"):
        config = client.to_config(resolver=_failing_resolver)
    peer = config.peers[0]
    assert peer.endpoint is None and peer.endpoint_text == "vpn.invalid:51820"
    assert "cannot resolve vpn.invalid (no such name): retrying every 2 s" in caplog.text
    # What stock clients get is unchanged: the first endpoint.
    assert "Endpoint = vpn.invalid:51820" in client.to_wg_quick()


def test_a_resolvable_first_name_is_the_peers_endpoint():
    client = _token(["vpn.example:51820", "192.0.2.2:51820"])
    config = client.to_config(resolver=lambda host, port: ("10.9.0.1", port))
    assert config.peers[0].endpoint == ("10.9.0.1", 51820)
    assert config.peers[0].endpoint_text == "vpn.example:51820"


def test_failover_tasks_only_for_a_token_with_one_peer():
    config = _token(["192.0.2.1:51820"]).to_config()
    assert len(failover_tasks(config, ["192.0.2.1:51820"])) == 1
    assert failover_tasks(config, []) == []  # a wg-quick file


# -- the detection rule -----------------------------------------------------------------------
class Counters:
    """A peer's counters over time, looked at every WATCH_INTERVAL by a PathWatch."""

    def __init__(self) -> None:
        self.now = 100.0
        self.rx = self.tx = 0
        self.handshake: float | None = 90.0
        self.watch = PathWatch(self.now)
        self.verdicts: list[tuple[float, Verdict]] = []

    def run(self, seconds: float, *, send: int = 0, receive: int = 0) -> None:
        """Each look: ``send`` more bytes sent, ``receive`` more received."""
        for _ in range(round(seconds / WATCH_INTERVAL)):
            self.now += WATCH_INTERVAL
            self.tx += send
            self.rx += receive
            verdict = self.watch.look(self.rx, self.tx, self.handshake, self.now)
            if verdict is not None:
                self.verdicts.append((self.now - 100.0, verdict))


def test_traffic_that_is_answered_is_never_probed():
    peer = Counters()
    peer.run(60, send=500, receive=500)
    assert peer.verdicts == []


def test_an_idle_tunnel_and_lone_keepalives_are_never_probed():
    peer = Counters()
    peer.run(30)
    for _ in range(5):  # a persistent keepalive every 25 s, never answered
        peer.run(WATCH_INTERVAL, send=KEEPALIVE_SIZE)
        peer.run(25)
    assert peer.verdicts == []


def test_sending_without_answer_probes_after_4_s_and_switches_3_s_later():
    peer = Counters()
    peer.run(10, send=500, receive=500)
    peer.run(15, send=500)  # the path is cut at 10 s
    # Looks every 0.5 s: the first tx more than 4 s after the last rx (10.0) is at 14.5.
    assert peer.verdicts[:2] == [(14.5, Verdict.PROBE), (14.5 + PROBE_TIMEOUT, Verdict.SWITCH)]


def test_a_probe_that_is_answered_does_not_switch_and_probes_stay_4_s_apart():
    peer = Counters()
    peer.run(2, send=500, receive=500)
    peer.run(4.5, send=500)  # a resource that does not answer
    assert peer.verdicts == [(6.5, Verdict.PROBE)]
    answered = 0
    for _ in range(40):  # 20 s more: each probe's handshake completes (the gateway is there)
        if len(peer.verdicts) > answered:
            answered = len(peer.verdicts)
            peer.handshake = peer.now
        peer.run(WATCH_INTERVAL, send=500)
    probes = [at for at, verdict in peer.verdicts if verdict is Verdict.PROBE]
    assert Verdict.SWITCH not in [verdict for _, verdict in peer.verdicts]
    assert len(probes) >= 4
    assert all(b - a >= SUSPECT_AFTER for a, b in itertools.pairwise(probes))


def test_after_a_switch_the_new_endpoint_gets_the_full_time():
    peer = Counters()
    peer.run(4.5 + PROBE_TIMEOUT, send=500)
    assert peer.verdicts[-1][1] is Verdict.SWITCH
    switched_at = peer.verdicts[-1][0]
    peer.watch.restart(peer.now)
    peer.verdicts.clear()
    peer.run(10, send=500)
    assert peer.verdicts[0] == (switched_at + 4.5, Verdict.PROBE)


# -- the failover task ------------------------------------------------------------------------
@dataclass
class FakeDevice:
    """The gateway peer's counters; retarget() recorded (and the endpoint moved)."""

    endpoint: Endpoint | None
    rx: int = 0
    tx: int = 0
    handshake: float | None = None
    retargets: list[Endpoint | None] = field(default_factory=list)

    def peer_stats(self) -> list[PeerStats]:
        return [PeerStats(GATEWAY_KEY, self.endpoint, self.handshake, self.rx, self.tx, (), 25)]

    def retarget(self, public_key: bytes, endpoint: Endpoint | None = None) -> None:
        assert public_key == GATEWAY_KEY
        self.retargets.append(endpoint)
        if endpoint is not None:
            self.endpoint = endpoint


class FakeResolver:
    """Names -> addresses; a name missing from ``names`` does not resolve."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> Endpoint:
        self.calls.append(host)
        if host[0].isdigit():
            return host, port
        if host not in self.names:
            raise ResolveError(host, "no such name")
        return self.names[host], port


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _steps(failover: EndpointFailover, device: FakeDevice, clock: Clock, seconds: float,
                 *, send: int = 0, receive: int = 0) -> None:  # fmt: skip
    for _ in range(round(seconds / WATCH_INTERVAL)):
        clock.now += WATCH_INTERVAL
        device.tx += send
        device.rx += receive
        await failover.step(device)


@pytest.mark.anyio
async def test_a_cut_path_moves_to_the_next_endpoint_resolved_again_then_wraps_around(caplog):
    resolver = FakeResolver({"vpn1.example": "10.0.0.1", "vpn2.example": "10.0.0.2"})
    clock = Clock()
    device = FakeDevice(("10.0.0.1", 51820))
    failover = EndpointFailover(
        GATEWAY_KEY,
        ["vpn1.example:51820", "vpn2.example:51820", "10.0.0.3:51820"],
        address=("10.0.0.1", 51820),
        resolver=resolver,
        clock=clock,
    )
    caplog.set_level(logging.INFO, logger="tunplug.endpoints")
    await _steps(failover, device, clock, 10, send=500, receive=500)
    assert device.retargets == []
    await _steps(failover, device, clock, 8, send=500)  # cut at 10 s
    # A probe on the current endpoint, then the switch (10 + 4.5 + 3 = 17.5 s).
    assert device.retargets == [None, ("10.0.0.2", 51820)]
    assert resolver.calls == ["vpn2.example"]
    assert (
        "endpoint vpn1.example:51820 stopped answering: trying 10.0.0.2:51820 "
        "(vpn2.example:51820)" in caplog.text
    )
    # The second endpoint's path is cut too: the third, then the first again, re-resolved
    # (the name moved meanwhile).
    resolver.names["vpn1.example"] = "10.0.0.9"
    await _steps(failover, device, clock, 16, send=500)
    assert device.retargets[2:] == [None, ("10.0.0.3", 51820), None, ("10.0.0.9", 51820)]
    assert "endpoint vpn2.example:51820 stopped answering: trying 10.0.0.3:51820" in caplog.text
    assert "endpoint 10.0.0.3:51820 stopped answering: trying 10.0.0.9:51820 (vpn1" in caplog.text
    # Answers again: it stays.
    await _steps(failover, device, clock, 20, send=500, receive=500)
    assert len(device.retargets) == 6


@pytest.mark.anyio
async def test_an_endpoint_whose_name_does_not_resolve_at_a_switch_is_skipped(caplog):
    resolver = FakeResolver({})
    clock = Clock()
    device = FakeDevice(("10.0.0.1", 51820))
    failover = EndpointFailover(
        GATEWAY_KEY,
        ["10.0.0.1:51820", "gone.invalid:51820", "10.0.0.3:51820"],
        address=("10.0.0.1", 51820),
        resolver=resolver,
        clock=clock,
    )
    await _steps(failover, device, clock, 8, send=500)
    assert device.retargets == [None, ("10.0.0.3", 51820)]
    assert resolver.calls == ["gone.invalid", "10.0.0.3"]


@pytest.mark.anyio
async def test_a_name_that_does_not_resolve_at_start_is_retried_every_2_s(caplog):
    resolver = FakeResolver({})
    clock = Clock()
    device = FakeDevice(None)
    failover = EndpointFailover(
        GATEWAY_KEY, ["vpn.invalid:51820"], address=None, resolver=resolver, clock=clock
    )
    caplog.set_level(logging.INFO, logger="tunplug.endpoints")
    await _steps(failover, device, clock, 10, send=0)
    assert len(resolver.calls) == 10 / RESOLVE_RETRY
    assert device.retargets == []
    assert "cannot resolve" not in caplog.text  # the start already said so (to_config)
    await _steps(failover, device, clock, RESOLVE_LOG_INTERVAL)
    warnings = [r for r in caplog.records if "cannot resolve vpn.invalid" in r.message]
    assert len(warnings) == 1 and "retrying every 2 s" in warnings[0].message
    resolver.names["vpn.invalid"] = "10.0.0.5"
    await _steps(failover, device, clock, RESOLVE_RETRY)
    assert device.retargets == [("10.0.0.5", 51820)]
    assert "connecting to 10.0.0.5:51820 (vpn.invalid:51820)" in caplog.text
    # From now on it is watched like any endpoint, and the name is not looked up again.
    calls = len(resolver.calls)
    await _steps(failover, device, clock, 10, send=500, receive=500)
    assert len(resolver.calls) == calls and device.retargets == [("10.0.0.5", 51820)]


# -- helpers ----------------------------------------------------------------------------------
def _token(endpoints: list[str]) -> token.ClientToken:
    return token.ClientToken(
        name="laptop",
        gateway_key=Keys.generate().public,
        endpoints=endpoints,
        private_key=Keys.generate().private,
        addresses=["100.64.0.2/32"],
        routes=["10.0.0.0/8"],
    )


def _failing_resolver(host: str, port: int) -> Endpoint:
    raise ResolveError(host, "no such name")
