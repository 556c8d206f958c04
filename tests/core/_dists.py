"""Write real installed-distribution metadata (``*.dist-info``) into a folder for tests.

Plugin discovery goes through ``importlib.metadata``; a folder with a dist-info directory and
modules, put on ``sys.path``, is discovered exactly as a pip-installed distribution would be.
"""

from __future__ import annotations

import textwrap
from pathlib import Path


def make_distribution(
    root: Path,
    name: str,
    version: str,
    entry_points: dict[str, str],
    modules: dict[str, str],
) -> Path:
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[tunplug]\n{lines}")
    return root
