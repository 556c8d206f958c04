"""WireGuard as a sans-IO protocol: the state machine the tunnel engine drives.

Who calls it: :mod:`tunplug.engine` (through :class:`WireGuardDevice`), configuration loading
(:class:`PeerConfig`, :func:`parse_key`) and the CLIs. Nothing here opens a socket, starts a
thread or reads a clock: callers pass bytes and ``now`` in and send what comes out.

Modules: :mod:`.constants` (whitepaper names), :mod:`.messages` (byte layouts), :mod:`.noise`
(handshake), :mod:`.cookie` (mac1/mac2, cookies, load and rate limits), :mod:`.replay` (replay
window), :mod:`.timers`, :mod:`.peer`, :mod:`.routing` (cryptokey routing), :mod:`.keys`
(base64 keys, clamping), :mod:`.endpoint` (UDP addresses), :mod:`.ip` (inner IP headers) and
:mod:`.device` (the interface), whose parts are :mod:`.send`, :mod:`.receive`,
:mod:`.device_timers` and :mod:`.state`.
"""

from tunplug.wireguard.device import WireGuardDevice
from tunplug.wireguard.endpoint import Endpoint
from tunplug.wireguard.keys import format_key, parse_key
from tunplug.wireguard.peer import PeerConfig, PeerStats
from tunplug.wireguard.state import Output
from tunplug.wireguard.timers import Timing

__all__ = [
    "Endpoint",
    "Output",
    "PeerConfig",
    "PeerStats",
    "Timing",
    "WireGuardDevice",
    "format_key",
    "parse_key",
]
