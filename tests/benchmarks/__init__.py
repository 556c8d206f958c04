"""Tests of the benchmark scripts' pure parts (no root, no namespaces, no timing).

Importing this package puts ``benchmarks/`` on ``sys.path`` (at the end, so that it shadows
nothing): the scripts' shared package ``benchlib`` and the script ``wggo`` then import by name in
the tests as they do when a script runs as ``python benchmarks/NAME.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.append(str(BENCHMARKS))
