"""Loading the benchmark scripts (not a package: each imports its siblings ``wggo`` and
``throughput`` by name, as when run as ``python benchmarks/NAME.py``) for their tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str, module_name: str) -> ModuleType:
    """Import ``benchmarks/<name>`` as ``module_name`` (registered in ``sys.modules``, which
    dataclasses need while the module's classes are built)."""
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / name)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_with_siblings(name: str, module_name: str) -> ModuleType:
    """Like :func:`load`, after ``wggo`` and ``throughput`` under the names it imports."""
    for sibling in ("wggo", "throughput"):
        if sibling not in sys.modules:
            load(f"{sibling}.py", sibling)
    return load(name, module_name)
