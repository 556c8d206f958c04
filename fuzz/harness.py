"""The atheris entry point: ``python fuzz/harness.py TARGET [libFuzzer arguments]``.

``fuzz/run.py`` starts it once per target; run it by hand for libFuzzer options it does not
pass (``-jobs``, ``-dict``, replaying one file: ``python fuzz/harness.py wgquick crash-...``).
tunplug, the crypto plugin and the harness are instrumented for coverage when the target is
imported (nothing of them is imported before).
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import atheris  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.targets import TARGETS, load


def _numeric_only(getaddrinfo: Callable[..., Any]) -> Callable[..., Any]:
    def numeric_only(*args: Any, **kwargs: Any) -> Any:
        flags = kwargs.pop("flags", args[5] if len(args) > 5 else 0)
        return getaddrinfo(*args[:5], flags=flags | socket.AI_NUMERICHOST, **kwargs)

    return numeric_only


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: harness.py {{{','.join(TARGETS)}}} [libFuzzer arguments]")
    name = sys.argv.pop(1)
    # Parsers log what they ignore (e.g. wg-quick's PostUp): millions of lines otherwise.
    logging.disable(logging.CRITICAL)
    with atheris.instrument_imports(include=["tunplug", "tunplug_crypto_cryptography", "fuzz"]):
        test_one_input = load(name)
    # Belt and braces: the harnesses resolve numeric addresses only (``_offline``); nothing in
    # this process may ever query DNS.
    socket.getaddrinfo = _numeric_only(socket.getaddrinfo)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
