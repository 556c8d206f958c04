"""tunplug's native data path: the per-packet work in Rust (PyO3), the control plane in Python.

Who uses it: tunplug itself, through the ``tunplug`` entry point this distribution declares
(:mod:`tunplug_fastpath.plugin` registers the ``native`` data path). Nothing here is public API
but :class:`NativeDataPath`; the compiled module ``tunplug_fastpath._native`` is private.
"""

from __future__ import annotations

from tunplug_fastpath.datapath import NativeDataPath
from tunplug_fastpath.pieces import NativeAead, NativePacketOps

__all__ = ["NativeAead", "NativeDataPath", "NativePacketOps"]
