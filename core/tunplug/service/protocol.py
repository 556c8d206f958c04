"""The tunnel service's wire protocol: every message as a pydantic model, and the framing.

Who calls it: the service (:mod:`tunplug.service.server`), ``tunplug ctl``/``tunplug status``
(:mod:`tunplug.service.client`) and the tests. ``docs/ipc.md`` documents the same protocol for
GUI authors writing a client in another language; keep the two in step.

Framing: a 4-byte big-endian unsigned length, then that many bytes of UTF-8 JSON holding one
object, at most :data:`MAX_MESSAGE_SIZE` bytes. Every object has ``type`` (which message it
is) and ``id``: a request carries an id the client chooses, the reply to it carries the same
id, and events (and errors not tied to a request) carry ``0``. Receivers ignore fields they do
not know, so adding an optional field does not change :data:`PROTOCOL_VERSION`; removing or
changing the meaning of one does.
"""

from __future__ import annotations

import json
import struct
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from tunplug.resources import ResourceView

#: Incompatible changes raise it; additions (optional fields, new messages) do not.
PROTOCOL_VERSION = 1
#: The largest JSON payload either side sends or accepts, in bytes (the header not counted).
MAX_MESSAGE_SIZE = 64 * 1024
#: The frame header: payload length, 4 bytes, big-endian, unsigned.
HEADER = struct.Struct(">I")
#: Largest id a client may use (JSON numbers are exact up to 2**53 in every language).
MAX_ID = 2**53 - 1

TunnelState = Literal["disconnected", "connecting", "connected"]


class ErrorCode(StrEnum):
    """``Error.code``: what went wrong, for programs (``message`` is for people)."""

    #: Peer credentials: not root and not a member of the service's group. The service closes.
    PERMISSION_DENIED = "permission_denied"
    #: ``Hello`` asked for a protocol version the service does not speak. The service closes.
    UNSUPPORTED_VERSION = "unsupported_version"
    #: A request came before ``Hello``.
    HELLO_REQUIRED = "hello_required"
    #: The length prefix exceeds :data:`MAX_MESSAGE_SIZE` (the payload is skipped).
    MESSAGE_TOO_LARGE = "message_too_large"
    #: The connection ended, or stalled, in the middle of a message. The service closes.
    TRUNCATED_MESSAGE = "truncated_message"
    #: Not UTF-8, not JSON, or not a JSON object.
    MALFORMED_MESSAGE = "malformed_message"
    #: ``type`` is missing or names no request.
    UNKNOWN_MESSAGE_TYPE = "unknown_message_type"
    #: A known request with a missing or invalid field.
    INVALID_MESSAGE = "invalid_message"
    #: ``Connect``/``Disconnect`` while a token file manages the tunnel.
    MANAGED_BY_TOKEN_FILE = "managed_by_token_file"
    #: ``Connect`` while connecting or connected.
    ALREADY_CONNECTED = "already_connected"
    #: ``Disconnect`` with no tunnel.
    NOT_CONNECTED = "not_connected"
    #: The token cannot be used (damaged, unknown version, invalid content): get a new one.
    INVALID_TOKEN = "invalid_token"
    #: A setting the request names cannot be used here (e.g. a DNS manager that cannot run).
    UNAVAILABLE = "unavailable"
    #: The service is shutting down and takes no new requests.
    SHUTTING_DOWN = "shutting_down"
    #: A bug in the service; the message says what happened.
    INTERNAL = "internal"


class Message(BaseModel):
    """Fields every message has. Unknown fields are ignored (forward compatibility)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: int = Field(default=0, ge=0, le=MAX_ID, strict=True)


# -- requests (client -> service) -------------------------------------------------------------
class Hello(Message):
    """The first request on every connection: the client's protocol version and name."""

    type: Literal["Hello"] = "Hello"
    protocol_version: int = Field(ge=1)
    #: Free text for the service's log, e.g. ``"my-gui 1.2"``.
    client: str = Field(default="", max_length=200)


class Connect(Message):
    """Bring the tunnel up with a token from ``tunplug-gateway client add``."""

    type: Literal["Connect"] = "Connect"
    token: str = Field(min_length=1, repr=False)


class Disconnect(Message):
    """Take the tunnel down; ``Ok`` comes once the device, routes and DNS are gone."""

    type: Literal["Disconnect"] = "Disconnect"


class Status(Message):
    """Ask for the tunnel's state; the reply is ``StatusReply``."""

    type: Literal["Status"] = "Status"


class SetDnsControl(Message):
    """Choose how DNS servers reach the system, from the next ``Connect`` on."""

    type: Literal["SetDnsControl"] = "SetDnsControl"
    #: ``auto``, ``systemd-resolved``, ``etc-resolv-conf``, ``disabled`` or a plugin's manager.
    mode: str = Field(min_length=1, max_length=64)


