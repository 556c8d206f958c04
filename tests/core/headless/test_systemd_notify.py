"""sd_notify: the datagrams systemd would receive, on a real AF_UNIX socket."""

from __future__ import annotations

import socket

from tunplug.systemd import Notifier


def test_states_reach_the_notify_socket(tmp_path):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        notifier = Notifier(str(path))
        assert notifier.ready("tunplug0 up")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=tunplug0 up"
        assert notifier.reloading()
        lines = receiver.recv(4096).decode().splitlines()
        assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
        assert notifier.stopping()
        assert receiver.recv(4096) == b"STOPPING=1\nSTATUS=shutting down"


def test_abstract_socket_names_are_supported():
    name = f"tunplug-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        assert Notifier("@" + name).status("hello")
        assert receiver.recv(100) == b"STATUS=hello"


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert not notifier.ready("up")


def test_a_dead_socket_is_not_an_error(tmp_path):
    assert not Notifier(str(tmp_path / "gone")).ready("up")
