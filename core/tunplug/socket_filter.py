"""A classic BPF socket filter that drops flooding sources' handshake messages in the kernel.

Who calls it: :meth:`tunplug.transport.UdpTransport.block_handshakes`, fed by the engines with
:meth:`tunplug.wireguard.WireGuardDevice.handshake_floods` (see :mod:`tunplug.wireguard.flood`
for who is blocked and for how long). Linux only.

Why in the kernel: a handshake flood from one source at 100k+ datagrams a second costs a
receive call and some interpreter work per datagram even when the rate limiter refuses each
one for a dictionary lookup, and that alone takes the CPU the tunnel's data needs. The filter
runs before the datagram is queued on the socket, so a blocked source's handshakes cost neither
data path anything. What the program does, per datagram (the filter sees the UDP header at
offset 0, the IP header at ``SKF_NET_OFF``):

1. a transport data message (type 4) passes at once: data is never filtered, not even a
   blocked source's;
2. anything else from a blocked source (IPv4 address, or IPv6 /64) passes with probability
   1/``sample_one_in`` (the kernel's random number), else is dropped;
3. anything else passes with probability 1/``others_one_in`` (1: always; more only under a
   flood spread over too many sources to block).

With no blocked source and ``others_one_in`` 1 no filter is attached at all. Facts:
``SO_ATTACH_FILTER`` (26), ``SO_DETACH_FILTER`` (27), ``struct sock_filter``/``sock_fprog`` and
the ``SKF_NET_OFF`` / ``SKF_AD_RANDOM`` ancillary loads are from ``linux/filter.h`` and
``asm-generic/socket.h``.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from collections.abc import Collection

SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
#: The kernel's limit on a classic BPF program (BPF_MAXINSNS).
MAX_INSTRUCTIONS = 4096

# Opcodes (linux/bpf_common.h).
_LD_B_ABS = 0x00 | 0x10 | 0x20  # BPF_LD | BPF_B | BPF_ABS
_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
_RSH_K = 0x04 | 0x70 | 0x00  # BPF_ALU | BPF_RSH | BPF_K
_JA = 0x05 | 0x00  # BPF_JMP | BPF_JA
_JEQ_K = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x05 | 0x30 | 0x00  # BPF_JMP | BPF_JGE | BPF_K
_RET_K = 0x06 | 0x00  # BPF_RET | BPF_K
_SKF_NET_OFF = -0x100000
_SKF_AD_RANDOM = -0x1000 + 56
_ACCEPT = 0xFFFFFFFF  # keep the whole datagram
_DROP = 0
_MESSAGE_TYPE = 8  # the UDP payload's first byte
_TRANSPORT = 4

_Insn = tuple[int, int, int, int]


def _insn(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> _Insn:
    return (code, jt, jf, k & 0xFFFFFFFF)


def _sample(one_in: int) -> list[_Insn]:
    """Pass one in ``one_in`` at random (the kernel's prandom), drop the rest."""
    if one_in <= 1:
        return [_insn(_RET_K, _ACCEPT)]
    return [
        _insn(_LD_W_ABS, _SKF_AD_RANDOM),
        _insn(_JGE_K, max(1, (1 << 32) // one_in), jt=0, jf=1),
        _insn(_RET_K, _DROP),
        _insn(_RET_K, _ACCEPT),
    ]


def guard_program(
    blocked: Collection[bytes], sample_one_in: int, others_one_in: int = 1
) -> list[_Insn]:
    """The filter's instructions as ``(code, jt, jf, k)``. ``blocked`` holds 4-byte IPv4
    addresses and 8-byte IPv6 prefixes (/64).

    :raises ValueError: a source of another length, or a program over MAX_INSTRUCTIONS.
    """
    v4 = sorted(s for s in blocked if len(s) == 4)
    v6 = sorted(s for s in blocked if len(s) == 8)
    if len(v4) + len(v6) != len(blocked):
        raise ValueError("blocked sources are 4-byte IPv4 addresses or 8-byte IPv6 prefixes")
    head = [
        _insn(_LD_B_ABS, _MESSAGE_TYPE),
        _insn(_JEQ_K, _TRANSPORT, jt=0, jf=1),
        _insn(_RET_K, _ACCEPT),
        _insn(_LD_B_ABS, _SKF_NET_OFF),  # version and header length
        _insn(_RSH_K, 4),
        _insn(_JEQ_K, 6, jt=0, jf=1),
    ]
    # Every source comparison that matches jumps to ``blocked``; no match jumps to ``others``.
    # Placeholders: "ja" with k=-1 (blocked) and k=-2 (others), resolved below.
    to_blocked, to_others = _insn(_JA, -1), _insn(_JA, -2)
    ipv4 = [_insn(_LD_W_ABS, _SKF_NET_OFF + 12)]  # source address
    for source in v4:
        ipv4 += [_insn(_JEQ_K, int.from_bytes(source, "big"), jt=0, jf=1), to_blocked]
    ipv4.append(to_others)
    ipv6: list[_Insn] = []
    for source in v6:
        ipv6 += [
            _insn(_LD_W_ABS, _SKF_NET_OFF + 8),  # source address, first half of the /64
            _insn(_JEQ_K, int.from_bytes(source[:4], "big"), jt=0, jf=3),
            _insn(_LD_W_ABS, _SKF_NET_OFF + 12),
            _insn(_JEQ_K, int.from_bytes(source[4:], "big"), jt=0, jf=1),
            to_blocked,
        ]
    ipv6.append(to_others)
    program = [*head, _insn(_JA, len(ipv4)), *ipv4, *ipv6]
    blocked_at = len(program)
    program += _sample(sample_one_in)
    others_at = len(program)
    program += _sample(others_one_in)
    targets = {to_blocked: blocked_at, to_others: others_at}
    for index, insn in enumerate(program):
        if index > len(head) and insn in targets:
            program[index] = _insn(_JA, targets[insn] - index - 1)
    if len(program) > MAX_INSTRUCTIONS:
        raise ValueError(f"socket filter of {len(program)} instructions (at most 4096)")
    return program


def attach(sock: socket.socket, program: list[_Insn]) -> None:
    """Replace the socket's filter with ``program`` (the kernel copies it)."""
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def detach(sock: socket.socket) -> None:
    """Remove the socket's filter; no filter attached is fine."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
