"""A small DNS server for tests: A, AAAA and CNAME records from a dict, over UDP.

Who calls it: the gateway's DNS tests (as the upstream the gateway resolves DNS resources
with) and the end-to-end test of DNS resources (in a resource namespace, as a process)::

    server = StaticDnsServer({"db.corp.example": ["10.10.0.7"], "*.corp.example": ["10.10.0.8"]})
    async with anyio.create_task_group() as tasks:
        port = await tasks.start(server.serve, "127.0.0.1", 0)

    python -m tunplug.testing.dns_server 10.210.0.53 53 db.corp.example=10.210.0.2

A name is looked up exactly, then as ``*.`` + each of its parent domains. A value that is not
an address is a CNAME, followed within the dict. Unknown names: NXDOMAIN. Every query is
counted in :attr:`StaticDnsServer.queries`.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Mapping, Sequence
from ipaddress import ip_address

import anyio
import anyio.abc
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["StaticDnsServer"]


class StaticDnsServer:
    """Answers from ``records`` (name or ``*.domain`` -> addresses or one CNAME target)."""

    def __init__(self, records: Mapping[str, Sequence[str]], ttl: int = 300) -> None:
        self.records = {name.lower().rstrip("."): list(values) for name, values in records.items()}
        self.ttl = ttl
        self.queries: list[tuple[str, str]] = []

    def _lookup(self, name: str) -> list[str] | None:
        if name in self.records:
            return self.records[name]
        labels = name.split(".")
        for index in range(1, len(labels)):
            wildcard = "*." + ".".join(labels[index:])
            if wildcard in self.records:
                return self.records[wildcard]
        return None

    def answer(self, wire: bytes) -> bytes | None:
        """The response to the query ``wire`` (None: not a DNS query)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA | dns.flags.RA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        self.queries.append((name, dns.rdatatype.to_text(question.rdtype)))
        owner = question.name
        for _ in range(8):  # CNAME chain, bounded
            values = self._lookup(owner.to_text(omit_final_dot=True).lower())
            if values is None:
                if owner == question.name:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                break
            addresses = [value for value in values if _is_address(value)]
            if not addresses and values:
                target = dns.name.from_text(values[0])
                response.answer.append(
                    dns.rrset.from_text_list(
                        owner, self.ttl, dns.rdataclass.IN, dns.rdatatype.CNAME, [target.to_text()]
                    )
                )
                owner = target
                continue
            version = 4 if question.rdtype == dns.rdatatype.A else 6
            wanted = [a for a in addresses if ip_address(a).version == version]
            if question.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) and wanted:
                response.answer.append(
                    dns.rrset.from_text_list(
                        owner, self.ttl, dns.rdataclass.IN, question.rdtype, wanted
                    )
                )
            break
        return response.to_wire()

    async def serve(
        self,
        host: str,
        port: int = 53,
        *,
        task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer on UDP ``host``:``port`` until cancelled; ``task_status`` gets the port."""
        async with await anyio.create_udp_socket(
            family=socket.AF_INET6 if ":" in host else socket.AF_INET,
            local_host=host,
            local_port=port,
        ) as udp:
            task_status.started(int(udp.extra(anyio.abc.SocketAttribute.local_port)))
            async for wire, (peer, peer_port) in udp:
                answer = self.answer(wire)
                if answer is not None:
                    await udp.sendto(answer, peer, peer_port)


def _is_address(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True


def main(argv: Sequence[str]) -> None:
    """``ADDRESS PORT NAME=VALUE[,VALUE...]...``: serve until killed."""
    host, port, *pairs = argv
    records: dict[str, list[str]] = {}
    for pair in pairs:
        name, _, values = pair.partition("=")
        records[name] = values.split(",")
    server = StaticDnsServer(records)
    print(f"serving DNS on {host}:{port}", flush=True)
    anyio.run(server.serve, host, int(port))


if __name__ == "__main__":
    main(sys.argv[1:])
