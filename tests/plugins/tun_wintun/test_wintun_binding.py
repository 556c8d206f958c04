"""The wintun.dll binding: every export with wintun.h's types, errors, ring capacity, the DLL
and the settings that name it.

The table below was written from ``api/wintun.h`` and ``api/exports.def`` of
github.com/WireGuard/wintun, separately from the binding, which is checked against it.
"""

from __future__ import annotations

import ctypes
import sys
import uuid
from types import SimpleNamespace

import pytest

from tunplug.config import env_name, load_settings
from tunplug.exceptions import (
    BackendUnavailable,
    BusyResource,
    ClosedResource,
    ConfigError,
    PermissionDenied,
    TunError,
)
from tunplug.tun import TunOptions
from tunplug_tun_wintun import _win32, _wintun
from tunplug_tun_wintun._api import load_windows_api
from tunplug_tun_wintun._win32 import GUID, NET_LUID, windows_error
from tunplug_tun_wintun._wintun import WintunLibrary, check_ring_capacity, find_dll
from tunplug_tun_wintun.device import WintunTun
from tunplug_tun_wintun.settings import WintunSettings

# C type names of the header -> what ctypes must be told, on a 64- or 32-bit Windows.
C_TYPES = {
    "void": None,
    "HANDLE": ctypes.c_void_p,  # also WINTUN_ADAPTER_HANDLE, WINTUN_SESSION_HANDLE
    "LPCWSTR": ctypes.c_wchar_p,
    "DWORD": ctypes.c_uint32,
    "BOOL": ctypes.c_int32,
    "BYTE *": ctypes.c_void_p,  # kept as an address
    "const BYTE *": ctypes.c_void_p,
    "DWORD *": ctypes.POINTER(ctypes.c_uint32),
    "const GUID *": ctypes.POINTER(GUID),
    "NET_LUID *": ctypes.POINTER(NET_LUID),
}

WINTUN_H = {
    "WintunCreateAdapter": ("HANDLE", ["LPCWSTR", "LPCWSTR", "const GUID *"]),
    "WintunOpenAdapter": ("HANDLE", ["LPCWSTR"]),
    "WintunCloseAdapter": ("void", ["HANDLE"]),
    "WintunDeleteDriver": ("BOOL", []),
    "WintunGetAdapterLUID": ("void", ["HANDLE", "NET_LUID *"]),
    "WintunGetRunningDriverVersion": ("DWORD", []),
    "WintunSetLogger": ("void", ["WINTUN_LOGGER_CALLBACK"]),
    "WintunStartSession": ("HANDLE", ["HANDLE", "DWORD"]),
    "WintunEndSession": ("void", ["HANDLE"]),
    "WintunGetReadWaitEvent": ("HANDLE", ["HANDLE"]),
    "WintunReceivePacket": ("BYTE *", ["HANDLE", "DWORD *"]),
    "WintunReleaseReceivePacket": ("void", ["HANDLE", "const BYTE *"]),
    "WintunAllocateSendPacket": ("BYTE *", ["HANDLE", "DWORD"]),
    "WintunSendPacket": ("void", ["HANDLE", "const BYTE *"]),
}
EXPORTS_DEF = {
    "WintunAllocateSendPacket", "WintunCreateAdapter", "WintunEndSession", "WintunOpenAdapter",
    "WintunCloseAdapter", "WintunGetAdapterLUID", "WintunGetReadWaitEvent",
    "WintunGetRunningDriverVersion", "WintunReceivePacket", "WintunReleaseReceivePacket",
    "WintunSendPacket", "WintunDeleteDriver", "WintunSetLogger", "WintunStartSession",
}  # fmt: skip


class Recorder:
    """A stand-in function: keeps whatever restype/argtypes the binding sets."""

    restype: object = "unset"
    argtypes: object = "unset"


def recording_library(names):
    return SimpleNamespace(**{name: Recorder() for name in names})


def test_the_table_covers_every_export_of_the_dll():
    assert set(WINTUN_H) == EXPORTS_DEF
    assert set(_wintun.wintun_prototypes(ctypes.CFUNCTYPE)) == EXPORTS_DEF