class SetInternetResource(Message):
    """Use the gateway's Internet resource (route everything into the tunnel) or stop using
    it; applies to the running tunnel at once and to later ones."""

    type: Literal["SetInternetResource"] = "SetInternetResource"
    active: bool = Field(strict=True)


class ClearLogs(Message):
    """Empty the service's log file and delete its rotated copies."""

    type: Literal["ClearLogs"] = "ClearLogs"


class Subscribe(Message):
    """Receive events (``TunnelReady``, ``Disconnected``, ``StatsUpdate``) from now on."""

    type: Literal["Subscribe"] = "Subscribe"


# -- replies (service -> client, same id as the request) ---------------------------------------
class Welcome(Message):
    """The reply to ``Hello``."""

    type: Literal["Welcome"] = "Welcome"
    protocol_version: int
    service_version: str
    device_id: str


class Ok(Message):
    """A request succeeded; ``message`` may add a note for people."""

    type: Literal["Ok"] = "Ok"
    message: str | None = None


class Error(Message):
    """A request failed, or a message could not be read (then ``id`` is 0 if unknown)."""

    type: Literal["Error"] = "Error"
    code: ErrorCode
    message: str


class PeerStatus(BaseModel):
    """One peer, as ``wg show`` reports it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    public_key: str
    #: ``host:port`` (IPv6 in brackets), or None before the first packet from the peer.
    endpoint: str | None = None
    allowed_ips: list[str] = Field(default_factory=list)
    #: Unix time (seconds) of the last completed handshake, or None.
    latest_handshake: float | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0
    persistent_keepalive: int | None = None


class ResourceStatus(ResourceView):
    """One resource of the gateway's control channel, as the client applied it: its name,
    ``kind`` (``cidr``, ``dns`` or ``internet``), ``target`` (a network, a DNS name or
    wildcard, or ``internet``) and port rules (``tcp/443``; empty: every protocol and port)."""

    #: In the applied view, and the tunnel has had a handshake recent enough to carry traffic.
    reachable: bool = False


class InternetResourceStatus(BaseModel):
    """The gateway's Internet resource for this client."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    #: The gateway offers it to this client.
    offered: bool = False
    #: The user asked for it (``--activate-internet-resource``, ``SetInternetResource``).
    requested: bool = False
    #: All traffic goes through the tunnel now (offered and requested).
    active: bool = False


class TunnelStatus(BaseModel):
    """The tunnel as the service sees it (in ``StatusReply``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    state: TunnelState
    #: ``token_file`` (the service connected on its own; GUIs may only watch), ``gui``, or None.
    managed_by: Literal["token_file", "gui"] | None = None
    #: The client's name at the gateway (from the token).
    client_name: str | None = None
    interface: str | None = None
    listen_port: int | None = None
    public_key: str | None = None
    addresses: list[str] = Field(default_factory=list)
    dns_servers: list[str] = Field(default_factory=list)
    dns_control: str = "auto"
    peers: list[PeerStatus] = Field(default_factory=list)
    #: Why the last tunnel ended, if it failed.
    last_error: str | None = None
    #: The gateway's control channel (``address:port``), when the token has one.
    control: str | None = None
    #: The resources the control channel gave this client.
    resources: list[ResourceStatus] = Field(default_factory=list)
    #: The Internet resource (``None`` without a control channel).
    internet_resource: InternetResourceStatus | None = None


class StatusReply(Message):
    """The reply to ``Status``."""

    type: Literal["StatusReply"] = "StatusReply"
    status: TunnelStatus


# -- events (service -> client, id 0) ----------------------------------------------------------
class TunnelReady(Message):
    """The interface is up with addresses, routes and DNS: traffic can flow."""

    type: Literal["TunnelReady"] = "TunnelReady"
    interface: str
    addresses: list[str] = Field(default_factory=list)
    dns_servers: list[str] = Field(default_factory=list)


class Disconnected(Message):
    """The tunnel is down; ``error`` is None after ``Disconnect`` or shutdown."""

    type: Literal["Disconnected"] = "Disconnected"
    error: str | None = None
    #: The token was refused or is unusable: ask the user for a new one.
    needs_new_token: bool = False


class StatsUpdate(Message):
    """Every second while connected: each peer's counters."""

    type: Literal["StatsUpdate"] = "StatsUpdate"
    interface: str
    peers: list[PeerStatus]
    #: As in ``TunnelStatus``: the control channel's resources and the Internet resource.
    resources: list[ResourceStatus] = Field(default_factory=list)
    internet_resource: InternetResourceStatus | None = None


class TerminatingGracefully(Message):
    """The service is stopping: the tunnel goes down and the connection closes next."""

    type: Literal["TerminatingGracefully"] = "TerminatingGracefully"


