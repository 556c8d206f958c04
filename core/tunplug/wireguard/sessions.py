"""The index table and the keypair slots: which 32-bit receiver index names what, and how a
new session moves a peer's current/previous/next keypairs.

Who calls it: :class:`tunplug.wireguard.WireGuardDevice` only. Every local index names either
a peer's handshake in progress (the index in its initiation or response) or a keypair (the
receiver index of transport messages); a response is looked up by the former, transport data
by the latter. Indices are random 32-bit values, never reused while in the table.

Slot rules (whitepaper 6.3, wireguard-go ``BeginSymmetricSession``/``ReceivedWithKeypair``):
the initiator makes a new session ``current`` at once; the responder parks it in ``next``
until the first transport message confirms it (:meth:`IndexTable.confirm_next`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tunplug.wireguard.peer import Keypair, Peer


class IndexTable:
    """Local receiver index -> the peer whose handshake owns it, or the keypair it names."""

    __slots__ = ("_entries", "_random", "entries")

    def __init__(self, random: Callable[[int], bytes]) -> None:
        self._random = random
        self._entries: dict[int, Peer | Keypair] = {}
        #: The table itself, read-only by convention, for the per-packet lookups.
        self.entries: Mapping[int, Peer | Keypair] = self._entries

    def get(self, index: int) -> Peer | Keypair | None:
        return self._entries.get(index)

    def __len__(self) -> int:
        return len(self._entries)

    # -- handshakes -------------------------------------------------------------------------
    def new_handshake_index(self, peer: Peer) -> int:
        """Give ``peer``'s next handshake message a fresh index (the old one stops working)."""
        self.forget_handshake_index(peer)
        entries = self._entries
        while True:
            index = int.from_bytes(self._random(4), "little")
            if index not in entries:
                break
        entries[index] = peer
        peer.handshake.local_index = index
        return index

    def forget_handshake_index(self, peer: Peer) -> None:
        index = peer.handshake.local_index
        if index and self._entries.get(index) is peer:
            del self._entries[index]

    def forget_handshake(self, peer: Peer) -> None:
        self.forget_handshake_index(peer)
        peer.handshake.clear()

    # -- keypairs ---------------------------------------------------------------------------
    def delete_keypair(self, keypair: Keypair | None) -> None:
        if keypair is not None and self._entries.get(keypair.local_index) is keypair:
            del self._entries[keypair.local_index]

    def install(self, peer: Peer, keypair: Keypair) -> None:
        """Register a freshly derived session (its index was the handshake's) and rotate."""
        self._entries[keypair.local_index] = keypair
        if keypair.is_initiator:
            old_previous = peer.previous
            if peer.next is not None:
                peer.previous = peer.next
                peer.next = None
                self.delete_keypair(peer.current)
            else:
                peer.previous = peer.current
            self.delete_keypair(old_previous)
            peer.current = keypair
        else:
            self.delete_keypair(peer.next)
            peer.next = keypair
            self.delete_keypair(peer.previous)
            peer.previous = None

    def confirm_next(self, peer: Peer, keypair: Keypair) -> None:
        """The initiator used the session we responded with: it becomes ``current``."""
        old_previous = peer.previous
        peer.previous = peer.current
        peer.current = keypair
        peer.next = None
        self.delete_keypair(old_previous)

    def zero_and_flush(self, peer: Peer) -> None:
        """Forget every session and the handshake of ``peer``, and drop its staged packets."""
        for keypair in peer.keypairs():
            self.delete_keypair(keypair)
        peer.current = peer.previous = peer.next = None
        self.forget_handshake(peer)
        peer.staged.clear()