@pytest.mark.parametrize("name", sorted(WINTUN_H))
def test_binding_sets_each_export_as_wintun_h_declares_it(name):
    library = recording_library(EXPORTS_DEF)
    WintunLibrary(library, functype=ctypes.CFUNCTYPE, last_error=lambda: 0)
    function = getattr(library, name)
    restype, argtypes = WINTUN_H[name]
    assert function.restype is C_TYPES[restype]
    if argtypes == ["WINTUN_LOGGER_CALLBACK"]:
        (callback,) = function.argtypes
        # VOID (CALLBACK *)(WINTUN_LOGGER_LEVEL, DWORD64 Timestamp, LPCWSTR Message)
        assert callback._restype_ is None
        assert callback._argtypes_ == (ctypes.c_int, ctypes.c_uint64, ctypes.c_wchar_p)
    else:
        assert tuple(function.argtypes) == tuple(C_TYPES[arg] for arg in argtypes)


def test_windows_structures_have_their_c_sizes():
    assert ctypes.sizeof(GUID) == 16
    assert ctypes.sizeof(NET_LUID) == 8
    assert ctypes.sizeof(_win32.DWORD) == 4  # DWORD is 32 bits on Windows, unlike C long here
    guid = uuid.UUID("01234567-89ab-cdef-0123-456789abcdef")
    raw = GUID.from_buffer_copy(guid.bytes_le)
    assert (raw.Data1, raw.Data2, raw.Data3) == (0x01234567, 0x89AB, 0xCDEF)
    assert bytes(raw.Data4) == bytes.fromhex("0123456789abcdef")


def test_kernel32_and_iphlpapi_prototypes():
    handle, dword, boolean = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int32
    expected = {
        "CreateEventW": (handle, (ctypes.c_void_p, boolean, boolean, ctypes.c_wchar_p)),
        "SetEvent": (boolean, (handle,)),
        "WaitForMultipleObjects": (dword, (dword, ctypes.POINTER(handle), boolean, dword)),
        "CloseHandle": (boolean, (handle,)),
    }
    assert {k: tuple(v) for k, v in _win32.KERNEL32_PROTOTYPES.items()} == expected
    luid = _win32.IPHLPAPI_PROTOTYPES["ConvertInterfaceLuidToIndex"]
    assert luid == (dword, (ctypes.POINTER(NET_LUID), ctypes.POINTER(dword)))


def test_a_dll_without_an_export_is_reported_by_name():
    library = recording_library(EXPORTS_DEF - {"WintunSetLogger"})
    with pytest.raises(BackendUnavailable, match=r"wintun\.dll has no function WintunSetLogger"):
        WintunLibrary(library, functype=ctypes.CFUNCTYPE, last_error=lambda: 0)


@pytest.mark.parametrize(
    ("code", "cls", "words"),
    [
        (5, PermissionDenied, "Administrator"),
        (183, BusyResource, "already exists"),
        (38, ClosedResource, "terminating"),
        (13, TunError, "corrupt"),
        (1234, TunError, "unknown error"),
    ],
)
def test_windows_errors_map_to_tunplug_exceptions_keeping_the_code(code, cls, words):
    error = windows_error(code, "start a session")
    assert type(error) is cls
    assert error.errno == code
    assert str(error).startswith("failed to start a session: ")
    assert words in str(error)
    assert f"Windows error {code}" in str(error)


@pytest.mark.parametrize("capacity", [0x20000, 0x40000, 0x800000, 0x4000000])
def test_ring_capacities_wintun_accepts(capacity):
    assert check_ring_capacity(capacity) == capacity


@pytest.mark.parametrize("capacity", [0, 0x1000, 0x1FFFF, 0x30000, 0x8000000, -0x20000])
def test_ring_capacities_wintun_refuses_give_one_line_config_errors(capacity):
    with pytest.raises(ConfigError) as caught:
        check_ring_capacity(capacity)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("TUNPLUG_WINTUN_RING_CAPACITY: must be a power of two")
    assert "0x20000" in message and "0x4000000" in message


def wintun_settings(**environ: str) -> WintunSettings:
    """The plugin's settings as the application loads them from ``environ``."""
    return load_settings(plugins=[WintunSettings], environ=environ).plugin(WintunSettings)


