"""Crash and restart: SIGKILL the gateway while its clients carry traffic, and the headless
client while it holds the resolver file; start them again and check what a user would: traffic
comes back by itself within a measured bound, the registry is intact, the firewall, forwarding,
device, routes and resolver are those of one clean run, and nothing of the killed run is left.

Topology and helpers are :mod:`tests.e2e.test_gateway`'s (gateway, resource network, one
namespace per client). The resolver file is a temporary file bind-mounted over
``/etc/resolv.conf`` in a private mount namespace whose ``/etc`` is read-only, so nothing of
the host's ``/etc`` can change.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import test_gateway as gw
from tunplug.gateway.firewall import FORWARDING_RECORD
from tunplug.testing.netns import NetNS

pytestmark = pytest.mark.root

# The gateway tests' fixture: a gateway namespace, a resource network behind it, an
# initialised state directory; clients are added with gw.start_client / gw.add_client_ns.
net = gw.net

#: A client's first reply from the resource after the restarted gateway is up, at the latest.
#: Measured: 12-14 s. The clients find out by WireGuard's own timer: data sent without an answer
#: for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT (15 s) starts a new handshake; the gateway cannot tell
#: them sooner, since it no longer has the keys to authenticate anything to them.
RECOVERY_BOUND = 20.0
FORWARDING = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")
# ``ping -D``: "[1733312345.123456] 64 bytes from 10.210.0.2: icmp_seq=7 ttl=63 time=0.4 ms"
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ")


def sysctls(ns: NetNS) -> dict[str, str]:
    return {key: ns.run("sysctl", "-n", key).stdout.strip() for key in FORWARDING}


def ruleset(ns: NetNS) -> list[dict[str, Any]]:
    """``nft -j list ruleset`` without what changes between two identical rule sets (handles,
    counter values, set elements, nft's own metainfo)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"packets", "bytes"}:
                return "counted"
            # Set elements: per-client access, which a restart may list in another order or
            # shape (the table itself must be the same).
            return {
                key: clean(item) for key, item in value.items() if key not in ("handle", "elem")
            }
        if isinstance(value, list):
            return [clean(item) for item in value]
        return value

    items = json.loads(ns.run("nft", "-j", "list", "ruleset").stdout)["nftables"]
    return [clean(item) for item in items if "metainfo" not in item]


def registry_health(state: Path) -> dict[str, Any]:
    """What SQLite says of the registry file: integrity, journal mode, and the change count
    (``gateway.version``) next to the adds, revokes and resources added it must equal."""
    db = sqlite3.connect(state / "registry.db")
    try:
        return {
            "integrity": db.execute("PRAGMA integrity_check").fetchall(),
            "journal_mode": db.execute("PRAGMA journal_mode").fetchone()[0],
            "version": db.execute("SELECT version FROM gateway").fetchone()[0],
            "changes": db.execute(
                "SELECT COUNT(*) + COUNT(revoked_at) + (SELECT COUNT(*) FROM resources) "
                "FROM clients"
            ).fetchone()[0],
        }
    finally:
        db.close()


def assert_registry_intact(state: Path) -> None:
    health = registry_health(state)
    assert health["integrity"] == [("ok",)], health
    assert health["journal_mode"] == "wal", health
    assert health["version"] == health["changes"], health


def client_identities(net: gw.Net) -> list[tuple[str, ...]]:
    """``client list --json`` without the traffic columns, which a running gateway updates."""
    rows = json.loads(net.tool("client", "list", "--json").stdout)
    keep = ("name", "public_key", "address_v4", "address_v6", "created_at")
    return [tuple(str(row[key]) for key in keep) for row in rows]


def first_reply_after(log: Path, after: float) -> float | None:
    for line in log.read_text(errors="replace").splitlines():
        match = REPLY.match(line)
        if match and float(match[1]) > after:
            return float(match[1])
    return None


def test_a_killed_gateway_restarts_and_its_clients_recover_by_themselves(net):
    for key in FORWARDING:
        net.gateway.run("sysctl", "-qw", f"{key}=0")
    before = sysctls(net.gateway)
    net.start()
    one_gateway = ruleset(net.gateway)
    assert [item["table"]["name"] for item in one_gateway if "table" in item] == ["tunplug_tpgw0"]
    clients = [gw.start_client(net, "alice"), gw.start_client(net, "bob")]
    assert all(client.ping(gw.RESOURCE) for client in clients)
    identities = client_identities(net)
    # A ping flood from each client (20/s, -D: timestamped, -O: gaps reported) runs throughout.
    logs = [net.workdir / f"flood-{index}.log" for index in range(len(clients))]
    for client, log in zip(clients, logs, strict=True):
        with log.open("wb") as out:
            client.ns.popen("ping", "-D", "-O", "-n", "-i", "0.05", "-W", "1", gw.RESOURCE,
                            stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    time.sleep(1.5)
    assert net.process is not None
    killed_at = time.time()
    net.process.send_signal(signal.SIGKILL)
    assert net.process.wait(10) == -signal.SIGKILL
    net.process = None
    assert all(first_reply_after(log, killed_at - 1) for log in logs), "no traffic before"
    # What the kill left: a registry SQLite can open and check, a stale firewall table and the
    # record of forwarding's values from before; the kernel took the device.
    assert_registry_intact(net.state)
    assert "tunplug_tpgw0" in net.gateway.run("nft", "list", "tables").stdout
    assert (net.state / FORWARDING_RECORD).exists()
    assert "tpgw0" not in net.gateway.run("ip", "-o", "link").stdout

    net.start()
    up_at = time.time()
    recovered: list[float] = []
    for log in logs:
        deadline = up_at + RECOVERY_BOUND + 10
        while (reply := first_reply_after(log, up_at)) is None:
            assert time.time() < deadline, f"no reply:\n{log.read_text()[-600:]}"
            time.sleep(0.1)
        recovered.append(reply - up_at)
    print(f"gateway down {up_at - killed_at:.1f} s; clients answered again "
          f"{', '.join(f'{s:.1f}' for s in recovered)} s after the restart")  # fmt: skip
    assert max(recovered) <= RECOVERY_BOUND, recovered

    restarted = net.log.read_text()
    assert "2 client(s)" in restarted
    assert "removed nftables table tunplug_tpgw0 left by" in restarted
    assert "found forwarding left on by a run that was killed" in restarted
    assert ruleset(net.gateway) == one_gateway
    assert sysctls(net.gateway) == dict.fromkeys(FORWARDING, "1")
    assert client_identities(net) == identities
    for client in clients:
        assert client.process is not None and client.process.poll() is None, client.log.read_text()
        assert client.stop() == 0
    assert net.stop() == 0
    assert "tunplug" not in net.gateway.run("nft", "list", "ruleset").stdout
    assert sysctls(net.gateway) == before
    assert not (net.state / FORWARDING_RECORD).exists()
    assert_registry_intact(net.state)


# A writer that SIGKILLs itself when SQLite starts the statement beginning with argv[2]: inside
# add_client's transaction, or at its COMMIT.
KILL_AT_STATEMENT = textwrap.dedent("""
    import os, signal, sqlite3, sys
    from pathlib import Path
    from tunplug.app import App
    from tunplug.config import load_settings
    from tunplug.gateway.registry import Registry

    armed = False  # opening the registry commits too (its schema check): not that one

    def connect(*args, _connect=sqlite3.connect, **kwargs):
        connection = _connect(*args, **kwargs)
        def trace(statement):
            if armed and statement.startswith(sys.argv[2]):
                os.kill(os.getpid(), signal.SIGKILL)
        connection.set_trace_callback(trace)
        return connection

    sqlite3.connect = connect
    registry = Registry.open(Path(sys.argv[1]), crypto=App(load_settings()).crypto())
    armed = True
    registry.add_client("doomed")
""")
# A writer adding clients as fast as it can, until it is killed.
ADD_FOREVER = textwrap.dedent("""
    import itertools, sys
    from pathlib import Path
    from tunplug.app import App
    from tunplug.config import load_settings
    from tunplug.gateway.registry import Registry

    registry = Registry.open(Path(sys.argv[1]), crypto=App(load_settings()).crypto())
    for index in itertools.count():
        registry.add_client(f"{sys.argv[2]}{index}")
""")


def test_sigkill_during_client_add_leaves_a_usable_registry(net):
    net.start()
    # In the middle of add_client's transaction and as it commits: the client is not there.
    for statement in ("INSERT INTO clients", "UPDATE gateway", "COMMIT"):
        done = subprocess.run([sys.executable, "-c", KILL_AT_STATEMENT, str(net.state), statement],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        assert done.returncode == -signal.SIGKILL, done.stderr
        assert "doomed" not in net.tool("client", "list").stdout
        assert_registry_intact(net.state)
    # Writers killed at arbitrary moments of a stream of commits (SQLite's own writes, WAL
    # appends and checkpoints included), and `client add` killed as it starts and as it writes.
    for round_ in range(4):
        writer = subprocess.Popen([sys.executable, "-c", ADD_FOREVER, str(net.state),
                                   f"w{round_}-"], stderr=subprocess.PIPE)  # fmt: skip
        time.sleep(0.6 + 0.15 * round_)
        writer.kill()
        assert writer.wait(10) == -signal.SIGKILL, writer.stderr.read() if writer.stderr else ""
        if writer.stderr:
            writer.stderr.close()
        assert_registry_intact(net.state)
    for index, delay in enumerate((0.1, 0.25, 0.4, 0.55, 0.7, 0.85)):
        cli = subprocess.Popen([gw.GATEWAY, "client", "add", f"cli{index}", "--state-dir",
                                str(net.state)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=gw.env())  # fmt: skip
        time.sleep(delay)
        cli.kill()
        cli.wait(10)
        assert_registry_intact(net.state)
    listed = json.loads(net.tool("client", "list", "--json").stdout)
    addresses = [row["address_v4"] for row in listed]
    assert len(set(addresses)) == len(addresses) > 0
    # The registry still takes clients, and the gateway, which polled it all along, serves them.
    carol = gw.start_client(net, "carol")
    assert carol.ping(gw.RESOURCE)
    assert net.process is not None and net.process.poll() is None
    metrics = net.http("/metrics")[1]
    assert f"tunplug_gateway_clients {len(listed) + 1}" in metrics
    assert net.stop() == 0
    assert_registry_intact(net.state)


RESOLV_ORIGINAL = b"# the client namespace's own resolver\nnameserver 192.0.2.53\n"
DNS_SERVER = "10.210.0.53"


def network_state(ns: NetNS) -> dict[str, str]:
    return {
        "links": re.sub(r"^\d+: ", "", ns.run("ip", "-o", "link").stdout, flags=re.M),
        "routes": ns.run("ip", "route").stdout,
        "routes6": ns.run("ip", "-6", "route").stdout,
        "rules": ns.run("ip", "rule").stdout,
        "rules6": ns.run("ip", "-6", "rule").stdout,
        "src_valid_mark": ns.run("sysctl", "-n", "net.ipv4.conf.all.src_valid_mark").stdout,
    }


@pytest.mark.parametrize("routes", ["10.210.0.0/24", "0.0.0.0/0"], ids=["split", "full-tunnel"])
def test_a_killed_headless_client_is_cleaned_up_by_its_next_run(net, routes):
    """With a full tunnel (the gateway's Internet resource, which ``init --resource 0.0.0.0/0``
    adds, used with ``--activate-internet-resource``), the killed run also leaves its
    policy-routing rules, which outlive the device."""
    net.tool("init", "--force", "--endpoint", "10.201.0.2:51820", "--resource", routes,
             "--dns", DNS_SERVER)  # fmt: skip
    net.start()
    ns = gw.add_client_ns(net)
    token = net.workdir / "dana.token"
    token.touch(mode=0o600)
    token.write_text(net.tool("client", "add", "dana").stdout.strip())
    resolv = net.workdir / "resolv.conf"
    resolv.write_bytes(RESOLV_ORIGINAL)
    resolv.chmod(0o644)
    host_resolv = Path("/etc/resolv.conf").read_bytes()
    state = net.workdir / "dana-state"
    before = network_state(ns)
    # A private mount namespace: /etc read-only (nothing can be created next to the host's
    # file), the temporary file bind-mounted over /etc/resolv.conf. exec keeps one PID.
    script = ('mount --make-rprivate / && mount --bind /etc /etc && '
              'mount -o remount,bind,ro /etc && mount --bind "$1" /etc/resolv.conf && '
              'shift && exec "$@"')  # fmt: skip
    argv = ["unshare", "-m", "sh", "-c", script, "sh", str(resolv), gw.CLIENT, "standalone",
            "--token-path", str(token), "--interface", "tpc0", "--state-dir", str(state),
            "--dns-control", "etc-resolv-conf"]  # fmt: skip
    if routes == "0.0.0.0/0":
        argv.append("--activate-internet-resource")

    def start(run: int) -> gw.Client:
        log = net.workdir / f"dana-{run}.log"
        with log.open("wb") as out:
            process = ns.popen(*argv, stdout=out, stderr=subprocess.STDOUT, env=gw.env())
        gw.wait_for(log, "tunnel is up on", process)
        # The routes come from the gateway's control channel, applied just after.
        gw.wait_for(log, "resources: +", process)
        return gw.Client(ns, process, log)

    killed = start(1)
    assert killed.ping(gw.RESOURCE)
    assert f"nameserver {DNS_SERVER}" in resolv.read_text()
    assert killed.process is not None
    killed_pid = killed.process.pid
    killed.process.send_signal(signal.SIGKILL)
    assert killed.process.wait(10) == -signal.SIGKILL
    # The kernel took the device and its routes; the resolver file and its backup remain (and
    # with a full tunnel the rules).
    after_kill = network_state(ns)
    assert {key: after_kill[key] for key in ("links", "routes", "routes6")} == {
        key: before[key] for key in ("links", "routes", "routes6")
    }
    if routes == "0.0.0.0/0":
        assert "suppress_prefixlength 0" in after_kill["rules"]
    assert f"nameserver {DNS_SERVER}" in resolv.read_text()
    left = sorted(str(path.relative_to(state)) for path in state.rglob("*"))
    assert "dns/resolv-conf-backup.json" in left, left

    restarted = start(2)
    log = restarted.log.read_text()
    assert f"left by a previous run that did not exit cleanly (pid {killed_pid})" in log, log
    if routes == "0.0.0.0/0" and before["src_valid_mark"].strip() != "1":
        # The killed full tunnel left src_valid_mark on; the record it kept says what it was.
        assert f"found src_valid_mark left on by a run that was killed (pid {killed_pid})" in log
    assert f"nameserver {DNS_SERVER}" in resolv.read_text()
    assert restarted.ping(gw.RESOURCE)
    assert restarted.stop() == 0
    assert resolv.read_bytes() == RESOLV_ORIGINAL
    after = network_state(ns)
    assert after == before
    remaining = sorted(str(path.relative_to(state)) for path in state.rglob("*"))
    assert "dns/resolv-conf-backup.json" not in remaining, remaining
    assert not [name for name in remaining if "tunplug-" in name or name.endswith(".tmp")]
    assert Path("/etc/resolv.conf").read_bytes() == host_resolv
