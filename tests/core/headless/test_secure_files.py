"""Secret files: only root (or the running user) may own them, and only the owner read them."""

from __future__ import annotations

import os

import pytest

from tunplug.exceptions import ConfigError
from tunplug.secure_files import check_private_file, read_private_file


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_modes_are_accepted(tmp_path, mode):
    path = tmp_path / "token"
    path.write_text("  secret\n")
    path.chmod(mode)
    assert read_private_file(path, "--token-path") == "secret"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_group_or_other_access_is_refused_with_the_chmod_to_run(tmp_path, mode):
    path = tmp_path / "token"
    path.write_text("secret")
    path.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        check_private_file(path, "--token-path")
    assert str(caught.value) == (
        f"--token-path: {path} is readable or writable by group or others "
        f"(mode {mode:04o}); run: chmod 600 {path}"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_file_owned_by_another_user_is_refused_with_the_chown_to_run(tmp_path):
    path = tmp_path / "token"
    path.write_text("secret")
    path.chmod(0o600)
    os.chown(path, 65534, 65534)
    with pytest.raises(ConfigError, match=rf"owned by uid 65534\); run: chown root:root {path}"):
        check_private_file(path, "--token-path")


def test_missing_and_non_regular_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        check_private_file(tmp_path / "nope", "--config")
    with pytest.raises(ConfigError, match="is not a regular file"):
        check_private_file(tmp_path, "--config")
