"""The endpoints a tunnel is measured between (tunplug on either data path, two wireguard-go
builds), the named pairs of them, and a tunnel between two throw-away namespaces for a pair.

Who calls it: ``throughput.py`` and its modules (:mod:`benchlib.throughput`), ``flood.py``,
and :mod:`benchlib.facts` (the kinds name the wireguard-go builds in a report).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from wggo import WireguardGo, fetch, system_wireguard_go

from benchlib.lifecycle import host_problem
from tunplug.testing.interop import Kind, Topology, topology

#: What runs on one side of a tunnel.
EndpointKind = Literal["wggo13", "wggo12", "tunplug-native", "tunplug-python"]
WGGO_KINDS: tuple[EndpointKind, ...] = ("wggo13", "wggo12")
INTEROP_KINDS: dict[EndpointKind, Kind] = {
    "wggo13": "wireguard-go",
    "wggo12": "wireguard-go",
    "tunplug-native": "tunplug",
    "tunplug-python": "tunplug",
}
#: The environment that makes a tunplug endpoint one kind or the other. An explicit data path
#: fails at start-up when it cannot run, instead of quietly falling back as ``auto`` would.
TUNPLUG_KIND_ENV: dict[EndpointKind, dict[str, str]] = {
    "tunplug-native": {"TUNPLUG_DATA_PATH": "native"},
    "tunplug-python": {"TUNPLUG_DATA_PATH": "python"},
}

#: Pair names for ``--only``, in table order; the first is the anchor, the second the old one.
PAIRS: dict[str, tuple[EndpointKind, EndpointKind]] = {
    "wggo13-wggo13": ("wggo13", "wggo13"),
    "wggo12-wggo12": ("wggo12", "wggo12"),
    "native-native": ("tunplug-native", "tunplug-native"),
    "native-wggo13": ("tunplug-native", "wggo13"),
    "python-python": ("tunplug-python", "tunplug-python"),
}
ANCHOR = "wggo13-wggo13"
OLD_ANCHOR = "wggo12-wggo12"
PAIR_LABELS = {pair: f"{a}<->{b}" for pair, (a, b) in PAIRS.items()}


@dataclass(frozen=True, slots=True)
class Test:
    """One iperf3 invocation: side a is always the iperf3 client."""

    name: str
    reverse: bool = False
    streams: int = 1


@dataclass(frozen=True, slots=True)
class Setup:
    """One topology (pair and tunplug settings) and the tests run through it."""

    pair: str
    tests: tuple[Test, ...]
    queues: int | None = None  # None: no tunplug endpoint

    @property
    def kinds(self) -> tuple[EndpointKind, EndpointKind]:
        return PAIRS[self.pair]

    @property
    def interop_kinds(self) -> tuple[Kind, Kind]:
        return INTEROP_KINDS[self.kinds[0]], INTEROP_KINDS[self.kinds[1]]

    @property
    def wggo_kind(self) -> EndpointKind | None:
        """The wireguard-go build of this pair (one per pair), None: no wireguard-go in it."""
        wggo = {kind for kind in self.kinds if kind in WGGO_KINDS}
        assert len(wggo) <= 1, f"{self.pair}: interop runs one wireguard-go build per topology"
        return wggo.pop() if wggo else None

    @property
    def tunplug_env(self) -> dict[str, str]:
        tunplug = {kind for kind in self.kinds if kind in TUNPLUG_KIND_ENV}
        assert len(tunplug) <= 1, f"{self.pair}: interop gives every tunplug one environment"
        return dict(TUNPLUG_KIND_ENV[tunplug.pop()]) if tunplug else {}

    @property
    def tunplug_args(self) -> tuple[str, ...]:
        return () if self.queues is None else ("--tun-threads", str(self.queues))

    @property
    def label(self) -> str:
        queues = "" if self.queues is None else f" q{self.queues}"
        return PAIR_LABELS[self.pair] + queues


def kinds_in(setups: Sequence[Setup]) -> set[EndpointKind]:
    return {kind for setup in setups for kind in setup.kinds}


def preflight(setups: Sequence[Setup], script: str = "benchmarks/throughput.py") -> str | None:
    """Why the tunnels of ``setups`` cannot be measured here; None: they can."""
    problem = host_problem(script, ("ip", "wg", "iperf3"))
    if problem:
        return problem
    if "tunplug-native" in kinds_in(setups) and not importlib.util.find_spec("tunplug_fastpath"):
        return (
            "the native core (tunplug-fastpath) is not installed: build it, or leave out the "
            "native pairs with --only"
        )
    return None


def wireguard_go_builds(
    setups: Sequence[Setup], cache: Path | None, log: Callable[[str], None] = print
) -> dict[EndpointKind, WireguardGo]:
    """The wireguard-go of every ``wggo*`` kind in the matrix (Debian 13's fetched if needed).

    :raises FetchError: one of them is missing and cannot be fetched.
    """
    builds: dict[EndpointKind, WireguardGo] = {}
    kinds = kinds_in(setups)
    if "wggo13" in kinds:
        builds["wggo13"] = fetch(cache, log=log)
    if "wggo12" in kinds:
        builds["wggo12"] = system_wireguard_go()
    return builds


def tunnel_topology(
    setup: Setup, binaries: Mapping[EndpointKind, Path]
) -> AbstractContextManager[Topology]:
    """Two fresh namespaces with the endpoints of ``setup``'s pair (``binaries``: the
    wireguard-go program of each ``wggo*`` kind); everything removed on exit."""
    wggo = setup.wggo_kind
    return topology(
        *setup.interop_kinds,
        tunplug_env=setup.tunplug_env,
        tunplug_args=setup.tunplug_args,
        wggo_binary=binaries[wggo] if wggo else "wireguard-go",
    )


def handshake(topo: Topology) -> None:
    """Side a initiates; one ping through the tunnel proves the handshake.

    :raises RuntimeError: the ping did not come back.
    """
    topo.connect(initiator="a")
    if "1 received" not in topo.ping("a", topo.b.tunnel_v4, count=1).stdout:
        raise RuntimeError("no handshake: ping through the tunnel failed")
