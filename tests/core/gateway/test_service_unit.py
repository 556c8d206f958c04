"""The shipped systemd unit of the gateway: systemd accepts it, and it keeps what the gateway
needs (notify, CAP_NET_ADMIN and CAP_NET_BIND_SERVICE only, writable sysctls, netlink, a
private state directory)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[3] / "packaging" / "systemd" / "tunplug-gateway.service"
GATEWAY = str(Path(sys.executable).with_name("tunplug-gateway"))


def settings() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_shipped_unit_passes_systemd_analyze_verify(tmp_path):
    # verify resolves ExecStart: point it at this environment's gateway.
    unit = tmp_path / UNIT.name
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/tunplug-gateway run\n" in text
    unit.write_text(text.replace("/usr/local/bin/tunplug-gateway", GATEWAY))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [line for line in result.stderr.splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_the_unit_keeps_what_the_gateway_needs_and_nothing_more():
    found = settings()
    assert found["Type"] == ["notify"]
    assert found["ExecStart"] == ["/usr/local/bin/tunplug-gateway run"]
    # Clients are applied live; SIGHUP re-reads the interface (private.key included).
    assert found["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # CAP_NET_BIND_SERVICE: the DNS server for DNS resources on port 53 of the tunnel addresses.
    assert (
        found["CapabilityBoundingSet"]
        == found["AmbientCapabilities"]
        == ["CAP_NET_ADMIN CAP_NET_BIND_SERVICE"]
    )
    assert found["StateDirectory"] == ["tunplug-gateway"]
    assert found["StateDirectoryMode"] == ["0700"]
    assert "TUNPLUG_GATEWAY_STATE_DIR=/var/lib/tunplug-gateway" in found["Environment"]
    assert found["ProtectKernelTunables"] == ["no"]  # net.ipv4.ip_forward
    assert "AF_NETLINK" in found["RestrictAddressFamilies"][0].split()
    assert found["ProtectSystem"] == ["strict"] and found["NoNewPrivileges"] == ["yes"]
    assert found["DeviceAllow"] == ["/dev/net/tun rw"]
