"""Byte layouts of the four WireGuard messages, as :mod:`struct` formats and offsets.

Who uses it: :mod:`~tunplug.wireguard.noise` (handshake messages), :mod:`~tunplug.wireguard.cookie`
(mac1/mac2 and cookie replies) and :mod:`~tunplug.wireguard.device` (dispatch, transport). All
integers are little-endian; the type is one byte followed by three zero bytes, read here as a
little-endian u32 so that a message with non-zero reserved bytes is rejected as a bad type.

::

    initiation (148)  type=1 | sender u32 | ephemeral 32 | static 32+16 | timestamp 12+16
                      | mac1 16 | mac2 16
    response    (92)  type=2 | sender u32 | receiver u32 | ephemeral 32 | empty 0+16
                      | mac1 16 | mac2 16
    cookie      (64)  type=3 | receiver u32 | nonce 24 | cookie 16+16
    transport (>=32)  type=4 | receiver u32 | counter u64 | ciphertext (padded plaintext + 16)
"""

from __future__ import annotations

import struct
from typing import Final

from tunplug.wireguard.constants import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    MAC_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    RESPONSE_SIZE,
)

#: type, sender, ephemeral, encrypted static, encrypted timestamp (the MACs follow).
INITIATION: Final = struct.Struct("<II32s48s28s")
#: type, sender, receiver, ephemeral, encrypted empty (the MACs follow).
RESPONSE: Final = struct.Struct("<III32s16s")
#: type, receiver, nonce, encrypted cookie.
COOKIE_REPLY: Final = struct.Struct("<II24s32s")
#: type, receiver, counter.
TRANSPORT_HEADER: Final = struct.Struct("<IIQ")
#: The first word of every message: the type with its three reserved zero bytes.
MESSAGE_TYPE: Final = struct.Struct("<I")

#: Size of every fixed-size message type; transport messages have a minimum instead.
FIXED_SIZES: Final = {
    MESSAGE_INITIATION: INITIATION_SIZE,
    MESSAGE_RESPONSE: RESPONSE_SIZE,
    MESSAGE_COOKIE_REPLY: COOKIE_REPLY_SIZE,
}

_ZEROS: Final = bytes(16)

#: The transport type word, ready to prefix a header.
TRANSPORT_TYPE_BYTES: Final = MESSAGE_TYPE.pack(MESSAGE_TRANSPORT)


def padded(packet: bytes | bytearray | memoryview, mtu: int) -> bytes | memoryview:
    """``packet`` zero-padded to a multiple of 16 bytes, not beyond ``mtu`` (wireguard-go's
    ``calculatePaddingSize``)."""
    size = len(packet)
    last = size % mtu if size > mtu else size
    target = min((last + 15) & ~15, mtu)
    if target <= last:
        return packet if not isinstance(packet, bytearray) else bytes(packet)
    return bytes(packet) + _ZEROS[: target - last]


def mac1_offset(message_size: int) -> int:
    """Where mac1 starts: mac1 covers everything before it."""
    return message_size - 2 * MAC_SIZE


def mac2_offset(message_size: int) -> int:
    """Where mac2 starts: mac2 covers everything before it, mac1 included."""
    return message_size - MAC_SIZE


def sender_index(message: bytes | bytearray | memoryview) -> int:
    """The sender index of an initiation or a response (bytes 4..8)."""
    value: int = MESSAGE_TYPE.unpack_from(message, 4)[0]
    return value
