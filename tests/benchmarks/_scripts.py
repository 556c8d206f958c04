"""Loading the benchmark scripts for their tests. They are not a package: each imports
``benchlib`` and its sibling ``wggo`` by name, as when run as ``python benchmarks/NAME.py``
(``tests/benchmarks/__init__.py`` puts ``benchmarks/`` on ``sys.path`` for that)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from . import BENCHMARKS


def load(name: str, module_name: str) -> ModuleType:
    """Import ``benchmarks/<name>`` as ``module_name`` (registered in ``sys.modules``, which
    dataclasses need while the module's classes are built)."""
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / name)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
