"""Write the seed corpus: a few small, valid inputs per target into ``fuzz/corpus/<target>/``.

Run it after changing a harness's input format: ``.venv/bin/python fuzz/make_corpus.py``.
The output is deterministic (fixed keys and seeds), so a rerun changes no file unless a format
changed. Fuzz runs never write here (``fuzz/run.py`` works on a copy).
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.targets import TARGETS
from tunplug.service import protocol
from tunplug.token import ClientToken, encode
from tunplug.wireguard.keys import format_key

CORPUS = Path(__file__).resolve().parent / "corpus"

_KEY_A = format_key(bytes(range(32)))
_KEY_B = format_key(bytes(range(32, 64)))
_KEY_C = format_key(bytes(range(64, 96)))


def wgquick() -> dict[str, bytes]:
    full = f"""[Interface]
# a comment
PrivateKey = {_KEY_A}
Address = 10.0.0.2/32, fd00::2/128
ListenPort = 51820
DNS = 10.0.0.1, fd00::1, corp.example
MTU = 1420
PostUp = iptables -A FORWARD -i %i -j ACCEPT

[Peer]
PublicKey = {_KEY_B}
PresharedKey = {_KEY_C}
Endpoint = 192.0.2.1:51820
AllowedIPs = 0.0.0.0/0, ::/0
PersistentKeepalive = 25

[Peer]
PublicKey = {_KEY_C}
Endpoint = [2001:db8::1]:51821
AllowedIPs = 10.1.0.0/16
"""
    minimal = f"[Interface]\nPrivateKey = {_KEY_A}\n"
    return {"full": full.encode(), "minimal": minimal.encode()}


def _client_token() -> ClientToken:
    return ClientToken(
        name="laptop",
        gateway_key=_KEY_B,
        endpoints=["192.0.2.1:51820", "[2001:db8::1]:51820"],
        private_key=_KEY_A,
        preshared_key=_KEY_C,
        addresses=["100.64.0.2/32", "fd7a:115c:a1e0::2/128"],
        routes=["10.1.0.0/16", "fd00::/64"],
        dns_servers=["10.1.0.53"],  # type: ignore[list-item]
        dns_domains=["corp.example"],
    )


def token() -> dict[str, bytes]:
    client = _client_token()
    text = encode(client)
    payload = base64.urlsafe_b64decode(text.split(".")[1] + "==")
    minimal = client.model_copy(
        update={"preshared_key": None, "dns_servers": [], "dns_domains": [], "endpoints": ["h:1"]}
    )
    return {
        "token": b"\x00" + text.encode(),
        "payload": b"\x01" + payload,
        "payload-minimal": b"\x01" + json.dumps(minimal.model_dump(mode="json")).encode(),
    }


def service_frames() -> dict[str, bytes]:
    requests: list[protocol.Message] = [
        protocol.Hello(id=1, protocol_version=1, client="fuzz 1.0"),
        protocol.Subscribe(id=2),
        protocol.Status(id=3),
        protocol.Connect(id=4, token=encode(_client_token())),
        protocol.SetDnsControl(id=5, mode="auto"),
        protocol.Disconnect(id=6),
        protocol.ClearLogs(id=7),
    ]
    replies: list[protocol.Message] = [
        protocol.StatusReply(
            id=3,
            status=protocol.TunnelStatus(
                state="connected",
                peers=[protocol.PeerStatus(public_key=_KEY_B, allowed_ips=["0.0.0.0/0"])],
            ),
        ),
        protocol.Error(code=protocol.ErrorCode.INVALID_MESSAGE, message="x: missing"),
        protocol.Disconnected(error="gone", needs_new_token=True),
    ]
    seeds = {
        "session": b"".join(protocol.encode(r) for r in requests),
        "too-large-then-hello": protocol.HEADER.pack(protocol.MAX_MESSAGE_SIZE + 1)
        + protocol.encode(requests[0]),
    }
    for message in requests + replies:
        seeds[f"payload-{message.__class__.__name__}"] = protocol.encode(message)[4:]
    return seeds


def gateway() -> dict[str, bytes]:
    return {
        "http-metrics": b"\x00GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "http-healthz": b"\x00GET /healthz HTTP/1.0\r\n\r\n",
        "name": b"\x01laptop-01.corp",
        "endpoint-host": b"\x02vpn.example.com:51820",
        "endpoint-v6": b"\x02[2001:db8::1]:51820",
        "subnets": b"\x03100.64.0.0/16\x00fd7a:115c:a1e0::/64",
        "resources": b"\x0410.1.0.0/16\x00fd00::/64\x000.0.0.0/0",
        "dns": b"\x0510.1.0.53\x00fd00::53",
        "metrics-address": b"\x06[::1]:9586",
    }


def _record(op: int, payload: bytes = b"") -> bytes:
    return bytes([op, len(payload)]) + payload


def wireguard() -> dict[str, bytes]:
    # Kinds (op & 7): 1 initiation, 2 response, 3 cookie reply, 4 transport after the
    # response, 5 transport after D answers the initiation; 6 time; 7 a packet from the TUN.
    return {
        "response-then-data": b"\x00" + _record(2) + _record(4) + _record(7, b"reply"),
        "initiation-then-data": b"\x00" + _record(1) + _record(5) + _record(0x84),
        "cookie-reply": b"\x00" + _record(3) + _record(6, b"\x06") + _record(1),
        "under-load": b"\x01" + _record(1) + _record(0x21),
        "no-initiation": b"\x02" + _record(1) + _record(5),
        "mangled": b"\x00" + _record(2, b"\x10\x01") + _record(0x1C, b"\x10") + _record(0, b"x"),
        "timers": b"\x00" + _record(2) + _record(0x0E, b"\x12") + _record(4),
    }


GENERATORS = {
    "wireguard": wireguard,
    "wgquick": wgquick,
    "token": token,
    "service_frames": service_frames,
    "gateway": gateway,
}


def main() -> None:
    assert tuple(GENERATORS) == TARGETS
    for name, generate in GENERATORS.items():
        directory = CORPUS / name
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for seed, data in generate().items():
            (directory / seed).write_bytes(data)


if __name__ == "__main__":
    main()
