"""WireGuard endpoints in throw-away namespaces: tunplug and wireguard-go, driven alike.

Who uses it: the end-to-end tests (``tests/e2e``), the live demo and the benchmarks. Two
namespaces are joined by a veth "underlay"; each runs one endpoint (a ``tunplug-headless-client``
process, or a ``wireguard-go`` configured with ``wg``), and traffic goes only between the
namespaces' own addresses. Needs root, iproute2, and for the wireguard-go side the
``wireguard-tools`` package and a ``wireguard-go``: Debian's on ``PATH`` by default, or any build
given as ``wggo_binary`` (the benchmarks pass Debian 13's, see ``benchmarks/wggo.py``).

Addresses: underlay 10.201.0.1/24 (side a), 10.201.0.2/24 (side b), fd01::1/64, fd01::2/64;
tunnel 10.202.0.1/24 and fd02::1/64 (side a), 10.202.0.2/24 and fd02::2/64 (side b).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunplug.testing.netns import NetNS, veth_pair
from tunplug.wireguard.keys import format_key

Kind = Literal["tunplug", "wireguard-go"]

UNDERLAY = {"a": ("10.201.0.1", "fd01::1"), "b": ("10.201.0.2", "fd01::2")}
TUNNEL = {"a": ("10.202.0.1", "fd02::1"), "b": ("10.202.0.2", "fd02::2")}
LISTEN_PORT = 51820
WIREGUARD_RUN_DIR = Path("/var/run/wireguard")


@dataclass(slots=True)
class Keys:
    """A key pair in ``wg``'s base64 form (made with tunplug's default crypto backend)."""

    private: str
    public: str

    @classmethod
    def generate(cls) -> Keys:
        from tunplug.testing.crypto import crypto_backend

        crypto = crypto_backend()
        private = crypto.generate_private_key()
        return cls(format_key(private), format_key(crypto.public_key(private)))


@dataclass(slots=True)
class PeerSpec:
    """What one endpoint knows about the other."""

    public_key: str
    allowed_ips: tuple[str, ...]
    endpoint: str | None = None
    preshared_key: str | None = None
    persistent_keepalive: int | None = None


@dataclass(eq=False)
class Endpoint(ABC):
    """One WireGuard endpoint living in ``ns``."""

    ns: NetNS
    side: Literal["a", "b"]
    workdir: Path
    keys: Keys = field(default_factory=Keys.generate)
    ifname: str = field(default_factory=lambda: "wg" + secrets.token_hex(3))
    listen_port: int = LISTEN_PORT
    peer: PeerSpec | None = None
    process: subprocess.Popen[bytes] | None = None

    kind: Kind = "tunplug"

    @property
    def tunnel_v4(self) -> str:
        return TUNNEL[self.side][0]

    @property
    def tunnel_v6(self) -> str:
        return TUNNEL[self.side][1]

    @abstractmethod
    def start(self, peer: PeerSpec) -> None:
        """Start the endpoint and return once its interface is up and configured."""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Signal the endpoint's process and wait; return its exit code (None: not running).

        :raises RuntimeError: it ignored ``sig`` for ``timeout`` seconds (it is then killed).
        """
        if self.process is None:
            return None
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise RuntimeError(f"{self.kind} ignored signal {sig} for {timeout} s") from None
        return process.returncode

    def restart(self) -> None:
        """Stop, then start afresh with the same keys and peer (a new process)."""
        assert self.peer is not None
        self.stop()
        self.start(self.peer)

    def peer_endpoint(self) -> str | None:
        """The endpoint this side currently sends to, as ``host:port`` (None: unknown)."""
        raise NotImplementedError


