"""One harness per parser that sees untrusted bytes.

Each module defines ``test_one_input(data: bytes) -> None``: it feeds ``data`` to the parser,
swallows only the exceptions the parser documents (``HANDLED``), and checks a few properties of
what it returns. Anything else that escapes is a crash. The same function serves atheris
(``fuzz/harness.py``) and the plain-pytest replay of the corpus and of past crashes
(``tests/fuzz/``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

#: Every target, by the name used for ``fuzz/corpus/<name>/`` and ``fuzz/crashes/<name>/``.
TARGETS = ("wireguard", "wgquick", "token", "service_frames", "gateway")


def load(name: str) -> Callable[[bytes], None]:
    """The one-input function of target ``name``. :raises KeyError: unknown name."""
    if name not in TARGETS:
        raise KeyError(f"unknown fuzz target {name!r} (known: {', '.join(TARGETS)})")
    module = importlib.import_module(f"fuzz.targets.{name}")
    function: Callable[[bytes], None] = module.test_one_input
    return function
