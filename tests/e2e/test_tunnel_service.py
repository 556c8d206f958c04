"""The tunnel service as a GUI user sees it: a real tunnel in namespaces behind the socket.

Side b of an interop topology runs a tunplug peer (the "gateway"); the service runs in side a's
namespace with its socket in a temporary directory. The test process is the GUI (root, so a
member): it talks to the socket directly, through ``tunplug ctl``/``tunplug status``, and
through the stdlib-only example in ``examples/tunplug-gui-example``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunplug import token
from tunplug.service import protocol as p
from tunplug.service.client import ServiceClient, ServiceError
from tunplug.testing.interop import TUNNEL, UNDERLAY, PeerSpec, Topology, topology
from tunplug.testing.netns import NetNS

BIN = Path(sys.executable).parent
SERVICE = str(BIN / "tunplug-tunnel-service")
TUNPLUG = str(BIN / "tunplug")
EXAMPLE = Path(__file__).parents[2] / "examples" / "tunplug-gui-example" / "tui.py"
UNIT = Path(__file__).parents[2] / "packaging" / "systemd" / "tunplug-tunnel-service.service"
INTERFACE = "tpsvc0"


def gui_token(net: Topology, name: str = "laptop") -> str:
    return token.encode(
        token.ClientToken(
            name=name,
            gateway_key=net.b.keys.public,
            endpoints=[f"{UNDERLAY['b'][0]}:51820"],
            private_key=net.a.keys.private,
            addresses=[f"{TUNNEL['a'][0]}/24"],
            routes=[f"{TUNNEL['b'][0]}/32"],
            persistent_keepalive=0,
        )
    )


def network_state(ns: NetNS) -> list[str]:
    """Links (name and flags), routes of every table and rules, link-local routes left out."""
    links = [" ".join(line.split()[:3]) for line in ns.run("ip", "-o", "link").stdout.splitlines()]
    return sorted(
        line
        for line in links
        + ns.run("ip", "-4", "route", "show", "table", "all").stdout.splitlines()
        + ns.run("ip", "-6", "route", "show", "table", "all").stdout.splitlines()
        + ns.run("ip", "rule").stdout.splitlines()
        if "fe80::" not in line
    )


class Service:
    """``tunplug-tunnel-service run`` in side a's namespace."""

    def __init__(self, net: Topology, workdir: Path) -> None:
        self.net = net
        self.ns = net.a.ns
        self.workdir = workdir
        self.socket = workdir / "run" / "tunnel.sock"
        self.token_path = workdir / "token"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.output = self.workdir / f"service-{time.monotonic_ns()}.out"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNPLUG_")}
        env["TUNPLUG_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        with self.output.open("wb") as out:
            self.process = self.ns.popen(
                SERVICE, "run", "--socket", str(self.socket), "--group", "root",
                "--token-path", str(self.token_path), "--state-dir", str(self.workdir / "state"),
                "--log-dir", str(self.workdir / "logs"), "--dns-control", "disabled",
                "--interface", INTERFACE, stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while "listening on" not in self.text():
            if self.process.poll() is not None:
                raise AssertionError(f"service exited {self.process.returncode}:\n{self.text()}")
            assert time.monotonic() < deadline, self.text()
            time.sleep(0.05)

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(30)
        self.process = None
        return code

    def client(self) -> ServiceClient:
        return ServiceClient(self.socket, name="e2e")

    def ctl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TUNPLUG, "--log-level", "error", *args[:1], "--socket", str(self.socket), *args[1:]],
            capture_output=True, text=True, timeout=60, check=False, input=stdin,
        )  # fmt: skip


@pytest.fixture
def net() -> Iterator[Topology]:
    with topology("tunplug", "tunplug") as net:
        net.b.start(PeerSpec(public_key=net.a.keys.public, allowed_ips=(f"{TUNNEL['a'][0]}/32",)))
        yield net


@pytest.fixture
def service(net: Topology, tmp_path: Path) -> Iterator[Service]:
    service = Service(net, tmp_path)
    yield service
    if service.process is not None:
        service.stop()


