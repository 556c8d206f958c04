"""The wintun backend's settings: where wintun.dll is, and how big the rings are.

Who uses it: :mod:`tunplug_tun_wintun.plugin` declares :class:`WintunSettings` through the
``tunplug_add_settings`` hook, so each field is a flag and a variable of the commands that run
tunnels (``--wintun-dll`` / ``TUNPLUG_WINTUN_DLL``, ``--wintun-ring-capacity`` /
``TUNPLUG_WINTUN_RING_CAPACITY``), validated when the settings load;
:meth:`tunplug_tun_wintun.device.WintunTun.create` reads the values from ``options.settings``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from tunplug.config import PluginSettings
from tunplug_tun_wintun._wintun import ring_capacity_problem


class WintunSettings(PluginSettings):
    """The ``wintun`` backend's settings; every field is optional."""

    wintun_dll: Path | None = Field(
        default=None,
        description="full path of wintun.dll (default: next to python.exe); the DLL is only "
        "ever loaded by full path",
        json_schema_extra={"metavar": "FILE"},
    )
    wintun_ring_capacity: int | None = Field(
        default=None,
        description="bytes of each of a WinTun session's two rings, decimal or 0x hex: a power "
        "of two from 0x20000 (128 KiB) to 0x4000000 (64 MiB); default 0x800000 (8 MiB)",
        json_schema_extra={"metavar": "BYTES"},
    )

    @field_validator("wintun_dll", mode="before")
    @classmethod
    def _blank_dll_is_unset(cls, value: object) -> object:
        if isinstance(value, str):
            return value.strip() or None
        return value

    @field_validator("wintun_ring_capacity", mode="before")
    @classmethod
    def _parse_ring_capacity(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text:
            return None
        try:
            return int(text, 0)
        except ValueError:
            raise PydanticCustomError("whole_number", "not a whole number") from None

    @field_validator("wintun_ring_capacity")
    @classmethod
    def _check_ring_capacity(cls, value: int | None) -> int | None:
        problem = None if value is None else ring_capacity_problem(value)
        if problem is not None:
            raise PydanticCustomError("ring_capacity", problem)
        return value
