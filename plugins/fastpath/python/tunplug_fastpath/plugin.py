"""The ``fastpath`` plugin: registers the ``native`` data path (entry point group ``tunplug``)."""

from __future__ import annotations

from collections.abc import Sequence

from tunplug import hookimpl
from tunplug.datapath import DataPath
from tunplug_fastpath.datapath import NativeDataPath


@hookimpl
def tunplug_register_data_paths() -> Sequence[type[DataPath]]:
    return [NativeDataPath]
