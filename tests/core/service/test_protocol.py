"""The protocol's messages and framing: round trips, limits, and errors that never echo input."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from tunplug.service import protocol as p

REQUESTS = [
    p.Hello(id=1, protocol_version=1, client="gui 1.0"),
    p.Connect(id=2, token="tp1.secret.check"),
    p.Disconnect(id=3),
    p.Status(id=4),
    p.SetDnsControl(id=5, mode="systemd-resolved"),
    p.ClearLogs(id=6),
    p.Subscribe(id=7),
]
PEER = p.PeerStatus(public_key="k" * 44, endpoint="[fd01::2]:51820", allowed_ips=["10.0.0.0/24"],
                    latest_handshake=1700000000.5, rx_bytes=10, tx_bytes=20)  # fmt: skip
REPLIES = [
    p.Welcome(id=1, protocol_version=1, service_version="0.1.0", device_id="dev-1"),
    p.Ok(id=2, message="connecting"),
    p.Error(id=3, code=p.ErrorCode.NOT_CONNECTED, message="no tunnel is running"),
    p.StatusReply(id=4, status=p.TunnelStatus(state="connected", managed_by="gui", peers=[PEER])),
    p.TunnelReady(interface="tunplug0", addresses=["10.0.0.2/32"]),
    p.Disconnected(error="boom", needs_new_token=True),
    p.StatsUpdate(interface="tunplug0", peers=[PEER]),
    p.TerminatingGracefully(),
]


def _payload(frame: bytes) -> bytes:
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    return frame[4:]


@pytest.mark.parametrize("message", REQUESTS, ids=lambda m: m.type)
def test_every_request_survives_a_round_trip(message):
    assert p.decode_request(_payload(p.encode(message))) == message


@pytest.mark.parametrize("message", REPLIES, ids=lambda m: m.type)
def test_every_reply_and_event_survives_a_round_trip(message):
    frame = p.encode(message)
    assert json.loads(_payload(frame))["type"] == message.type
    assert p.decode_reply(_payload(frame)) == message


def test_events_carry_id_zero_and_every_field_is_written():
    data = json.loads(_payload(p.encode(p.Disconnected())))
    assert data == {"id": 0, "type": "Disconnected", "error": None, "needs_new_token": False}


def test_the_token_is_not_in_the_repr_of_connect():
    assert "tp1.secret" not in repr(p.Connect(id=1, token="tp1.secret.check"))


def test_unknown_fields_are_ignored_for_forward_compatibility():
    request = p.decode_request(b'{"type": "Status", "id": 9, "added_in_v1_1": true}')
    assert request == p.Status(id=9)
    assert p.decode_reply(b'{"type": "FutureEvent", "id": 0}') is None


@pytest.mark.parametrize(
    "payload", [b'{"id": 3, "type": {"": "a"}}', b'{"id": 3, "type": 7}', b'{"id": 3}']
)
def test_a_reply_whose_type_is_missing_or_not_a_string_is_a_protocol_error(payload):
    # Found by the service_frames fuzzer: an object as "type" was a TypeError (unhashable).
    with pytest.raises(p.ProtocolError) as caught:
        p.decode_reply(payload)
    assert caught.value.code == p.ErrorCode.INVALID_MESSAGE


@pytest.mark.parametrize(
    ("header", "code"),
    [(0, p.ErrorCode.MALFORMED_MESSAGE), (p.MAX_MESSAGE_SIZE + 1, p.ErrorCode.MESSAGE_TOO_LARGE),
     (2**32 - 1, p.ErrorCode.MESSAGE_TOO_LARGE)],
)  # fmt: skip
def test_lengths_out_of_range_are_refused(header, code):
    with pytest.raises(p.ProtocolError) as caught:
        p.frame_length(struct.pack(">I", header))
    assert caught.value.code == code
    assert p.frame_length(struct.pack(">I", p.MAX_MESSAGE_SIZE)) == p.MAX_MESSAGE_SIZE


@pytest.mark.parametrize(
    ("payload", "code", "message_id", "text"),
    [
        (b"\xff\xfe", p.ErrorCode.MALFORMED_MESSAGE, 0, "not UTF-8"),
        (b'{"type": "Status", ', p.ErrorCode.MALFORMED_MESSAGE, 0, "not JSON"),
        (b"[1, 2]", p.ErrorCode.MALFORMED_MESSAGE, 0, "not a JSON object"),
        (b'{"id": 4}', p.ErrorCode.UNKNOWN_MESSAGE_TYPE, 4, "missing"),
        (b'{"type": "Reboot", "id": 5}', p.ErrorCode.UNKNOWN_MESSAGE_TYPE, 5, "'Reboot'"),
        (b'{"type": "Welcome", "id": 5}', p.ErrorCode.UNKNOWN_MESSAGE_TYPE, 5, "request type"),
        (b'{"type": "Hello", "id": 6}', p.ErrorCode.INVALID_MESSAGE, 6, "protocol_version"),
        (b'{"type": "Status", "id": -1}', p.ErrorCode.INVALID_MESSAGE, 0, "id"),
        (b'{"type": "Status", "id": true}', p.ErrorCode.INVALID_MESSAGE, 0, "id"),
    ],
)
def test_bad_requests_name_the_problem(payload, code, message_id, text):
    with pytest.raises(p.ProtocolError) as caught:
        p.decode_request(payload)
    assert (caught.value.code, caught.value.id) == (code, message_id)
    assert text in caught.value.message
    assert caught.value.reply() == p.Error(id=message_id, code=code, message=caught.value.message)


def test_an_invalid_connect_never_quotes_the_token():
    secret = "tp1.SECRETSECRET"
    with pytest.raises(p.ProtocolError) as caught:
        p.decode_request(json.dumps({"type": "Connect", "id": 3, "token": [secret]}).encode())
    assert caught.value.code == p.ErrorCode.INVALID_MESSAGE and caught.value.id == 3
    assert "token" in caught.value.message and "SECRET" not in caught.value.message


def test_a_message_over_the_limit_is_not_sent():
    with pytest.raises(ValueError, match="over the limit"):
        p.encode(p.Ok(id=1, message="x" * p.MAX_MESSAGE_SIZE))


DOC = Path(__file__).parents[3] / "docs" / "ipc.md"


def test_the_protocol_document_covers_every_message_and_error_code():
    text = DOC.read_text()
    for name in sorted(p.REQUEST_TYPES | p.REPLY_TYPES):
        assert re.search(rf'"type": "{name}"', text), f"docs/ipc.md has no example of {name}"
    for code in p.ErrorCode:
        assert f"`{code.value}`" in text, f"docs/ipc.md does not explain {code.value}"
    assert f'protocol_version": {p.PROTOCOL_VERSION}' in text
    assert str(p.MAX_MESSAGE_SIZE) in text
