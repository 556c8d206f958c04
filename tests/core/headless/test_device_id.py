"""The device id: derived from the machine id with a keyed hash, stored once, reused."""

from __future__ import annotations

import uuid

import pytest

from tunplug.device_id import (
    derive_device_id,
    device_id_path,
    load_or_create_device_id,
    validate_device_id,
)
from tunplug.exceptions import ConfigError


def test_created_once_with_modes_then_reused(tmp_path):
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    state = tmp_path / "state"
    first = load_or_create_device_id(state, machine_id)
    path = device_id_path(state)
    assert path.read_text() == first + "\n"
    assert path.stat().st_mode & 0o777 == 0o640
    assert path.parent.stat().st_mode & 0o777 == 0o770
    machine_id.write_text("ffffffffffffffffffffffffffffffff\n")  # the stored id wins
    assert load_or_create_device_id(state, machine_id) == first


def test_derived_from_the_machine_id_without_revealing_it(tmp_path):
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    one, origin = derive_device_id(machine_id)
    assert origin == "machine-id"
    assert derive_device_id(machine_id)[0] == one  # stable
    assert "0123456789abcdef" not in one.replace("-", "")
    assert uuid.UUID(one).version == 4
    machine_id.write_text("ffffffffffffffffffffffffffffffff\n")
    assert derive_device_id(machine_id)[0] != one


def test_random_when_there_is_no_machine_id(tmp_path):
    first, origin = derive_device_id(tmp_path / "absent")
    assert origin == "random"
    assert derive_device_id(tmp_path / "absent")[0] != first


def test_an_unwritable_state_dir_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"TUNPLUG_STATE_DIR: cannot .* Not a directory"):
        load_or_create_device_id(blocker / "state", tmp_path / "absent")


@pytest.mark.parametrize("value", ["", "-x", "a b", "x" * 129, "id\n"])
def test_given_ids_are_checked(value):
    with pytest.raises(ConfigError, match="--id"):
        validate_device_id(value)
    assert validate_device_id("build-runner-07.eu") == "build-runner-07.eu"
