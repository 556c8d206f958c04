"""The gateway's stats writer hands the registry only the clients whose figures changed."""

from __future__ import annotations

from tunplug.gateway.server import StatsWriter

A, B = b"a" * 32, b"b" * 32


def test_only_changed_clients_are_written_again() -> None:
    writer = StatsWriter()
    first = [(A, None, 0, 0), (B, 10.0, 5, 6)]
    assert writer.changed(first) == first
    assert writer.changed(first) == []  # idle: nothing to write
    assert writer.changed([(A, 12.0, 148, 92), (B, 10.0, 5, 6)]) == [(A, 12.0, 148, 92)]


def test_revoked_clients_are_forgotten() -> None:
    writer = StatsWriter()
    writer.changed([(bytes([i]) * 32, None, i, 0) for i in range(200)])
    assert writer.changed([(A, None, 1, 1)]) == [(A, None, 1, 1)]
    # The 200 gone keys are dropped; one of them coming back is written again.
    assert writer.changed([(bytes([7]) * 32, None, 7, 0)]) == [(bytes([7]) * 32, None, 7, 0)]