def test_the_settings_keep_the_variable_names():
    assert env_name("wintun_dll") == _wintun.DLL_ENV == "TUNPLUG_WINTUN_DLL"
    assert env_name("wintun_ring_capacity") == _wintun.RING_CAPACITY_ENV


def test_ring_capacity_from_the_environment():
    assert wintun_settings().wintun_ring_capacity is None
    assert wintun_settings(TUNPLUG_WINTUN_RING_CAPACITY=" ").wintun_ring_capacity is None
    for text in ("0x40000", "262144", " 262144 "):
        assert wintun_settings(TUNPLUG_WINTUN_RING_CAPACITY=text).wintun_ring_capacity == 0x40000


@pytest.mark.parametrize(
    ("text", "words"), [("lots", "not a whole number"), ("100000", "must be a power of two")]
)
def test_a_bad_ring_capacity_is_a_one_line_error_naming_the_variable(text, words):
    with pytest.raises(ConfigError) as caught:
        wintun_settings(TUNPLUG_WINTUN_RING_CAPACITY=text)
    message = str(caught.value)
    assert message.startswith(f"TUNPLUG_WINTUN_RING_CAPACITY: {words}")
    assert "\n" not in message


def test_a_bad_ring_capacity_flag_is_named_as_typed():
    flags = {"wintun_ring_capacity": "--wintun-ring-capacity"}
    with pytest.raises(ConfigError, match=r"^--wintun-ring-capacity: must be a power of two"):
        load_settings({"wintun_ring_capacity": "0x30000"}, flags=flags, plugins=[WintunSettings])


def test_off_windows_the_backend_says_so_and_loads_nothing():
    assert WintunTun.unavailable_reason() == "runs on Windows only"
    with pytest.raises(BackendUnavailable, match="runs on Windows only"):
        load_windows_api("C:\\wintun.dll")


@pytest.fixture
def on_windows(monkeypatch, tmp_path):
    """Pretend to be Windows with ``python.exe`` in ``tmp_path`` (no wintun.dll yet)."""
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python.exe"))
    return tmp_path


def test_on_windows_a_missing_dll_is_named_with_where_to_get_it(on_windows):
    with pytest.raises(BackendUnavailable) as caught:
        find_dll(None)
    reason = str(caught.value)
    assert reason.startswith("wintun: wintun.dll not found at ")
    assert str(on_windows / "wintun.dll") in reason
    assert "https://www.wintun.net" in reason
    assert "TUNPLUG_WINTUN_DLL" in reason
    (on_windows / "wintun.dll").write_bytes(b"MZ")
    assert find_dll(None) == on_windows / "wintun.dll"


def test_a_dll_named_in_the_settings_must_exist(tmp_path):
    missing = tmp_path / "nowhere" / "wintun.dll"
    with pytest.raises(BackendUnavailable) as caught:
        find_dll(wintun_settings(TUNPLUG_WINTUN_DLL=str(missing)).wintun_dll)
    assert str(caught.value) == f"wintun: TUNPLUG_WINTUN_DLL names {missing}, which does not exist"
    missing.parent.mkdir()
    missing.write_bytes(b"MZ")
    assert find_dll(wintun_settings(TUNPLUG_WINTUN_DLL=f" {missing} ").wintun_dll) == missing
    assert wintun_settings(TUNPLUG_WINTUN_DLL="  ").wintun_dll is None


@pytest.mark.anyio
async def test_on_windows_the_backend_is_available_and_create_reports_the_missing_dll(on_windows):
    # unavailable_reason() has no settings: the DLL is looked for by create(), where they are.
    assert WintunTun.unavailable_reason() is None
    with pytest.raises(BackendUnavailable, match=r"^wintun: wintun\.dll not found at "):
        await WintunTun.create(TunOptions())
    missing = on_windows / "elsewhere.dll"
    settings = load_settings(plugins=[WintunSettings], environ={"TUNPLUG_WINTUN_DLL": str(missing)})
    with pytest.raises(BackendUnavailable, match=r"^wintun: TUNPLUG_WINTUN_DLL names .*elsewhere"):
        await WintunTun.create(TunOptions(settings=settings))


def test_description_is_honest_about_testing():
    assert "never run on real Windows" in (WintunTun.caveat or "")
    assert "fake wintun.dll" in (WintunTun.caveat or "")