Request = Annotated[
    Hello
    | Connect
    | Disconnect
    | Status
    | SetDnsControl
    | SetInternetResource
    | ClearLogs
    | Subscribe,
    Field(discriminator="type"),
]
Reply = Annotated[
    Welcome
    | Ok
    | Error
    | StatusReply
    | TunnelReady
    | Disconnected
    | StatsUpdate
    | TerminatingGracefully,
    Field(discriminator="type"),
]
REQUESTS: TypeAdapter[Request] = TypeAdapter(Request)
REPLIES: TypeAdapter[Reply] = TypeAdapter(Reply)
REQUEST_TYPES = frozenset(
    ("Hello", "Connect", "Disconnect", "Status", "SetDnsControl", "ClearLogs", "Subscribe")
) | {"SetInternetResource"}
REPLY_TYPES = frozenset(
    ("Welcome", "Ok", "Error", "StatusReply", "TunnelReady", "Disconnected", "StatsUpdate")
) | {"TerminatingGracefully"}


class ProtocolError(Exception):
    """A frame or message that cannot be used; ``code`` and ``id`` go into the Error reply.

    ``message`` never quotes what was received (it might hold a token).
    """

    def __init__(self, code: ErrorCode, message: str, id: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id

    def reply(self) -> Error:
        return Error(id=self.id, code=self.code, message=self.message)


def encode(message: Message) -> bytes:
    """One frame: the header and the message's JSON (None fields kept, as documented).

    :raises ValueError: the JSON exceeds :data:`MAX_MESSAGE_SIZE` (a bug in the sender).
    """
    payload = message.model_dump_json().encode("utf-8")
    if len(payload) > MAX_MESSAGE_SIZE:
        raise ValueError(f"{message.__class__.__name__} is {len(payload)} bytes, over the limit")
    return HEADER.pack(len(payload)) + payload


def frame_length(header: bytes) -> int:
    """The payload length a header announces.

    :raises ProtocolError: zero, or more than :data:`MAX_MESSAGE_SIZE`.
    """
    length: int = HEADER.unpack(header)[0]
    if length > MAX_MESSAGE_SIZE:
        raise ProtocolError(
            ErrorCode.MESSAGE_TOO_LARGE,
            f"message of {length} bytes exceeds the limit of {MAX_MESSAGE_SIZE} bytes",
        )
    if length == 0:
        raise ProtocolError(ErrorCode.MALFORMED_MESSAGE, "empty message (length 0)")
    return length


def _parse_object(payload: bytes) -> dict[str, Any]:
    try:
        data = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.MALFORMED_MESSAGE, "message is not UTF-8") from None
    except ValueError as exc:
        raise ProtocolError(ErrorCode.MALFORMED_MESSAGE, f"message is not JSON: {exc}") from None
    except RecursionError:  # e.g. 1,000 nested arrays: well within MAX_MESSAGE_SIZE
        raise ProtocolError(ErrorCode.MALFORMED_MESSAGE, "message is nested too deeply") from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.MALFORMED_MESSAGE, "message is not a JSON object")
    return data


def _message_id(data: dict[str, Any]) -> int:
    value = data.get("id")
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID:
        return value
    return 0


def _validation_message(exc: ValidationError) -> str:
    """The first problem as one line, without the received value (it may be a token)."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"][1:] or first["loc"]) or "message"
    return f"{where}: {first['msg']}"


def decode_request(payload: bytes) -> Request:
    """A request from one frame's payload.

    :raises ProtocolError: not a JSON object, an unknown ``type``, or an invalid field; the
        error carries the message's ``id`` when it had a usable one.
    """
    data = _parse_object(payload)
    message_id = _message_id(data)
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in REQUEST_TYPES:
        shown = repr(kind)[:60] if isinstance(kind, str) else "missing or not a string"
        raise ProtocolError(
            ErrorCode.UNKNOWN_MESSAGE_TYPE,
            f"unknown request type {shown} (known: {', '.join(sorted(REQUEST_TYPES))})",
            message_id,
        )
    try:
        return REQUESTS.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"{kind}: {_validation_message(exc)}", message_id
        ) from None


def decode_reply(payload: bytes) -> Reply | None:
    """A reply or event from the service; None for a type this client does not know (skip it).

    :raises ProtocolError: not a JSON object, a ``type`` that is missing or not a string, or a
        known type with invalid fields.
    """
    data = _parse_object(payload)
    kind = data.get("type")
    if not isinstance(kind, str):
        # Not a newer type this client may skip: no type at all (an object is unhashable).
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "a reply's type is missing or not a string")
    if kind not in REPLY_TYPES:
        return None
    try:
        return REPLIES.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"{kind}: {_validation_message(exc)}"
        ) from None
