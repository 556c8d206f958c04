"""The netlink wrappers and their child process: requests, answers and errors (no root).

The real child runs here only on an interface that does not exist (read-only lookups in the
test's own namespace); routes and settings on real devices are in ``test_mq_device.py``.
"""

from __future__ import annotations

import errno
import json
import subprocess
from ipaddress import ip_interface, ip_network
from typing import Any

import pytest

from tunplug.exceptions import BusyResource, PermissionDenied, TunError
from tunplug_tun_linux_mq import netlink
from tunplug_tun_linux_mq.netlink import Route

MISSING = "tunplug-nx0"  # no such interface


class FakeChild:
    """Stands in for ``subprocess.run``: records the request, gives a canned answer."""

    def __init__(self, stdout: str = "", stderr: str = "", returncode: int = 0) -> None:
        self.stdout, self.stderr, self.returncode = stdout, stderr, returncode
        self.requests: list[dict[str, Any]] = []

    def __call__(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert args[-2:] == ["-m", netlink.CHILD_MODULE]
        self.requests.append(json.loads(kwargs["input"]))
        return subprocess.CompletedProcess(args, self.returncode, self.stdout, self.stderr)


def answer(**fields: Any) -> str:
    return json.dumps(fields) + "\n"


def test_requests_carry_the_arguments_as_json(monkeypatch):
    route = Route(ip_network("10.20.0.0/16"), "tp0", metric=5)
    child = FakeChild(answer(result=[route.as_json()]))
    monkeypatch.setattr(subprocess, "run", child)
    netlink.configure_interface("tp0", [ip_interface("10.9.0.1/24")], 1380, txqueuelen=500)
    added = netlink.add_routes("tp0", ["10.20.0.1/16", ip_network("fd20::/48")], metric=5)
    netlink.remove_routes(added)
    assert added == [route]
    assert child.requests == [
        {
            "op": "configure_interface",
            "name": "tp0",
            "addresses": ["10.9.0.1/24"],
            "mtu": 1380,
            "txqueuelen": 500,
        },
        {
            "op": "add_routes",
            "name": "tp0",
            "networks": ["10.20.0.0/16", "fd20::/48"],
            "table": netlink.MAIN_TABLE,
            "metric": 5,
        },
        {"op": "remove_routes", "routes": [route.as_json()]},
    ]


def test_nothing_to_route_or_remove_starts_no_child(monkeypatch):
    child = FakeChild()
    monkeypatch.setattr(subprocess, "run", child)
    assert netlink.add_routes("tp0", []) == []
    netlink.remove_routes([])
    with pytest.raises(ValueError):
        netlink.add_routes("tp0", ["not a network"])
    assert child.requests == []


def test_a_route_survives_the_trip_through_json():
    route = Route(ip_network("fd20::/48"), "tp0", table=100, metric=7)
    assert Route.from_json(json.loads(json.dumps(route.as_json()))) == route


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("TunError", TunError),
        ("BusyResource", BusyResource),
        ("PermissionDenied", PermissionDenied),
    ],
)
def test_the_childs_error_is_raised_again_with_its_class_message_and_errno(monkeypatch, kind, cls):
    message = "failed to add route 10.77.0.0/16 dev tp0: 10.77.0.0/16 already goes through lo"
    error = {"type": kind, "message": message, "errno": errno.EEXIST}
    monkeypatch.setattr(subprocess, "run", FakeChild(answer(error=error)))
    with pytest.raises(TunError) as caught:
        netlink.add_routes("tp0", ["10.77.0.0/16"])
    assert type(caught.value) is cls
    assert str(caught.value) == message
    assert caught.value.errno == errno.EEXIST


@pytest.mark.parametrize("kind", ["ConfigError", "Exception", "no_such_name", "map_os_errors"])
def test_an_error_type_that_is_not_a_tun_error_becomes_one(monkeypatch, kind):
    error = {"type": kind, "message": "failed to bring tp0 up: No such device", "errno": 19}
    monkeypatch.setattr(subprocess, "run", FakeChild(answer(error=error)))
    with pytest.raises(TunError) as caught:
        netlink.configure_interface("tp0")
    assert type(caught.value) is TunError
    assert str(caught.value) == "failed to bring tp0 up: No such device"


def test_a_child_that_dies_without_answering_is_one_line_with_its_last_words(monkeypatch):
    stderr = "Traceback (most recent call last):\n  ...\nMemoryError\n"
    monkeypatch.setattr(subprocess, "run", FakeChild("", stderr, returncode=1))
    with pytest.raises(TunError) as caught:
        netlink.configure_interface("tp0")
    assert str(caught.value) == (
        "failed to configure_interface: the netlink child exited with status 1: MemoryError"
    )


def test_a_child_that_hangs_is_a_timeout(monkeypatch):
    def hang(args: list[str], **kwargs: Any) -> None:
        raise subprocess.TimeoutExpired(args, kwargs["timeout"])

    monkeypatch.setattr(subprocess, "run", hang)
    with pytest.raises(TunError) as caught:
        netlink.remove_routes([Route(ip_network("10.20.0.0/16"), "tp0")])
    assert str(caught.value) == (
        "failed to remove_routes: the netlink child did not answer in 30 s"
    )
    assert caught.value.errno == errno.ETIMEDOUT


def test_the_real_child_reports_a_missing_interface_in_one_line():
    with pytest.raises(TunError) as caught:
        netlink.configure_interface(MISSING, [ip_interface("10.9.0.1/24")], 1400)
    assert type(caught.value) is TunError
    assert str(caught.value) == f"interface {MISSING!r} does not exist"
    assert caught.value.errno == errno.ENODEV
    with pytest.raises(TunError, match=f"interface {MISSING!r} does not exist"):
        netlink.add_routes(MISSING, ["10.20.0.0/16"])


def test_the_real_child_removes_nothing_when_the_interface_is_gone():
    netlink.remove_routes([Route(ip_network("10.20.0.0/16"), MISSING)])


def test_the_real_child_refuses_an_unknown_request_in_one_line():
    with pytest.raises(TunError) as caught:
        netlink._call_child("bogus")
    assert str(caught.value) == "netlink child failed: ValueError: unknown op 'bogus'"
