"""The tunnel service's frames (:mod:`tunplug.service.protocol`), read as the service reads a
client's connection: header, ``frame_length``, payload, ``decode_request``, repeated.

Contract: ``frame_length`` and ``decode_request`` document ``ProtocolError`` only; the service
answers it with ``exc.reply()``, which must encode. ``decode_reply`` (the client reading the
service) documents ``ProtocolError`` or None. A request that decodes must encode again and
decode to itself (the service's replies reuse the same models).
"""

from __future__ import annotations

from tunplug.service import protocol as p

HANDLED: tuple[type[BaseException], ...] = (p.ProtocolError,)


def _payloads(stream: bytes) -> list[bytes]:
    """The payloads the service's read loop would pass on, with its framing errors answered."""
    payloads = []
    offset = 0
    while len(stream) - offset >= p.HEADER.size:
        header = stream[offset : offset + p.HEADER.size]
        offset += p.HEADER.size
        try:
            length = p.frame_length(header)
        except HANDLED as exc:
            assert isinstance(exc, p.ProtocolError)
            p.encode(exc.reply())
            if exc.code is p.ErrorCode.MESSAGE_TOO_LARGE:
                offset += p.HEADER.unpack(header)[0]
            continue
        payload = stream[offset : offset + length]
        offset += length
        if len(payload) < length:
            break  # the service answers "truncated" and closes
        payloads.append(payload)
    return payloads


def test_one_input(data: bytes) -> None:
    # A lone payload too, so that the fuzzer need not learn the length prefix first.
    for payload in [data[: p.MAX_MESSAGE_SIZE], *_payloads(data)]:
        try:
            request = p.decode_request(payload)
        except HANDLED as exc:
            assert isinstance(exc, p.ProtocolError)
            assert 0 <= exc.id <= p.MAX_ID
            p.encode(exc.reply())
        else:
            frame = p.encode(request)
            assert p.frame_length(frame[: p.HEADER.size]) == len(frame) - p.HEADER.size
            assert p.decode_request(frame[p.HEADER.size :]) == request
        try:
            reply = p.decode_reply(payload)
        except HANDLED:
            continue
        if reply is not None:
            assert p.decode_reply(p.encode(reply)[p.HEADER.size :]) == reply
