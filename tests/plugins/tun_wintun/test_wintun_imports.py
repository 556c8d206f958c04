"""The wintun plugin imports, registers and explains itself on a system without Windows.

Complements tests/core/test_platform_imports.py: every module of the package, not just the
plugin entry, with Windows-only modules made unimportable, and without ``ctypes.WinDLL``.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import ctypes, json, sys
for name in ("winreg", "_winapi", "msvcrt", "_overlapped", "nt", "ctypes.wintypes"):
    sys.modules[name] = None  # importing any of these now raises ImportError
for name in ("WinDLL", "windll", "WINFUNCTYPE", "get_last_error", "FormatError"):
    assert not hasattr(ctypes, name), name
import importlib
for module in ("tunplug_tun_wintun", "tunplug_tun_wintun.plugin", "tunplug_tun_wintun.device",
               "tunplug_tun_wintun._wintun", "tunplug_tun_wintun._win32", "tunplug_tun_wintun._api",
               "tunplug_tun_wintun.settings", "tunplug_tun_wintun.netsh",
               "tunplug_tun_wintun.testing"):
    importlib.import_module(module)
from tunplug_tun_wintun.plugin import tunplug_register_tun_backends
(backend,) = tunplug_register_tun_backends()
print(json.dumps({"name": backend.backend_name, "reason": backend.unavailable_reason(),
                  "caveat": backend.caveat, "platforms": sorted(backend.platforms)}))
"""


def test_the_plugin_imports_without_windows_modules_and_says_why_it_cannot_run():
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["name"] == "wintun"
    assert info["reason"] == "runs on Windows only"
    assert "never run on real Windows" in info["caveat"]
    assert info["platforms"] == ["win32"]
