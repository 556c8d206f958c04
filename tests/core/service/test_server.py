"""The service in-process over its real socket (fake TUN device): requests, events, framing
errors, several clients, the token file's precedence and the graceful stop."""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from typing import Any

import pytest

from tests.core.service.conftest import (
    OUTSIDER,
    hello,
    make_token,
    recv_frame,
    send_raw,
    start_service,
)
from tunplug.service import protocol as p
from tunplug.service.access import PeerCredentials


def request(sock: socket.socket, message: p.Message) -> None:
    send_raw(sock, message.model_dump_json().encode())


def until(sock: socket.socket, kind: str, timeout: float = 10) -> list[dict[str, Any]]:
    """Frames up to and including the first of type ``kind``."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = recv_frame(sock)
        assert frame is not None, f"closed before {kind}: {seen}"
        seen.append(frame)
        if frame["type"] == kind:
            return seen
    raise AssertionError(f"no {kind} in {timeout} s: {seen}")


def reply_to(sock: socket.socket, message: p.Message) -> dict[str, Any]:
    """Send ``message``; its reply (events in between are skipped)."""
    request(sock, message)
    while True:
        frame = recv_frame(sock)
        assert frame is not None
        if frame["id"] == message.id:
            return frame


def status(sock: socket.socket, request_id: int = 90) -> dict[str, Any]:
    reply = reply_to(sock, p.Status(id=request_id))
    assert reply["type"] == "StatusReply"
    return reply["status"]  # type: ignore[no-any-return]


def test_hello_comes_first_and_tells_versions_and_device_id(harness):
    with harness.raw() as sock:
        request(sock, p.Status(id=5))
        assert recv_frame(sock) == {"id": 5, "type": "Error", "code": "hello_required",
                                    "message": "send Hello first"}  # fmt: skip
        welcome = hello(sock)
        assert welcome == {"id": 1, "type": "Welcome", "protocol_version": p.PROTOCOL_VERSION,
                           "service_version": welcome["service_version"],
                           "device_id": "test-device"}  # fmt: skip
        assert status(sock)["state"] == "disconnected"


def test_an_unsupported_protocol_version_is_refused_and_the_connection_closed(harness):
    with harness.raw() as sock:
        request(sock, p.Hello(id=3, protocol_version=99))
        error = recv_frame(sock)
        assert error is not None and error["code"] == "unsupported_version" and error["id"] == 3
        assert "speaks protocol version 1, not 99" in error["message"]
        assert recv_frame(sock) is None


def test_outsiders_get_an_error_and_are_disconnected(harness):
    harness.credentials["next"] = OUTSIDER
    with harness.raw() as sock:
        error = recv_frame(sock)
        assert error is not None
        assert (error["type"], error["id"], error["code"]) == ("Error", 0, "permission_denied")
        assert (
            "uid 123456" in error["message"]
            and "may not use the tunnel service" in (error["message"])
        )
        assert recv_frame(sock) is None
    # A member of the group through a supplementary group is let in.
    harness.credentials["next"] = PeerCredentials(pid=1, uid=5000, gid=5000,
                                                  groups=(99999, os.getgid()))  # fmt: skip
    with harness.raw() as sock:
        hello(sock)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", "malformed_message"),
        (b"\xff\x00\xfe", "malformed_message"),
        (b"42", "malformed_message"),
        (b'{"type": "Format", "id": 7}', "unknown_message_type"),
        (b'{"type": "Connect", "id": 7}', "invalid_message"),
        (b'{"type": "SetDnsControl", "id": 7, "mode": ""}', "invalid_message"),
    ],
)
def test_a_malformed_message_is_answered_and_the_connection_stays(harness, payload, code):
    with harness.raw() as sock:
        hello(sock)
        send_raw(sock, payload)
        error = recv_frame(sock)
        assert error is not None and error["type"] == "Error" and error["code"] == code
        assert status(sock)["state"] == "disconnected"  # still talking


def test_an_oversized_message_is_skipped_and_answered_and_the_connection_stays(harness):
    with harness.raw() as sock:
        hello(sock)
        size = p.MAX_MESSAGE_SIZE + 1000
        sock.sendall(struct.pack(">I", size))
        error = recv_frame(sock)  # answered as soon as the header is read
        assert error is not None and error["code"] == "message_too_large"
        assert str(p.MAX_MESSAGE_SIZE) in error["message"]
        sock.sendall(b"{" * size)  # the announced payload is read and dropped
        assert status(sock)["state"] == "disconnected"
        sock.sendall(struct.pack(">I", 0))
        error = recv_frame(sock)
        assert error is not None and error["code"] == "malformed_message"
        assert status(sock, 91)["state"] == "disconnected"


@pytest.mark.parametrize("cut", [2, 4 + 10], ids=["in-header", "in-payload"])
def test_a_truncated_message_is_answered_before_the_service_closes(harness, cut):
    frame = p.encode(p.Status(id=8))
    with harness.raw() as sock:
        hello(sock)
        sock.sendall(frame[:cut])
        sock.shutdown(socket.SHUT_WR)  # the client is done writing, still reading
        error = recv_frame(sock)
        assert error is not None and error["code"] == "truncated_message"
        assert recv_frame(sock) is None
    with harness.raw() as sock:  # the service is unharmed
        hello(sock)
        assert status(sock)["state"] == "disconnected"


def test_connect_ready_stats_disconnect_with_two_clients_watching(harness):
    with harness.raw() as gui, harness.raw() as watcher:
        for sock in (gui, watcher):
            hello(sock)
            assert reply_to(sock, p.Subscribe(id=2)) == {"id": 2, "type": "Ok", "message": None}
        secret = make_token(name="laptop")
        assert reply_to(gui, p.Connect(id=3, token=secret))["type"] == "Ok"
        for sock in (gui, watcher):
            ready = until(sock, "TunnelReady")[-1]
            assert ready == {"id": 0, "type": "TunnelReady", "interface": "tpsvc0",
                             "addresses": ["10.99.0.2/32"], "dns_servers": []}  # fmt: skip
            stats = until(sock, "StatsUpdate")[-1]
            assert stats["interface"] == "tpsvc0" and len(stats["peers"]) == 1
        state = status(watcher)
        assert state["state"] == "connected" and state["managed_by"] == "gui"
        assert state["client_name"] == "laptop" and state["listen_port"] > 0
        assert state["peers"][0]["endpoint"] == "127.0.0.1:9"
        assert state["peers"][0]["allowed_ips"] == ["10.99.0.0/24"]
        again = reply_to(gui, p.Connect(id=4, token=secret))
        assert again["code"] == "already_connected"
        # Disconnect replies once the tunnel is gone; subscribers saw Disconnected before.
        request(gui, p.Disconnect(id=5))
        frames = until(gui, "Ok")
        assert [f["type"] for f in frames if f["type"] != "StatsUpdate"] == ["Disconnected", "Ok"]
        assert frames[-1]["id"] == 5
        assert until(watcher, "Disconnected")[-1] == {
            "id": 0, "type": "Disconnected", "error": None, "needs_new_token": False,
        }  # fmt: skip
        assert status(watcher)["state"] == "disconnected"
        assert reply_to(gui, p.Disconnect(id=6))["code"] == "not_connected"
        for log_text in (json.dumps(frames), json.dumps(state)):
            assert secret not in log_text


def test_a_client_that_goes_away_does_not_take_the_tunnel_down(harness):
    gui = harness.raw()
    hello(gui)
    reply_to(gui, p.Subscribe(id=2))
    reply_to(gui, p.Connect(id=3, token=make_token()))
    until(gui, "TunnelReady")
    gui.close()  # a GUI that crashed mid-session
    time.sleep(0.3)
    with harness.raw() as other:
        hello(other)
        assert status(other)["state"] == "connected"


def test_a_bad_token_is_refused_without_quoting_it(harness):
    good = make_token()
    damaged = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    with harness.raw() as sock:
        hello(sock)
        error = reply_to(sock, p.Connect(id=3, token=damaged))
        assert error["code"] == "invalid_token"
        assert "damaged" in error["message"] and damaged not in error["message"]
        assert status(sock)["state"] == "disconnected"


def test_dns_control_is_checked_and_kept_for_the_next_connect(harness):
    with harness.raw() as sock:
        hello(sock)
        error = reply_to(sock, p.SetDnsControl(id=2, mode="carrier-pigeon"))
        assert error["code"] == "unavailable" and "unknown" in error["message"]
        assert reply_to(sock, p.SetDnsControl(id=3, mode="disabled"))["type"] == "Ok"
        assert status(sock)["dns_control"] == "disabled"


def test_clear_logs_empties_the_log_and_removes_rotated_files(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    log_file = logs / "tunplug-tunnel-service.log"
    log_file.write_text("old lines\n")
    for suffix in ("1", "2"):
        (logs / f"{log_file.name}.{suffix}").write_text("older\n")
    (logs / "other.log").write_text("not ours\n")
    for harness in start_service(tmp_path, log_file=log_file):
        with harness.raw() as sock:
            hello(sock)
            reply = reply_to(sock, p.ClearLogs(id=2))
    assert reply == {"id": 2, "type": "Ok",
                     "message": "log file emptied, 2 rotated file(s) removed"}  # fmt: skip
    assert sorted(path.name for path in logs.iterdir()) == sorted([log_file.name, "other.log"])
    assert log_file.read_text() == ""


def test_a_token_file_connects_on_its_own_and_takes_precedence_over_guis(tmp_path):
    for harness in start_service(tmp_path, token_file=make_token(name="fleet")):
        with harness.raw() as sock:
            hello(sock)
            deadline = time.monotonic() + 10
            while (state := status(sock))["state"] != "connected":
                assert time.monotonic() < deadline, state
                time.sleep(0.05)
            assert state["managed_by"] == "token_file" and state["client_name"] == "fleet"
            for message in (p.Connect(id=3, token=make_token()), p.Disconnect(id=4)):
                error = reply_to(sock, message)
                assert error["code"] == "managed_by_token_file"
                assert f"the token file {tmp_path / 'token'}" in error["message"]
                assert "takes precedence over GUIs" in error["message"]
            assert status(sock)["state"] == "connected"


def test_a_failed_token_file_tunnel_is_tried_again_until_it_comes_up(tmp_path):
    """The interface name is taken at start (BusyResource): the service does not give up."""
    from tunplug.testing.fake import FakeTun
    from tunplug.tun import TunOptions

    blocker = FakeTun(TunOptions(name="tpsvc0"))
    FakeTun.opened["tpsvc0"] = blocker
    try:
        for harness in start_service(
            tmp_path, token_file=make_token(name="fleet"), retry_delays=(0.2, 0.4)
        ):
            with harness.raw() as sock:
                hello(sock)
                deadline = time.monotonic() + 5
                while "already exists" not in str(status(sock).get("last_error")):
                    assert time.monotonic() < deadline, status(sock)
                    time.sleep(0.05)
                assert status(sock)["state"] != "connected"
                del FakeTun.opened["tpsvc0"]  # the other "process" lets the name go
                deadline = time.monotonic() + 5
                while (state := status(sock))["state"] != "connected":
                    assert time.monotonic() < deadline, state
                    time.sleep(0.05)
                assert state["managed_by"] == "token_file"
    finally:
        FakeTun.opened.pop("tpsvc0", None)
        del blocker


def test_reload_reads_the_token_file_again_and_keeps_the_tunnel_when_it_is_broken(tmp_path):
    for harness in start_service(tmp_path, token_file=make_token(name="fleet")):
        with harness.raw() as sock:
            hello(sock)
            wait_for_state(sock, "connected")
            token_path = tmp_path / "token"
            token_path.write_text("tp1.broken.token")
            harness.portal.call(harness.service.reload)
            assert status(sock)["client_name"] == "fleet"  # still the old tunnel
            token_path.write_text(make_token(name="fleet-2"))
            harness.portal.call(harness.service.reload)
            deadline = time.monotonic() + 5
            while (state := status(sock)).get("client_name") != "fleet-2":
                assert time.monotonic() < deadline, state
                time.sleep(0.05)
            wait_for_state(sock, "connected")


def wait_for_state(sock: socket.socket, wanted: str) -> None:
    deadline = time.monotonic() + 10
    while (state := status(sock))["state"] != wanted:
        assert time.monotonic() < deadline, state
        time.sleep(0.05)


def test_stopping_tells_every_client_then_takes_the_tunnel_down_and_closes(harness):
    watcher = harness.raw()
    quiet = harness.raw()
    with watcher, quiet:
        hello(watcher)
        hello(quiet)
        reply_to(watcher, p.Subscribe(id=2))
        reply_to(watcher, p.Connect(id=3, token=make_token()))
        until(watcher, "TunnelReady")
        harness.stop()
        frames = []
        while (frame := recv_frame(watcher)) is not None:
            frames.append(frame["type"])
        assert [t for t in frames if t != "StatsUpdate"] == [
            "TerminatingGracefully", "Disconnected",
        ]  # fmt: skip
        # A client that did not subscribe still hears that the service is going.
        assert recv_frame(quiet) == {"id": 0, "type": "TerminatingGracefully"}
        assert recv_frame(quiet) is None
    assert not harness.path.exists()
    assert harness.service.session.tunnel is None


def test_a_bug_in_a_request_is_an_internal_error_and_the_service_goes_on(harness, monkeypatch):
    def broken() -> p.TunnelStatus:
        raise KeyError("oops")

    monkeypatch.setattr(harness.service.session, "status", broken)
    with harness.raw() as sock:
        hello(sock)
        error = reply_to(sock, p.Status(id=4))
        assert error == {"id": 4, "type": "Error", "code": "internal",
                         "message": "Status failed: KeyError"}  # fmt: skip
        monkeypatch.undo()
        assert status(sock)["state"] == "disconnected"
