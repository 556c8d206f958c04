"""The stdlib-only example GUI (``examples/tunplug-gui-example/tui.py``) against the service."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.core.service.conftest import make_token

EXAMPLE = Path(__file__).parents[3] / "examples" / "tunplug-gui-example" / "tui.py"


def tui(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", str(EXAMPLE), *args],  # -I: no tunplug on its path
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_it_imports_nothing_but_the_standard_library():
    tree = ast.parse(EXAMPLE.read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_once_connects_prints_a_frame_and_disconnects(harness, tmp_path):
    token_file = tmp_path / "token-for-tui"
    token_file.write_text(make_token(name="tui"))
    up = tui("--socket", str(harness.path), "--once", "--connect", str(token_file))
    assert up.returncode == 0, up.stderr
    lines = up.stdout.splitlines()
    assert lines[0].startswith("tunplug tunnel service ") and "device test-device" in lines[0]
    assert "state:     connected (managed by gui)" in lines
    assert "interface: tpsvc0" in lines and "addresses: 10.99.0.2/32" in lines
    assert lines[-1] == "connected on tpsvc0"
    assert harness.service.session.tunnel is not None  # the example exited, the tunnel stayed
    again = tui("--socket", str(harness.path), "--once", "--connect", str(token_file))
    assert again.returncode == 1 and "already_connected" in again.stderr
    down = tui("--socket", str(harness.path), "--once", "--disconnect")
    assert down.returncode == 0, down.stderr
    assert "state:     disconnected" in down.stdout.splitlines()
