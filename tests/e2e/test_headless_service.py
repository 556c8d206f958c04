"""The headless client as an operator runs it: token file, --check, --exit, device id, logs,
SIGHUP, DNS restore after SIGKILL, full tunnel, unprivileged with only CAP_NET_ADMIN."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunplug import token
from tunplug.testing.interop import TUNNEL, UNDERLAY, Keys, PeerSpec, Topology, topology
from tunplug.testing.netns import NetNS, veth_pair

CLIENT = str(Path(sys.executable).with_name("tunplug-headless-client"))
RESOURCE_V4 = "10.210.0.2"

pytestmark = pytest.mark.root


def make_token(keys: Keys, server: Keys, routes: list[str], dns: list[str] = ()) -> str:  # type: ignore[assignment]
    return token.encode(
        token.ClientToken(
            name="ci-runner",
            gateway_key=server.public,
            endpoints=[f"{UNDERLAY['b'][0]}:51820"],
            private_key=keys.private,
            addresses=[f"{TUNNEL['a'][0]}/24", f"{TUNNEL['a'][1]}/64"],
            routes=routes,
            dns_servers=dns,
            persistent_keepalive=0,
        )
    )


@pytest.fixture
def server() -> Iterator[Topology]:
    """Side b runs a tunplug server for a client key made by the test (side a's keys)."""
    with topology("tunplug", "tunplug") as net:
        net.b.start(
            PeerSpec(
                public_key=net.a.keys.public,
                allowed_ips=(f"{TUNNEL['a'][0]}/32", f"{TUNNEL['a'][1]}/128"),
            )
        )
        yield net


class Client:
    """``tunplug-headless-client standalone`` in side a's namespace, with its own state dir."""

    def __init__(self, net: Topology, workdir: Path) -> None:
        self.net = net
        self.ns: NetNS = net.a.ns
        self.workdir = workdir
        self.state = workdir / "state"
        self.logs = workdir / "logs"
        self.process: subprocess.Popen[bytes] | None = None

    program: tuple[str, ...] = (CLIENT,)

    def argv(self, *args: str, wrapper: tuple[str, ...] = ()) -> list[str]:
        return [*wrapper, *self.program, "standalone", "--interface", "tpclient0",
                "--state-dir", str(self.state), "--log-dir", str(self.logs), *args]  # fmt: skip

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNPLUG_")}
        return {**env, "TUNPLUG_DISABLE_PLUGIN_AUTOLOAD": "1", **extra}

    def run(self, *args: str, timeout: float = 40, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns.name, *self.argv(*args)],
            capture_output=True, text=True, timeout=timeout, env=self.env(**env), check=False,
        )  # fmt: skip

    def start(self, *args: str, wrapper: tuple[str, ...] = (), **env: str) -> None:
        self.output = self.workdir / f"client-{time.monotonic_ns()}.out"
        with self.output.open("wb") as out:
            self.process = self.ns.popen(
                *self.argv(*args, wrapper=wrapper), stdout=out, stderr=subprocess.STDOUT,
                env=self.env(**env),
            )  # fmt: skip
        self.wait_for("tunnel is up on")

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"client exited {self.process.returncode}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not seen in {timeout} s:\n{self.text()}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(15)
        self.process = None
        return code


def write_private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def net_state(ns: NetNS) -> list[str]:
    """Links, v4/v6 routes of every table, and rules: what a run must leave as it found it.

    Link lines keep name and flags only (counters and qdisc state change with traffic);
    link-local routes are left out (the kernel adds veth's own whenever its DAD finishes).
    """
    links = [" ".join(line.split()[:3]) for line in ns.run("ip", "-o", "link").stdout.splitlines()]
    return sorted(
        line
        for line in links
        + ns.run("ip", "-4", "route", "show", "table", "all").stdout.splitlines()
        + ns.run("ip", "-6", "route", "show", "table", "all").stdout.splitlines()
        + ns.run("ip", "-4", "rule").stdout.splitlines()
        + ns.run("ip", "-6", "rule").stdout.splitlines()
        if "fe80::" not in line
    )