@dataclass(eq=False)
class TunplugEndpoint(Endpoint):
    """``tunplug-headless-client standalone --config`` in the namespace."""

    kind: Kind = "tunplug"
    env: Mapping[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    started: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"tunplug-{self.side}-{self.started}.log"

    def start(self, peer: PeerSpec) -> None:
        self.peer = peer
        self.started += 1
        config = self.workdir / f"tunplug-{self.side}.conf"
        lines = [
            "[Interface]",
            f"PrivateKey = {self.keys.private}",
            f"Address = {self.tunnel_v4}/24, {self.tunnel_v6}/64",
            f"ListenPort = {self.listen_port}",
            "",
            "[Peer]",
            f"PublicKey = {peer.public_key}",
            f"AllowedIPs = {', '.join(peer.allowed_ips)}",
        ]
        if peer.endpoint:
            lines.append(f"Endpoint = {peer.endpoint}")
        if peer.preshared_key:
            lines.append(f"PresharedKey = {peer.preshared_key}")
        if peer.persistent_keepalive:
            lines.append(f"PersistentKeepalive = {peer.persistent_keepalive}")
        config.write_text("\n".join(lines) + "\n")
        config.chmod(0o600)
        client = Path(sys.executable).with_name("tunplug-headless-client")
        env = {
            **os.environ,
            "TUNPLUG_DISABLE_PLUGIN_AUTOLOAD": "1",
            # Never the host's /var/lib or resolver: state in the work directory, DNS off.
            "TUNPLUG_STATE_DIR": str(self.workdir / f"state-{self.side}"),
            "TUNPLUG_DNS_CONTROL": "disabled",
            **self.env,
        }
        with self.log_path.open("wb") as log:
            self.process = self.ns.popen(
                str(client), "standalone", "--config", str(config), "--interface", self.ifname,
                *self.extra_args, stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "tunnel is up on" in self.log():
                return
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"tunplug exited with {self.process.returncode}:\n{self.log()[-3000:]}"
                )
            time.sleep(0.05)
        raise RuntimeError(f"tunplug did not come up in {timeout} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass(eq=False)
class WireguardGoEndpoint(Endpoint):
    """``wireguard-go`` in the foreground, configured with ``wg set``."""

    kind: Kind = "wireguard-go"
    #: The program to run: a name looked up on ``PATH`` or a path (another build, e.g. a newer
    #: Debian's in a cache directory).
    binary: str = "wireguard-go"

    def start(self, peer: PeerSpec) -> None:
        self.peer = peer
        socket_path = WIREGUARD_RUN_DIR / f"{self.ifname}.sock"
        log = (self.workdir / f"wireguard-go-{self.side}.log").open("ab")
        try:
            self.process = self.ns.popen(
                "env", "LOG_LEVEL=error", self.binary, "-f", self.ifname,
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        finally:
            log.close()
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.binary} did not start (exit {self.process.poll()})")
            time.sleep(0.02)
        key_file = self.workdir / f"wg-{self.side}.key"
        key_file.write_text(self.keys.private + "\n")
        key_file.chmod(0o600)
        args = ["wg", "set", self.ifname, "listen-port", str(self.listen_port),
                "private-key", str(key_file), "peer", peer.public_key,
                "allowed-ips", ",".join(peer.allowed_ips)]  # fmt: skip
        if peer.endpoint:
            args += ["endpoint", peer.endpoint]
        if peer.preshared_key:
            psk_file = self.workdir / f"wg-{self.side}.psk"
            psk_file.write_text(peer.preshared_key + "\n")
            psk_file.chmod(0o600)
            args += ["preshared-key", str(psk_file)]
        if peer.persistent_keepalive:
            args += ["persistent-keepalive", str(peer.persistent_keepalive)]
        self.ns.run(*args)
        self.ns.run("ip", "addr", "add", f"{self.tunnel_v4}/24", "dev", self.ifname)
        self.ns.run("ip", "addr", "add", f"{self.tunnel_v6}/64", "dev", self.ifname, "nodad")
        self.ns.run("ip", "link", "set", self.ifname, "mtu", "1420", "up")

    def peer_endpoint(self) -> str | None:
        out = self.ns.run("wg", "show", self.ifname, "endpoints").stdout.split()
        return out[1] if len(out) > 1 and out[1] != "(none)" else None

    def set_listen_port(self, port: int) -> None:
        """Rebind to another UDP port (roaming by port: the peer must follow)."""
        self.ns.run("wg", "set", self.ifname, "listen-port", str(port))
        self.listen_port = port

    def latest_handshake(self) -> int:
        out = self.ns.run("wg", "show", self.ifname, "latest-handshakes").stdout.split()
        return int(out[1]) if len(out) > 1 else 0


@dataclass(eq=False)
class Topology:
    """Two namespaces joined by veth, one endpoint in each."""

    a: Endpoint
    b: Endpoint

    def connect(
        self,
        *,
        initiator: Literal["a", "b"] = "a",
        preshared_key: bool = False,
        persistent_keepalive: int | None = None,
    ) -> None:
        """Start both endpoints; the ``initiator`` knows the other's endpoint, the other not."""
        psk = format_key(secrets.token_bytes(32)) if preshared_key else None
        for me, other in ((self.b, self.a), (self.a, self.b)):  # responder first
            endpoint = (
                f"{UNDERLAY[other.side][0]}:{other.listen_port}" if me.side == initiator else None
            )
            me.start(
                PeerSpec(
                    public_key=other.keys.public,
                    allowed_ips=(f"{other.tunnel_v4}/32", f"{other.tunnel_v6}/128"),
                    endpoint=endpoint,
                    preshared_key=psk,
                    persistent_keepalive=persistent_keepalive if me.side == initiator else None,
                )
            )

    def ping(
        self,
        src: Literal["a", "b"],
        dst_address: str,
        *,
        count: int = 3,
        interval: float = 0.2,
        wait: float = 2.0,
    ) -> subprocess.CompletedProcess[str]:
        ns = self.a.ns if src == "a" else self.b.ns
        return ns.run("ping", "-c", str(count), "-i", str(interval), "-W", str(wait),
                      dst_address, check=False, timeout=count * (interval + wait) + 10)  # fmt: skip

    def iperf3(
        self,
        *,
        client: Literal["a", "b"] = "a",
        seconds: float = 3.0,
        reverse: bool = False,
        streams: int = 1,
        port: int = 5201,
    ) -> dict[str, Any]:
        """Run iperf3 (server on the other side's tunnel address); return its JSON report."""
        server_side = self.b if client == "a" else self.a
        client_side = self.a if client == "a" else self.b
        server = server_side.ns.popen(
            "iperf3", "-s", "-1", "-B", server_side.tunnel_v4, "-p", str(port),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(0.3)
            args = ["iperf3", "-c", server_side.tunnel_v4, "-p", str(port), "-t", str(seconds),
                    "-P", str(streams), "-J"]  # fmt: skip
            if reverse:
                args.append("-R")
            result = client_side.ns.run(*args, check=False, timeout=seconds + 30)
            report: dict[str, Any] = json.loads(result.stdout or "{}")
            if result.returncode != 0 or "error" in report:
                raise RuntimeError(f"iperf3 failed: {report.get('error') or result.stderr}")
            return report
        finally:
            if server.poll() is None:
                server.terminate()
            server.wait(10)

    def move(self, side: Literal["a", "b"], new_v4: str) -> None:
        """Change one side's underlay IPv4 address (roaming): the old one is removed."""
        ns = self.a.ns if side == "a" else self.b.ns
        old = UNDERLAY[side][0]
        # Delete first: removing a primary address also removes its subnet's secondaries.
        ns.run("ip", "addr", "del", f"{old}/24", "dev", f"veth-{side}")
        ns.run("ip", "addr", "add", f"{new_v4}/24", "dev", f"veth-{side}")


def _endpoint(
    kind: Kind,
    ns: NetNS,
    side: Literal["a", "b"],
    workdir: Path,
    tunplug_env: Mapping[str, str],
    tunplug_args: tuple[str, ...],
    wggo_binary: str,
) -> Endpoint:
    if kind == "tunplug":
        return TunplugEndpoint(ns, side, workdir, env=tunplug_env, extra_args=tunplug_args)
    return WireguardGoEndpoint(ns, side, workdir, binary=wggo_binary)


@contextmanager
def topology(
    kind_a: Kind,
    kind_b: Kind,
    *,
    tunplug_env: Mapping[str, str] | None = None,
    tunplug_args: tuple[str, ...] = (),
    wggo_binary: str | os.PathLike[str] = "wireguard-go",
) -> Iterator[Topology]:
    """Two fresh namespaces with endpoints of the given kinds; everything removed on exit.

    ``tunplug_env`` and ``tunplug_args`` go to every tunplug endpoint, ``wggo_binary`` (a name
    on ``PATH`` or a path) is what every wireguard-go endpoint runs.
    """
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tunplug-e2e-")))
        ns_a, ns_b = stack.enter_context(NetNS()), stack.enter_context(NetNS())
        veth_pair(ns_a, ns_b, "10.201.0.1/24", "10.201.0.2/24", name_a="veth-a", name_b="veth-b")
        for ns, side in ((ns_a, "a"), (ns_b, "b")):
            ns.run("ip", "addr", "add", f"{UNDERLAY[side][1]}/64", "dev", f"veth-{side}", "nodad")
        env = dict(tunplug_env or {})
        binary = os.fspath(wggo_binary)
        a = _endpoint(kind_a, ns_a, "a", workdir, env, tunplug_args, binary)
        b = _endpoint(kind_b, ns_b, "b", workdir, env, tunplug_args, binary)
        stack.callback(a.stop)
        stack.callback(b.stop)
        yield Topology(a, b)
