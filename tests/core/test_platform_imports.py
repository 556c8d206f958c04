"""Every plugin module imports on any OS: platform modules are only imported inside functions."""

from __future__ import annotations

import subprocess
import sys

from tunplug.plugins import BUILTIN_PLUGINS

# Pretend to be a system without Linux-, Windows- or macOS-specific modules.
PROBE = """
import sys
for name in ("fcntl", "termios", "pyroute2", "msvcrt", "winreg", "_winapi", "nacl"):
    sys.modules[name] = None  # any import of these now raises ImportError
import importlib
for module in sys.argv[1:]:
    importlib.import_module(module)
print("ok")
"""


def test_plugin_modules_import_without_platform_modules():
    modules = [module for _, module in BUILTIN_PLUGINS]
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *modules],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
