"""The crypto plugins register their backends through the hook, and import without PyNaCl."""

from __future__ import annotations

import subprocess
import sys

from tunplug.plugins import PluginHost
from tunplug_crypto_cryptography.backend import CryptographyBackend
from tunplug_crypto_sodium.backend import SodiumBackend


def test_plugin_host_registers_both_crypto_backends() -> None:
    host = PluginHost(
        builtins=[
            ("crypto-cryptography", "tunplug_crypto_cryptography.plugin"),
            ("crypto-sodium", "tunplug_crypto_sodium.plugin"),
        ],
        autoload=False,
    )
    host.load()
    assert dict(host.crypto_backends()) == {
        "cryptography": CryptographyBackend,
        "sodium": SodiumBackend,
    }


def test_sodium_plugin_imports_and_explains_itself_without_pynacl() -> None:
    # Hide nacl from a fresh interpreter, then import the plugin and ask it why it can't run.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'nacl' or name.startswith('nacl.'):\n"
        "            raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import tunplug_crypto_sodium.plugin as p\n"
        "[cls] = p.tunplug_register_crypto_backends()\n"
        "print(cls.name, '|', cls.unavailable_reason())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == (
        "sodium | PyNaCl is not installed (pip install tunplug[sodium])"
    )


def test_sodium_is_available_when_pynacl_is_installed() -> None:
    assert SodiumBackend.unavailable_reason() is None
