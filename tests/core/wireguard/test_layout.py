"""The package's shape: the device's parts stand alone, modules stay short, no import cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tunplug.wireguard

PACKAGE = Path(tunplug.wireguard.__file__).parent
#: The parts WireGuardDevice is composed of: none may import the module that composes them.
PARTS = ("state", "send", "receive", "device_timers")


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("part", PARTS)
def test_device_parts_do_not_import_the_device(part: str) -> None:
    assert "tunplug.wireguard.device" not in _imported_modules(PACKAGE / f"{part}.py")


def test_modules_stay_short() -> None:
    lengths = {path.name: len(path.read_text().splitlines()) for path in PACKAGE.glob("*.py")}
    assert {name: n for name, n in lengths.items() if n >= 600} == {}


@pytest.mark.parametrize(
    "first", ["tunplug", "tunplug.tun", "tunplug.transport", "tunplug.wireguard.constants"]
)
def test_first_import_of_any_module_works(first: str) -> None:
    # tunplug.tun re-exports wireguard.constants.DEFAULT_MTU: no import order may meet a cycle.
    probe = f"import {first}, tunplug.wireguard; print(tunplug.wireguard.WireGuardDevice)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
