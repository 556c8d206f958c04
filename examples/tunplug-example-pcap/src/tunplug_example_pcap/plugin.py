"""The hooks of the example plugin (entry point ``example-pcap`` in group ``tunplug``)."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from typing import BinaryIO, Self

import anyio

from tunplug import hookimpl
from tunplug.config import TunplugSettings
from tunplug.events import TunnelInfo
from tunplug.exceptions import BackendUnavailable, ClosedResource
from tunplug.pipeline import Stage
from tunplug.tun import Packet, Tun, TunOptions
from tunplug_example_pcap.pcap import read_packets, write_header, write_packet


class PcapWriter:
    """A pipeline stage appending every packet, both directions, to one pcap file."""

    name = "pcap-writer"

    def __init__(self, path: str) -> None:
        self.stream: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed on tunnel down
        write_header(self.stream)

    def _record(self, packets: list[Packet]) -> list[Packet]:
        for packet in packets:
            write_packet(self.stream, packet)
        self.stream.flush()
        return packets

    outbound = _record
    inbound = _record

    def close(self) -> None:
        self.stream.close()


class PcapReplayTun(Tun):
    """A TUN device that replays one capture and records what is written to it."""

    backend_name = "pcap-replay"
    description = "replays TUNPLUG_PCAP_REPLAY_IN, records to TUNPLUG_PCAP_REPLAY_OUT"

    def __init__(self, options: TunOptions, source: list[bytes], sink: BinaryIO) -> None:
        self.name = options.name or "pcap0"
        self.mtu = options.mtu
        self.queues = 1
        self.batch_size = options.batch_size
        self._pending = deque(source)
        self._sink = sink
        self._closed = anyio.Event()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not os.environ.get("TUNPLUG_PCAP_REPLAY_IN"):
            return "set TUNPLUG_PCAP_REPLAY_IN to a pcap file to replay"
        return None

    @classmethod
    async def create(cls, options: TunOptions) -> Self:
        reason = cls.unavailable_reason()
        if reason:
            raise BackendUnavailable(reason)
        source, sink = await anyio.to_thread.run_sync(_open_capture_files)
        return cls(options, source, sink)

    async def recv_many(self, max_packets: int | None = None) -> Sequence[Packet]:
        if self._closed.is_set():
            raise ClosedResource("pcap replay device is closed")
        if not self._pending:
            await self._closed.wait()  # the capture is exhausted: nothing more ever arrives
            raise ClosedResource("pcap replay device is closed")
        count = min(max_packets or self.batch_size, len(self._pending))
        return [self._pending.popleft() for _ in range(count)]

    async def send_ready(self) -> None:
        if self._closed.is_set():
            raise ClosedResource("pcap replay device is closed")

    def send(self, packets: Sequence[Packet]) -> None:
        if self._closed.is_set():
            raise ClosedResource("pcap replay device is closed")
        for packet in packets:
            write_packet(self._sink, packet)

    async def aclose(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._sink.close()


def _open_capture_files() -> tuple[list[bytes], BinaryIO]:
    with open(os.environ["TUNPLUG_PCAP_REPLAY_IN"], "rb") as stream:
        source = list(read_packets(stream))
    sink = open(os.environ.get("TUNPLUG_PCAP_REPLAY_OUT", os.devnull), "wb")  # noqa: SIM115
    write_header(sink)
    return source, sink


_writers: dict[str, PcapWriter] = {}


@hookimpl
def tunplug_register_tun_backends() -> Sequence[type[Tun]]:
    return [PcapReplayTun]


@hookimpl
def tunplug_pipeline_stages(settings: TunplugSettings, tunnel: TunnelInfo) -> Sequence[Stage]:
    path = os.environ.get("TUNPLUG_PCAP_FILE")
    if not path:
        return []
    writer = PcapWriter(path)
    _writers[tunnel.interface] = writer
    return [writer]


@hookimpl
def tunplug_tunnel_down(tunnel: TunnelInfo, error: BaseException | None) -> None:
    writer = _writers.pop(tunnel.interface, None)
    if writer is not None:
        writer.close()
