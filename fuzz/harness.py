"""The atheris entry point: ``python fuzz/harness.py TARGET [libFuzzer arguments]``.

``fuzz/run.py`` starts it once per target; run it by hand for libFuzzer options it does not
pass (``-jobs``, ``-dict``, replaying one file: ``python fuzz/harness.py wgquick crash-...``).
tunplug, the crypto plugin and the harness are instrumented for coverage when the target is
imported (nothing of them is imported before).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import atheris  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.targets import TARGETS, load


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: harness.py {{{','.join(TARGETS)}}} [libFuzzer arguments]")
    name = sys.argv.pop(1)
    # Parsers log what they ignore (e.g. wg-quick's PostUp): millions of lines otherwise.
    logging.disable(logging.CRITICAL)
    with atheris.instrument_imports(include=["tunplug", "tunplug_crypto_cryptography", "fuzz"]):
        test_one_input = load(name)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
