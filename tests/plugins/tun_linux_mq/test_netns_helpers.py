"""``tunplug.testing.netns``: namespaces are private, cleaned up, and run our processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tunplug.testing.netns import NetNS, python_in_ns, veth_pair

pytestmark = pytest.mark.root


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_a_namespace_has_a_unique_name_lo_up_and_is_deleted_on_exit():
    with NetNS() as a, NetNS() as b:
        assert a.name != b.name
        assert a.name.startswith("tp-")
        assert {a.name, b.name} <= namespaces()
        assert "UP" in a.run("ip", "link", "show", "lo").stdout
        assert a.run("ip", "-o", "link").stdout.count("\n") == 1  # only lo
    assert not {a.name, b.name} & namespaces()


def test_cleanup_happens_when_the_test_fails_and_ends_its_processes():
    with pytest.raises(RuntimeError), NetNS() as ns:
        proc = ns.popen("sleep", "600")
        name = ns.name
        raise RuntimeError("test failed")
    assert proc.poll() is not None
    assert name not in namespaces()


def test_veth_pair_connects_two_namespaces():
    with NetNS() as a, NetNS() as b:
        veth_pair(a, b, "10.7.0.1/24", "10.7.0.2/24")
        veth_pair(a, b, "fd07::1/64", "fd07::2/64", name_a="v6-a", name_b="v6-b")
        probe = (
            "import socket, sys\n"
            "family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n"
            "with socket.socket(family, socket.SOCK_DGRAM) as s:\n"
            "    s.settimeout(5); s.bind((sys.argv[1], 9)); print(s.recv(16).decode())\n"
        )
        for here, there in (("10.7.0.2", "10.7.0.1"), ("fd07::2", "fd07::1")):
            receiver = python_in_ns(b, probe, here, stdout=subprocess.PIPE, text=True)
            sender = (
                "import socket, sys, time\n"
                "family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n"
                "with socket.socket(family, socket.SOCK_DGRAM) as s:\n"
                "    for _ in range(50): s.sendto(b'hi', (sys.argv[1], 9)); time.sleep(0.05)\n"
            )
            python_in_ns(a, sender, here)
            out, _ = receiver.communicate(timeout=10)
            assert out.strip() == "hi", there


def test_python_in_ns_runs_this_interpreter_with_our_imports():
    with NetNS() as ns:
        code = "import sys, tunplug.testing.netns; print(sys.executable)"
        proc = python_in_ns(ns, code, stdout=subprocess.PIPE, text=True)
        out, _ = proc.communicate(timeout=30)
        assert out.strip() == sys.executable
