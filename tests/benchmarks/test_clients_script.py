"""The pure parts of benchmarks/clients.py: the table's cells and ratios (no root, no run)."""

from __future__ import annotations

from tunplug.testing.loadgen import LoadResult

from ._scripts import load

clients = load("clients.py", "tunplug_benchmark_clients")


def column(kind: str, seconds: float, rss: tuple[int, int], idle: float):
    load = LoadResult(clients=1000, connected=1000, echoed=1000, all_connected=seconds,
                      handshakes_per_second=1000 / seconds)  # fmt: skip
    return clients.Column(kind, load=load, rss_before_kib=rss[0], rss_connected_kib=rss[1],
                          idle_registered=idle, idle_connected=idle)  # fmt: skip


def test_cells_carry_ratios_against_wireguard_go_of_the_same_run() -> None:
    columns = [
        column("tunplug-native", 4.0, (50_000, 54_000), 0.02),
        clients.Column("tunplug-python", error="gateway did not start"),
        column("wggo13", 2.0, (30_000, 54_000), 0.0),
    ]
    rows = {row[0]: row[1:] for row in clients.rows(columns)}
    assert rows["time to connect all (s)"] == ["4.0 (2.00x)", "failed", "2.0"]
    assert rows["handshakes/s (all N / that time)"] == ["250 (0.50x)", "failed", "500"]
    assert rows["RSS per connected client (KiB)"] == ["4.0 (0.17x)", "failed", "24.0"]
    # No ratio against an anchor of zero, none where wireguard-go has no such figure.
    assert rows["idle CPU, N registered (% of a core)"] == ["2.0", "failed", "0.0"]
    assert rows["`client list` wall time (s)"] == ["-", "failed", "-"]
    table = clients.render(columns, 1000, 5.0)
    assert "| time to connect all (s) | 4.0 (2.00x) | failed | 2.0 |" in table
    assert "tunplug-python failed: gateway did not start" in table