def wait_for(client: ServiceClient, kind: type[p.Message], timeout: float = 20) -> p.Message:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {kind.__name__} in {timeout} s"
        try:
            event = client.next_event(remaining)
        except TimeoutError:
            continue
        if isinstance(event, kind):
            return event


def ping(net: Topology) -> None:
    result = net.ping("a", TUNNEL["b"][0], count=3)
    assert result.returncode == 0, result.stdout + result.stderr


def link_exists(ns: NetNS) -> bool:
    return ns.run("ip", "link", "show", INTERFACE, check=False).returncode == 0


@pytest.mark.root
def test_a_member_connects_sees_traffic_in_the_stats_and_disconnects_cleanly(net, service):
    before = network_state(service.ns)
    service.start()
    secret = gui_token(net)
    with service.client() as gui:
        assert gui.welcome.protocol_version == p.PROTOCOL_VERSION
        gui.request(p.Subscribe())
        gui.request(p.Connect(token=secret))
        ready = wait_for(gui, p.TunnelReady)
        assert ready == p.TunnelReady(interface=INTERFACE, addresses=[f"{TUNNEL['a'][0]}/24"])
        assert link_exists(service.ns)
        first = wait_for(gui, p.StatsUpdate)
        ping(net)
        later = wait_for(gui, p.StatsUpdate)
        assert isinstance(first, p.StatsUpdate) and isinstance(later, p.StatsUpdate)
        peer = later.peers[0]
        assert peer.public_key == net.b.keys.public
        assert peer.endpoint == f"{UNDERLAY['b'][0]}:51820"
        assert peer.rx_bytes > first.peers[0].rx_bytes and peer.tx_bytes > first.peers[0].tx_bytes
        assert peer.latest_handshake is not None and abs(peer.latest_handshake - time.time()) < 30
        # tunplug status: like wg show, and as JSON.
        shown = service.ctl("status")
        assert shown.returncode == 0, shown.stderr
        assert f"interface: {INTERFACE}\n  state: connected (GUI)\n  client: laptop" in shown.stdout
        assert f"peer: {net.b.keys.public}" in shown.stdout
        assert "latest handshake: " in shown.stdout and "latest handshake: never" not in (
            shown.stdout
        )
        as_json = json.loads(service.ctl("status", "--json").stdout)
        assert as_json["peers"][0]["rx_bytes"] >= peer.rx_bytes
        gui.request(p.Disconnect())
        assert not link_exists(service.ns)
        assert wait_for(gui, p.Disconnected) == p.Disconnected()
    assert network_state(service.ns) == before
    assert service.stop() == 0
    logs = (service.workdir / "logs" / "tunplug-tunnel-service.log").read_text()
    assert secret not in logs + service.text() and net.a.keys.private not in logs


