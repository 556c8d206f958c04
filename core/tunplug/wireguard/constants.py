"""WireGuard's protocol constants, under the names the whitepaper (section 6) gives them.

Who uses it: every module of :mod:`tunplug.wireguard`. Times are in seconds. The values a test
or an operator may want to shorten are also fields of :class:`tunplug.wireguard.Timing`, whose
defaults come from here.
"""

from __future__ import annotations

from typing import Final

# -- Noise ---------------------------------------------------------------------------------------
CONSTRUCTION: Final = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER: Final = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1: Final = b"mac1----"
LABEL_COOKIE: Final = b"cookie--"

# -- Timers and limits (whitepaper section 6.1 and 6.4) ------------------------------------------
REKEY_AFTER_MESSAGES: Final = 2**60
REJECT_AFTER_MESSAGES: Final = 2**64 - 2**13 - 1
REKEY_AFTER_TIME: Final = 120.0
REJECT_AFTER_TIME: Final = 180.0
REKEY_ATTEMPT_TIME: Final = 90.0
REKEY_TIMEOUT: Final = 5.0
KEEPALIVE_TIMEOUT: Final = 10.0
COOKIE_REFRESH_TIME: Final = 120.0
#: Upper bound of the random delay added to each handshake retransmission (wireguard-go).
REKEY_TIMEOUT_JITTER_MAX: Final = 0.334
#: How often the initiator retransmits before giving up: REKEY_ATTEMPT_TIME / REKEY_TIMEOUT.
MAX_TIMER_HANDSHAKES: Final = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)
#: An unused session is erased this long after it was derived (3 x REJECT_AFTER_TIME).
ZERO_KEY_MATERIAL_AFTER: Final = 3 * REJECT_AFTER_TIME
#: Two initiations from one peer closer together than this are a flood (wireguard-go: 50/s).
HANDSHAKE_INITIATION_RATE: Final = 1 / 50

# -- Denial-of-service protection ----------------------------------------------------------------
#: Handshake messages per second per source IP, and the burst allowed (wireguard-go ratelimiter).
HANDSHAKES_PER_SECOND: Final = 20
HANDSHAKE_BURST: Final = 5
#: Sources the handshake rate limiter tracks at most; a new source beyond that is refused (the
#: Linux kernel's ratelimiter has such a cap too), so a flood of spoofed sources costs bounded
#: memory and each refusal is one dictionary lookup.
RATE_LIMITER_MAX_ENTRIES: Final = 65536
#: A source whose handshakes are refused by the rate limiter this often per second (five times
#: the rate it is allowed) is flooding: its handshake messages are then dropped by a socket
#: filter in the kernel (``tunplug.socket_filter``), before any work in tunplug.
FLOOD_REFUSALS_PER_SECOND: Final = 100
#: How long a flooding source stays blocked after its flood was last seen.
FLOOD_BLOCK_TIME: Final = 5.0
#: While a source is blocked, one of this many of its handshake messages still reaches tunplug
#: (a random sample, decided by the filter), so that the flood's rate stays known.
FLOOD_SAMPLE_ONE_IN: Final = 256
#: Sources blocked at once at most (the worst offenders); a filter of this size stays far below
#: the kernel's 4096 instructions.
FLOOD_MAX_BLOCKED: Final = 256
#: Handshake messages per second (from sources not blocked) from which the flood counts as
#: spread over too many sources to block one by one (spoofed addresses): the filter then lets
#: only a random sample of everyone's handshake messages through, about
#: SPREAD_FLOOD_ADMITTED_PER_SECOND of them. Far above what clients need: 10,000 clients
#: rekeying every two minutes send about 85 a second.
SPREAD_FLOOD_PER_SECOND: Final = 4000
SPREAD_FLOOD_ADMITTED_PER_SECOND: Final = 1000
#: Handshake messages in one second from which the device counts as under load (wireguard-go:
#: a queue of QueueHandshakeSize / 8 = 128 waiting handshakes).
UNDER_LOAD_THRESHOLD: Final = 128
#: How long the device stays under load after the threshold was last reached.
UNDER_LOAD_AFTER_TIME: Final = 1.0

# -- Message types and sizes (little-endian on the wire) -----------------------------------------
MESSAGE_INITIATION: Final = 1
MESSAGE_RESPONSE: Final = 2
MESSAGE_COOKIE_REPLY: Final = 3
MESSAGE_TRANSPORT: Final = 4

INITIATION_SIZE: Final = 148
RESPONSE_SIZE: Final = 92
COOKIE_REPLY_SIZE: Final = 64
TRANSPORT_HEADER_SIZE: Final = 16
TAG_SIZE: Final = 16
KEEPALIVE_SIZE: Final = TRANSPORT_HEADER_SIZE + TAG_SIZE
MIN_TRANSPORT_SIZE: Final = KEEPALIVE_SIZE
MAC_SIZE: Final = 16
KEY_SIZE: Final = 32
COOKIE_NONCE_SIZE: Final = 24
TAI64N_SIZE: Final = 12
#: Plaintext is zero-padded to a multiple of this, never beyond the MTU.
PADDING_MULTIPLE: Final = 16

# -- Replay protection (RFC 6479 as wireguard-go sizes it: 128 blocks of 64 bits) ----------------
REPLAY_WINDOW_SIZE: Final = (128 - 1) * 64

# -- Queues --------------------------------------------------------------------------------------
#: Packets kept per peer while no session exists; the oldest are dropped beyond this.
MAX_STAGED_PACKETS: Final = 128