def assert_same_state(before: list[str], after: list[str]) -> None:
    gone = sorted(set(before) - set(after))
    added = sorted(set(after) - set(before))
    assert not gone and not added, f"left behind: {added}; removed: {gone}"


def test_a_token_file_open_to_others_is_refused_with_the_chmod_to_run(server, tmp_path):
    client = Client(server, tmp_path)
    path = write_private(
        tmp_path / "token", make_token(server.a.keys, server.b.keys, ["10.202.0.0/24"]), 0o644
    )
    result = client.run("--token-path", str(path), "--check")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"tunplug-headless-client: error: --token-path: {path} is readable or writable by "
        f"group or others (mode 0644); run: chmod 600 {path}"
    ]
    path.chmod(0o600)
    result = client.run("--token-path", str(path), "--check")
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert f"configuration: token file {path} (client 'ci-runner')" in result.stdout


def test_check_reports_a_bad_configuration_with_exit_2_and_runs_nothing(server, tmp_path):
    client = Client(server, tmp_path)
    before = net_state(client.ns)
    tampered = make_token(server.a.keys, server.b.keys, ["10.202.0.0/24"])
    payload = tampered.split(".")[1]
    tampered = tampered.replace(
        payload, payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    )
    result = client.run("--check", TUNPLUG_TOKEN=tampered)
    assert result.returncode == 2
    assert "token is damaged or was edited" in result.stderr
    assert tampered not in result.stderr + result.stdout
    result = client.run("--check", "--dns-control", "nonsense", TUNPLUG_TOKEN=tampered)
    assert result.returncode == 2
    good = make_token(server.a.keys, server.b.keys, ["10.202.0.0/24"])
    result = client.run("--check", "--dns-control", "nonsense", TUNPLUG_TOKEN=good)
    assert result.returncode == 2
    assert "unknown DNS manager 'nonsense'" in result.stderr
    taken = client.argv("--check")[client.argv("--check").index("--interface") + 1]
    client.ns.run("ip", "link", "add", taken, "type", "veth", "peer", "name", "tpcheckpeer")
    result = client.run("--check", TUNPLUG_TOKEN=good)
    assert result.returncode == 2
    assert f"interface {taken!r} already exists" in result.stderr
    client.ns.run("ip", "link", "del", taken)
    assert_same_state(before, net_state(client.ns))
    assert not client.state.exists(), "--check must not create state"


def test_exit_returns_once_the_handshake_is_done_and_leaves_nothing_behind(server, tmp_path):
    client = Client(server, tmp_path)
    before = net_state(client.ns)
    secret = make_token(server.a.keys, server.b.keys, ["10.202.0.0/24", "fd02::/64"])
    result = client.run("--exit", TUNPLUG_TOKEN=secret)
    assert result.returncode == 0, result.stderr
    assert "connected to every peer" in result.stderr
    assert_same_state(before, net_state(client.ns))
    # The device id was created once with the documented modes, and reused by the next run.
    id_file = client.state / "config" / "device-id"
    device_id = id_file.read_text().strip()
    assert oct(id_file.stat().st_mode & 0o777) == oct(0o640)
    assert oct(id_file.parent.stat().st_mode & 0o777) == oct(0o770)
    assert f"device id {device_id}" in result.stderr
    again = client.run("--exit", TUNPLUG_TOKEN=secret)
    assert again.returncode == 0 and f"device id {device_id}" in again.stderr
    assert "created device id" in result.stderr and "created device id" not in again.stderr
    # Logs went to LOG_DIR too, and never contain the token or the private key.
    log_text = (client.logs / "tunplug-headless-client.log").read_text()
    assert "connected to every peer" in log_text
    for secret_text in (secret, server.a.keys.private):
        assert secret_text not in log_text + result.stderr + again.stderr