@pytest.mark.root
def test_gui_clients_come_and_go_and_misbehave_while_the_tunnel_stays(net, service):
    service.start()
    token_file = service.workdir / "gui.token"
    token_file.write_text(gui_token(net))
    token_file.chmod(0o600)
    # The stdlib-only example connects, prints one frame and exits: the tunnel stays.
    shown = subprocess.run(
        [sys.executable, str(EXAMPLE), "--socket", str(service.socket), "--once",
         "--connect", str(token_file)], capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "state:     connected" in shown.stdout and f"connected on {INTERFACE}" in shown.stdout
    assert f"peer {net.b.keys.public}" in shown.stdout
    ping(net)
    # A watcher killed with SIGKILL: the service notices nothing but a closed connection.
    watcher = subprocess.Popen(
        [TUNPLUG, "ctl", "--socket", str(service.socket), "watch"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline() == f"interface: {INTERFACE}\n"
    finally:
        watcher.kill()
        watcher.wait(10)
        if watcher.stdout:
            watcher.stdout.close()
    # Broken frames: answered, and the connection, the service and the tunnel go on.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(10)
        raw.connect(str(service.socket))
        frames = [b'{"type": "Hello", "id": 1, "protocol_version": 1}', b"{oops", b"[]",
                  b'{"type": "Connect", "id": 2}']  # fmt: skip
        raw.sendall(b"".join(struct.pack(">I", len(f)) + f for f in frames))
        raw.sendall(struct.pack(">I", p.MAX_MESSAGE_SIZE * 4) + b"x" * (p.MAX_MESSAGE_SIZE * 4))
        status = b'{"type": "Status", "id": 3}'
        raw.sendall(struct.pack(">I", len(status)) + status + struct.pack(">I", 50) + b"{")
        raw.shutdown(socket.SHUT_WR)  # the last message is cut short
        replies = []
        buffer = b""
        while chunk := raw.recv(65536):
            buffer += chunk
        while buffer:
            (size,) = struct.unpack(">I", buffer[:4])
            replies.append(json.loads(buffer[4 : 4 + size]))
            buffer = buffer[4 + size :]
    kinds = [(r["type"], r.get("code")) for r in replies if r["type"] != "StatsUpdate"]
    assert kinds == [
        ("Welcome", None), ("Error", "malformed_message"), ("Error", "malformed_message"),
        ("Error", "invalid_message"), ("Error", "message_too_large"), ("StatusReply", None),
        ("Error", "truncated_message"),
    ]  # fmt: skip
    assert replies[-2]["status"]["state"] == "connected"
    ping(net)
    assert service.ctl("ctl", "status").returncode == 0
    # Any client may take it down: here the example.
    down = subprocess.run(
        [sys.executable, str(EXAMPLE), "--socket", str(service.socket), "--once", "--disconnect"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert down.returncode == 0 and "state:     disconnected" in down.stdout, down.stderr
    assert not link_exists(service.ns)


@pytest.mark.root
def test_sigterm_tells_subscribers_first_then_removes_tunnel_and_socket(net, service):
    before = network_state(service.ns)
    service.start()
    with service.client() as gui:
        gui.request(p.Subscribe())
        gui.request(p.Connect(token=gui_token(net)))
        wait_for(gui, p.TunnelReady)
        ping(net)
        assert service.process is not None
        service.process.send_signal(signal.SIGTERM)
        seen = []
        while True:
            try:
                seen.append(gui.next_event(10))
            except ServiceError as exc:
                assert exc.code == "closed"
                break
        kinds = [type(event).__name__ for event in seen if not isinstance(event, p.StatsUpdate)]
        assert kinds == ["TerminatingGracefully", "Disconnected"]
    assert service.process.wait(30) == 0
    service.process = None
    assert not service.socket.exists()
    assert network_state(service.ns) == before
    assert "received SIGTERM: shutting down" in service.text()


@pytest.mark.root
def test_a_token_file_connects_by_itself_and_guis_may_only_watch(net, service):
    service.token_path.write_text(gui_token(net, name="fleet-laptop") + "\n")
    service.token_path.chmod(0o600)
    service.start()
    with service.client() as gui:
        deadline = time.monotonic() + 20
        while (status := gui.status()).state != "connected":
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert status.managed_by == "token_file" and status.client_name == "fleet-laptop"
        ping(net)
        with pytest.raises(ServiceError) as refused:
            gui.request(p.Connect(token=gui_token(net)))
        assert refused.value.code == "managed_by_token_file"
        assert f"managed by the token file {service.token_path}" in str(refused.value)
        assert gui.status().state == "connected"
    refused_ctl = service.ctl("ctl", "disconnect")
    assert refused_ctl.returncode == 1 and "takes precedence over GUIs" in refused_ctl.stderr
    ping(net)
    assert service.stop() == 0
    assert not link_exists(service.ns)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_shipped_unit_passes_systemd_analyze_verify(tmp_path):
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/tunplug-tunnel-service", SERVICE))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in result.stderr.splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not problems, result.stderr
    text = UNIT.read_text()
    for setting in (
        "Type=notify",
        "RuntimeDirectory=dev.tunplug.client",
        "AmbientCapabilities=CAP_NET_ADMIN",
        "TUNPLUG_SERVICE_GROUP=tunplug-client",
    ):
        assert setting in text  # fmt: skip
