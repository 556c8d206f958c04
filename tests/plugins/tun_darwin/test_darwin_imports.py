"""The darwin plugin imports, registers and explains itself on a system that is not macOS.

Complements tests/core/test_platform_imports.py: every module of the package, with ``fcntl``
(which opening a utun device needs) made unimportable.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
for name in ("fcntl", "termios", "_scproxy", "winreg", "_winapi", "msvcrt"):
    sys.modules[name] = None  # importing any of these now raises ImportError
import importlib
for module in ("tunplug_tun_darwin", "tunplug_tun_darwin.plugin", "tunplug_tun_darwin.device",
               "tunplug_tun_darwin._utun", "tunplug_tun_darwin.ifconfig"):
    importlib.import_module(module)
from tunplug_tun_darwin.plugin import tunplug_register_tun_backends
(backend,) = tunplug_register_tun_backends()
print(json.dumps({"name": backend.backend_name, "reason": backend.unavailable_reason(),
                  "caveat": backend.caveat, "platforms": sorted(backend.platforms)}))
"""


def test_the_plugin_imports_without_macos_modules_and_says_why_it_cannot_run():
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["name"] == "darwin"
    assert info["reason"] == "runs on macOS only"
    assert "never run on real macOS" in info["caveat"]
    assert info["platforms"] == ["darwin"]