def test_exit_fails_with_status_1_when_the_peer_never_answers(server, tmp_path):
    client = Client(server, tmp_path)
    stranger = Keys.generate()  # the server does not know this client
    result = client.run(
        "--exit", "--exit-timeout", "3",
        TUNPLUG_TOKEN=make_token(stranger, server.b.keys, ["10.202.0.0/24"]),
    )  # fmt: skip
    assert result.returncode == 1
    assert "no handshake with every peer within 3 s" in result.stderr


def test_sighup_rereads_the_config_and_keeps_the_device(server, tmp_path):
    client = Client(server, tmp_path)
    peer = server.b.keys.public
    head = f"[Interface]\nPrivateKey = {server.a.keys.private}\nAddress = 10.202.0.1/24\n\n"
    head += f"[Peer]\nPublicKey = {peer}\nEndpoint = {UNDERLAY['b'][0]}:51820\n"
    config = write_private(tmp_path / "wg.conf", head + "AllowedIPs = 10.202.0.2/32\n")
    status_file = tmp_path / "status.json"
    client.start("--config", str(config), "--status-file", str(status_file))
    index = client.ns.run("cat", "/sys/class/net/tpclient0/ifindex").stdout
    assert server.ping("a", TUNNEL["b"][0]).returncode == 0
    # 'tunplug status' shows the running client from its status file, like 'wg show'.
    tunplug = str(Path(sys.executable).with_name("tunplug"))
    time.sleep(1.2)
    shown = subprocess.run([tunplug, "status", "--status-file", str(status_file), "--json"],
                           capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    status = json.loads(shown.stdout)
    assert "tpclient0" in shown.stdout and peer in shown.stdout
    assert status, shown.stdout
    assert "10.203.0.0/24" not in client.ns.run("ip", "route").stdout
    write_private(config, head + "AllowedIPs = 10.202.0.2/32, 10.203.0.0/24\n")
    assert client.process is not None
    client.process.send_signal(signal.SIGHUP)
    client.wait_for("configuration reloaded")
    assert "10.203.0.0/24 dev tpclient0" in client.ns.run("ip", "route").stdout
    assert client.ns.run("cat", "/sys/class/net/tpclient0/ifindex").stdout == index
    assert server.ping("a", TUNNEL["b"][0]).returncode == 0
    # A broken file on SIGHUP is logged and the running configuration stays.
    write_private(config, "[Interface]\nPrivateKey = broken\n")
    client.process.send_signal(signal.SIGHUP)
    client.wait_for("reload failed, still running the previous one")
    assert server.ping("a", TUNNEL["b"][0]).returncode == 0
    assert client.stop() == 0
    assert not status_file.exists()


RESOLV_ORIGINAL = b"# the namespace's own resolver file\nnameserver 127.0.0.53\n"


def test_resolver_file_is_restored_on_sigterm_and_at_the_next_start_after_sigkill(server, tmp_path):
    """DNS with etc-resolv-conf, in a private mount namespace over a temp file."""
    host_resolv = Path("/etc/resolv.conf").read_bytes()
    fake = tmp_path / "resolv.conf"
    fake.write_bytes(RESOLV_ORIGINAL)
    # unshare -m: a private mount namespace where the temp file is /etc/resolv.conf.
    wrapper = ("unshare", "-m", "--propagation", "private", "sh", "-c",
               f"mount --bind {fake} /etc/resolv.conf && exec \"$@\"", "sh")  # fmt: skip
    client = Client(server, tmp_path)
    secret = make_token(server.a.keys, server.b.keys, ["10.202.0.0/24"], dns=["10.202.0.2"])
    args = ("--dns-control", "etc-resolv-conf")
    client.start(*args, wrapper=wrapper, TUNPLUG_TOKEN=secret)
    assert b"nameserver 10.202.0.2" in fake.read_bytes()
    assert client.stop(signal.SIGKILL) == -signal.SIGKILL
    assert b"nameserver 10.202.0.2" in fake.read_bytes(), "a killed run cannot restore"
    client.start(*args, wrapper=wrapper, TUNPLUG_TOKEN=secret)
    assert b"nameserver 10.202.0.2" in fake.read_bytes()
    assert client.stop() == 0
    assert fake.read_bytes() == RESOLV_ORIGINAL
    assert Path("/etc/resolv.conf").read_bytes() == host_resolv


@pytest.fixture
def three_namespaces() -> Iterator[tuple[Topology, NetNS]]:
    """Client (a) and gateway (b) as usual, plus a resource namespace behind the gateway."""
    with topology("tunplug", "tunplug") as net, NetNS() as resource:
        veth_pair(net.b.ns, resource, "10.210.0.1/24", f"{RESOURCE_V4}/24",
                  name_a="veth-res", name_b="veth-gw")  # fmt: skip
        resource.run("ip", "route", "add", "default", "via", "10.210.0.1")
        net.b.ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        net.b.start(PeerSpec(public_key=net.a.keys.public, allowed_ips=(f"{TUNNEL['a'][0]}/32",)))
        yield net, resource


def test_full_tunnel_reaches_a_network_only_the_peer_can_route_to(three_namespaces, tmp_path):
    net, resource = three_namespaces
    client = Client(net, tmp_path)
    before = net_state(client.ns)
    assert net.ping("a", RESOURCE_V4, count=1, wait=1).returncode != 0  # no route yet
    secret = make_token(net.a.keys, net.b.keys, ["0.0.0.0/0"])
    client.start(TUNPLUG_TOKEN=secret)
    rules = client.ns.run("ip", "rule").stdout
    assert "not from all fwmark 0xca6c lookup 51820" in rules
    assert "lookup main suppress_prefixlength 0" in rules
    assert "default dev tpclient0" in client.ns.run("ip", "route", "show", "table", "51820").stdout
    # Reached through the tunnel only (the resource has no route to the underlay's client).
    result = net.ping("a", RESOURCE_V4, count=5)
    assert result.returncode == 0, result.stdout + result.stderr
    # TCP to a service in the resource namespace: it sees the client's tunnel address, so
    # the traffic came through the gateway's tunnel.
    server = resource.popen(
        "iperf3", "-s", "-1", "-J", "-B", RESOURCE_V4,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    time.sleep(0.3)
    sent = client.ns.run("iperf3", "-c", RESOURCE_V4, "-t", "2", "-J", timeout=40)
    assert json.loads(sent.stdout)["end"]["sum_received"]["bytes"] > 0
    out, _ = server.communicate(timeout=20)
    assert json.loads(out)["start"]["connected"][0]["remote_host"] == TUNNEL["a"][0]
    # The tunnel's own UDP packets went out on veth (not looped into the tunnel): the
    # gateway saw them arrive from the client's underlay address.
    assert f"handshake complete with peer {net.a.keys.public[:8]}... at {UNDERLAY['a'][0]}:" in (
        net.b.log()
    )
    assert client.stop() == 0
    assert_same_state(before, net_state(client.ns))


def test_full_tunnel_rules_left_by_a_killed_run_are_replaced_at_the_next_start(
    three_namespaces, tmp_path
):
    net, _ = three_namespaces
    client = Client(net, tmp_path)
    before = net_state(client.ns)
    secret = make_token(net.a.keys, net.b.keys, ["0.0.0.0/0"])
    client.start(TUNPLUG_TOKEN=secret)
    assert client.stop(signal.SIGKILL) == -signal.SIGKILL
    # The device (and its routes) went with the process; the policy rules did not.
    assert "lookup 51820" in client.ns.run("ip", "rule").stdout
    client.start(TUNPLUG_TOKEN=secret)
    assert net.ping("a", RESOURCE_V4, count=2).returncode == 0
    assert client.ns.run("ip", "rule").stdout.count("lookup 51820") == 1
    assert client.stop() == 0
    assert_same_state(before, net_state(client.ns))


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temp directory another user can reach (pytest's own are private to root)."""
    with tempfile.TemporaryDirectory(prefix="tunplug-nobody-") as name:
        Path(name).chmod(0o755)
        yield Path(name)


def client_program_for(uid: int) -> tuple[str, ...]:
    """How user ``uid`` runs the client (and it, its netlink child).

    Normally the console script. Where the virtual environment's interpreter lives in a
    directory only root can enter (e.g. a pyenv build under /root), the system's python of the
    same version runs it with this environment's packages added.
    """
    nested = "import subprocess, sys; subprocess.run([sys.executable, '-c', ''], check=True)"
    as_user = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    probe = subprocess.run([*as_user, sys.executable, "-c", nested], capture_output=True)
    if probe.returncode == 0:
        return (CLIENT,)
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists():
        pytest.skip(f"user {uid} cannot run {sys.executable}, and there is no {system}")
    site_dirs = [p for p in sys.path if p.endswith("site-packages")]
    bootstrap = (
        f"import site; [site.addsitedir(d) for d in {site_dirs!r}]; "
        "from tunplug.cli.headless import main; raise SystemExit(main())"
    )
    # -S: not the system's own site-packages (older versions of the same packages).
    return (str(system), "-S", "-c", bootstrap)


def tun_node_for_everyone(tmp_path: Path) -> tuple[str, ...]:
    """A wrapper that gives the client a /dev/net/tun any user may open (mode 0666, as Debian
    ships it), in a private mount namespace, where the host's node is root-only (some
    containers); nothing changes outside that namespace. Empty where it already is 0666."""
    if os.stat("/dev/net/tun").st_mode & 0o006 == 0o006:
        return ()
    node = tmp_path / "tun"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(10, 200))
    node.chmod(0o666)
    return ("unshare", "-m", "--propagation", "private", "sh", "-c",
            f"mount --bind {node} /dev/net/tun && exec \"$@\"", "sh")  # fmt: skip


def test_runs_unprivileged_with_only_cap_net_admin(server, open_tmp):
    nobody = 65534
    tmp_path = open_tmp
    client = Client(server, tmp_path)
    client.program = client_program_for(nobody)
    config = tmp_path / "wg.conf"
    write_private(
        config,
        f"[Interface]\nPrivateKey = {server.a.keys.private}\nAddress = 10.202.0.1/24\n\n"
        f"[Peer]\nPublicKey = {server.b.keys.public}\nEndpoint = {UNDERLAY['b'][0]}:51820\n"
        "AllowedIPs = 10.202.0.2/32\n",
    )
    os.chown(config, nobody, nobody)
    for directory in (client.state, client.logs):
        directory.mkdir()
        os.chown(directory, nobody, nobody)
    as_nobody = ("setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups")
    caps = ("--inh-caps=+net_admin", "--ambient-caps=+net_admin", "--bounding-set=+net_admin")
    args = ("--config", str(config), "--dns-control", "disabled")

    denied = subprocess.run(
        ["ip", "netns", "exec", client.ns.name, *as_nobody, "--inh-caps=-all",
         *client.argv(*args)], capture_output=True, text=True, timeout=30, env=client.env(),
    )  # fmt: skip
    assert denied.returncode == 1
    assert "CAP_NET_ADMIN is missing" in denied.stderr

    client.start(*args, wrapper=(*tun_node_for_everyone(tmp_path), *as_nobody, *caps))
    status = client.ns.run("sh", "-c", f"grep -E '^(Uid|CapEff)' /proc/{_child_pid(client)}/status")
    assert f"Uid:\t{nobody}" in status.stdout
    assert server.ping("a", TUNNEL["b"][0]).returncode == 0
    assert client.stop() == 0


def _child_pid(client: Client) -> int:
    """The client's PID (ip netns exec and setpriv exec into it, so it is the popen's)."""
    assert client.process is not None
    return client.process.pid


UNIT = Path(__file__).parents[2] / "packaging" / "systemd" / "tunplug-headless-client.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_shipped_unit_passes_systemd_analyze_verify(tmp_path):
    # verify resolves ExecStart: point it at this environment's client.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/tunplug-headless-client", CLIENT))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in result.stderr.splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not problems, result.stderr
    text = UNIT.read_text()
    for setting in ("Type=notify", "AmbientCapabilities=CAP_NET_ADMIN", "ExecReload="):
        assert setting in text
