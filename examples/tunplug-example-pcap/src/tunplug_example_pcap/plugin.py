"""The hooks of the example plugin (entry point ``example-pcap`` in group ``tunplug``).

A worked example of the plugin API (see ``docs/plugins.md``):

- ``tunplug_add_settings`` declares :class:`PcapSettings`: each field is a flag and a
  ``TUNPLUG_*`` variable of the commands that run tunnels, validated by tunplug;
- ``tunplug_pipeline_stages`` creates one :class:`PcapWriter` per tunnel: the stage *is* the
  tunnel's state (no module globals); tunplug ticks it about once a second (it flushes the
  file then) and closes it when the tunnel goes down;
- ``tunplug_register_tun_backends`` adds the :class:`PcapReplayTun` backend, which finds its
  settings in ``options.settings`` instead of reading the environment.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Self

import anyio
from pydantic import Field

from tunplug import hookimpl
from tunplug.config import PluginSettings, TunplugSettings
from tunplug.events import TunnelInfo
from tunplug.exceptions import BackendUnavailable, ClosedResource, ConfigError
from tunplug.pipeline import Stage
from tunplug.tun import Packet, Tun, TunOptions
from tunplug_example_pcap.pcap import SNAPLEN, read_packets, write_header, write_packet


class PcapSettings(PluginSettings):
    """The plugin's settings: ``--pcap-file`` / ``TUNPLUG_PCAP_FILE`` and so on."""

    pcap_file: str | None = Field(
        default=None,
        description="capture every packet of each tunnel into FILE (pcap); '{interface}' in it "
        "is replaced by the tunnel's interface name; off when unset",
        json_schema_extra={"metavar": "FILE"},
    )
    pcap_snaplen: int = Field(
        default=SNAPLEN,
        ge=64,
        le=262144,
        description="bytes of each packet kept in the capture",
        json_schema_extra={"metavar": "BYTES"},
    )
    pcap_replay_in: Path | None = Field(
        default=None,
        description="the pcap-replay TUN backend plays the packets of FILE",
        json_schema_extra={"metavar": "FILE"},
    )
    pcap_replay_out: Path | None = Field(
        default=None,
        description="the pcap-replay TUN backend records what it is sent to FILE",
        json_schema_extra={"metavar": "FILE"},
    )


class PcapWriter:
    """A pipeline stage appending every packet of one tunnel, both directions, to a pcap file.

    Records are buffered; :meth:`tick` (about once a second) flushes them and :meth:`close`
    (when the tunnel goes down) flushes and closes the file.
    """

    name = "pcap-writer"

    def __init__(self, path: str, snaplen: int = SNAPLEN) -> None:
        self.path = path
        self.snaplen = snaplen
        self.stream: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close()
        write_header(self.stream, snaplen)
        self.stream.flush()
        self.ticks = 0

    def _record(self, packets: list[Packet]) -> list[Packet]:
        for packet in packets:
            write_packet(self.stream, packet, self.snaplen)
        return packets

    outbound = _record
    inbound = _record

    def tick(self) -> None:
        self.ticks += 1
        self.stream.flush()

    def close(self) -> None:
        self.stream.close()


class PcapReplayTun(Tun):
    """A TUN device that replays one capture and records what is written to it."""

    backend_name = "pcap-replay"
    description = "replays --pcap-replay-in, records to --pcap-replay-out"

    def __init__(self, options: TunOptions, source: list[bytes], sink: BinaryIO) -> None:
        self.name = options.name or "pcap0"
        self.mtu = options.mtu
        self.queues = 1
        self.batch_size = options.batch_size
        self._pending = deque(source)
        self._sink = sink
        self._closed = anyio.Event()

    @classmethod
    async def create(cls, options: TunOptions) -> Self:
        own = options.settings.plugin(PcapSettings) if options.settings else PcapSettings()
        if own.pcap_replay_in is None:
            raise BackendUnavailable(
                "set --pcap-replay-in (TUNPLUG_PCAP_REPLAY_IN) to a pcap file to replay"
            )
        source, sink = await anyio.to_thread.run_sync(
            _open_capture_files, own.pcap_replay_in, own.pcap_replay_out
        )
        return cls(options, source, sink)

    async def recv_many(self, max_packets: int | None = None) -> Sequence[Packet]:
        if self._closed.is_set():
            raise ClosedResource("pcap replay device is closed")
        if not self._pending:
            await self._closed.wait()  # the capture is exhausted: nothing more ever arrives
            raise ClosedResource("pcap replay device is closed")
        count = min(self.batch_limit(max_packets), len(self._pending))
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


def _open_capture_files(replay_in: Path, replay_out: Path | None) -> tuple[list[bytes], BinaryIO]:
    try:
        with open(replay_in, "rb") as stream:
            source = list(read_packets(stream))
    except (OSError, ValueError) as exc:
        raise ConfigError("--pcap-replay-in", f"cannot replay {replay_in}: {exc}") from None
    sink = open(replay_out or os.devnull, "wb")  # noqa: SIM115 - closed by aclose()
    write_header(sink)
    return source, sink


@hookimpl
def tunplug_add_settings() -> type[PluginSettings]:
    return PcapSettings


@hookimpl
def tunplug_register_tun_backends() -> Sequence[type[Tun]]:
    return [PcapReplayTun]


@hookimpl
def tunplug_pipeline_stages(settings: TunplugSettings, tunnel: TunnelInfo) -> Sequence[Stage]:
    own = settings.plugin(PcapSettings)
    if not own.pcap_file:
        return []
    path = own.pcap_file.replace("{interface}", tunnel.interface)
    try:
        return [PcapWriter(path, own.pcap_snaplen)]
    except OSError as exc:
        raise ConfigError("--pcap-file", f"cannot write {path}: {exc.strerror}") from None
