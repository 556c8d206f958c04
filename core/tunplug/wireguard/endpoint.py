"""What a peer's UDP address is, for the whole of tunplug: :data:`Endpoint`.

Who uses it: the device and its peers and cookies (:mod:`tunplug.wireguard`), and above them
the transports (:mod:`tunplug.transport`), configuration and the CLIs. It lives here, in a module
that imports nothing, because the sans-IO WireGuard package must not import the transports.
"""

from __future__ import annotations

#: A peer's UDP address: (IP address as text, port), as ``socket.recvfrom`` gives it for IPv4.
#: IPv6 socket addresses (four fields) are cut to these two.
Endpoint = tuple[str, int]
