#!/usr/bin/env python3
"""A tiny terminal "GUI" for the tunplug tunnel service, written from docs/ipc.md alone.

It uses only Python's standard library (socket, json, struct, curses) and no tunplug code, to
show that the protocol is all a GUI needs: port it to any language.

    python3 tui.py                          # live screen: c connect, d disconnect, q quit
    python3 tui.py --token-file FILE        # c connects with the token in FILE
    python3 tui.py --once                   # print one status frame and exit
    python3 tui.py --once --connect FILE    # connect, wait for TunnelReady, print, exit
    python3 tui.py --once --disconnect      # disconnect, print, exit

Quitting (or killing) the UI leaves the tunnel as it is: the service owns it.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time

PROTOCOL_VERSION = 1
MAX_MESSAGE_SIZE = 64 * 1024
DEFAULT_SOCKET = "/run/dev.tunplug.client/tunnel.sock"


class ServiceError(Exception):
    """An Error reply (code, message), or the connection ended."""


class Connection:
    """Framing (4-byte big-endian length + UTF-8 JSON) and request ids over one socket."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buffer = b""
        self.next_id = 1
        self.events: list[dict] = []

    def send(self, message: dict) -> int:
        message = {**message, "id": self.next_id}
        self.next_id += 1
        payload = json.dumps(message).encode("utf-8")
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)
        return message["id"]

    def _frame_ready(self) -> dict | None:
        if len(self.buffer) < 4:
            return None
        (length,) = struct.unpack(">I", self.buffer[:4])
        if length > MAX_MESSAGE_SIZE:
            raise ServiceError(f"the service sent a {length}-byte message")
        if len(self.buffer) < 4 + length:
            return None
        payload, self.buffer = self.buffer[4 : 4 + length], self.buffer[4 + length :]
        return json.loads(payload.decode("utf-8"))

    def receive(self, timeout: float | None = None) -> dict | None:
        """The next message, or None when ``timeout`` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._frame_ready()
            if message is not None:
                return message
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self.sock], [], [], remaining)
            if not readable:
                return None
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ServiceError("the service closed the connection")
            self.buffer += chunk

    def request(self, message: dict) -> dict:
        """Send a request and return its reply; events that come first are kept."""
        request_id = self.send(message)
        while True:
            reply = self.receive()
            assert reply is not None
            if reply.get("type") == "Error" and reply.get("id") in (request_id, 0):
                raise ServiceError(f"{reply['code']}: {reply['message']}")
            if reply.get("id") == request_id:
                return reply
            self.events.append(reply)

    def next_event(self, timeout: float | None) -> dict | None:
        return self.events.pop(0) if self.events else self.receive(timeout)


def ago(then: float | None) -> str:
    if then is None:
        return "never"
    return f"{max(0, int(time.time() - then))} s ago"


def render(status: dict, welcome: dict, note: str = "") -> list[str]:
    """The screen, as lines (shared by --once and the live view)."""
    lines = [
        f"tunplug tunnel service {welcome['service_version']} "
        f"(protocol {welcome['protocol_version']}, device {welcome['device_id']})",
        "",
        f"state:     {status['state']}"
        + (f" (managed by {status['managed_by']})" if status.get("managed_by") else ""),
        f"interface: {status.get('interface') or '-'}",
        f"addresses: {', '.join(status.get('addresses') or []) or '-'}",
    ]
    if status.get("last_error"):
        lines.append(f"error:     {status['last_error']}")
    for peer in status.get("peers") or []:
        lines += [
            "",
            f"peer {peer['public_key']}",
            f"  endpoint   {peer.get('endpoint') or '-'}",
            f"  handshake  {ago(peer.get('latest_handshake'))}",
            f"  received   {peer['rx_bytes']} bytes",
            f"  sent       {peer['tx_bytes']} bytes",
        ]
    if note:
        lines += ["", note]
    return lines


def open_session(path: str) -> tuple[Connection, dict]:
    connection = Connection(path)
    welcome = connection.request(
        {"type": "Hello", "protocol_version": PROTOCOL_VERSION, "client": "tui example"}
    )
    connection.request({"type": "Subscribe"})
    return connection, welcome


def connect(connection: Connection, token_file: str, timeout: float = 30.0) -> str:
    with open(token_file, encoding="utf-8") as file:
        token = file.read().strip()
    connection.request({"type": "Connect", "token": token})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = connection.next_event(deadline - time.monotonic())
        if event and event["type"] == "TunnelReady":
            return f"connected on {event['interface']}"
        if event and event["type"] == "Disconnected":
            raise ServiceError(f"connection failed: {event['error']}")
    raise ServiceError("no TunnelReady in time")


def once(args: argparse.Namespace) -> int:
    connection, welcome = open_session(args.socket)
    note = ""
    if args.connect:
        note = connect(connection, args.connect)
    if args.disconnect:
        connection.request({"type": "Disconnect"})
        note = "disconnected"
    status = connection.request({"type": "Status"})["status"]
    print("\n".join(render(status, welcome, note)))
    connection.sock.close()
    return 0


def live(args: argparse.Namespace) -> int:
    import curses

    def screen(window: curses.window) -> int:
        connection, welcome = open_session(args.socket)
        status = connection.request({"type": "Status"})["status"]
        note = "c connect   d disconnect   q quit"
        window.nodelay(True)
        while True:
            window.erase()
            for row, line in enumerate(render(status, welcome, note)[: curses.LINES - 1]):
                window.addnstr(row, 0, line, curses.COLS - 1)
            window.refresh()
            select.select([connection.sock, sys.stdin], [], [], 1.0)  # a key or a message
            key = window.getch()
            try:
                if key == ord("q"):
                    return 0
                if key == ord("c"):
                    if not args.token_file:
                        note = "start with --token-file FILE to connect"
                    else:
                        note = connect(connection, args.token_file)
                if key == ord("d"):
                    connection.request({"type": "Disconnect"})
                    note = "disconnected"
                while (event := connection.next_event(0)) is not None:
                    if event["type"] == "TerminatingGracefully":
                        note = "the service is stopping"
                    if event["type"] == "Disconnected" and event["error"]:
                        note = f"disconnected: {event['error']}"
                status = connection.request({"type": "Status"})["status"]
            except ServiceError as exc:
                note = str(exc)
                if "closed" in note:
                    return 1

    return curses.wrapper(screen)


def main() -> int:
    parser = argparse.ArgumentParser(description="A terminal UI for tunplug-tunnel-service.")
    parser.add_argument(
        "--socket", default=os.environ.get("TUNPLUG_SERVICE_SOCKET") or DEFAULT_SOCKET
    )
    parser.add_argument("--token-file", help="token used by the 'c' key")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument("--connect", metavar="TOKEN_FILE", help="with --once: connect first")
    parser.add_argument("--disconnect", action="store_true", help="with --once: disconnect")
    args = parser.parse_args()
    try:
        return once(args) if args.once else live(args)
    except (OSError, ServiceError) as exc:
        print(f"tui: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
