"""Who may use the service's socket: credentials, groups, and the socket file itself."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from tunplug.exceptions import ConfigError
from tunplug.service.access import (
    PeerCredentials,
    bind_socket,
    is_authorized,
    peer_credentials,
    resolve_group,
)

GROUP = 2500


@pytest.mark.parametrize(
    ("credentials", "allowed"),
    [
        (PeerCredentials(pid=1, uid=0, gid=0), True),
        (PeerCredentials(pid=1, uid=1000, gid=GROUP), True),
        (PeerCredentials(pid=1, uid=1000, gid=1000, groups=(27, GROUP)), True),
        (PeerCredentials(pid=1, uid=1000, gid=1000, groups=(27, 100)), False),
        (PeerCredentials(pid=1, uid=65534, gid=65534), False),
    ],
)
def test_root_and_members_of_the_group_only(credentials, allowed):
    assert is_authorized(credentials, GROUP) is allowed


def test_the_kernel_reports_the_connecting_process():
    one, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with one, other:
        credentials = peer_credentials(one)
    assert (credentials.pid, credentials.uid, credentials.gid) == (
        os.getpid(), os.getuid(), os.getgid(),
    )  # fmt: skip
    assert set(credentials.groups) == set(os.getgroups())


def test_groups_by_name_or_number_and_a_missing_group_says_how_to_create_it():
    assert resolve_group("root") == 0
    assert resolve_group("4321") == 4321
    with pytest.raises(ConfigError) as caught:
        resolve_group("tunplug-no-such-group")
    assert str(caught.value).startswith("--group: group 'tunplug-no-such-group' does not exist")
    assert "groupadd --system tunplug-no-such-group" in str(caught.value)


def test_the_socket_is_0660_in_the_group_in_a_0755_directory(tmp_path):
    path = tmp_path / "run" / "dev.tunplug.client" / "tunnel.sock"
    with bind_socket(path, os.getgid()):
        info = path.stat()
        assert stat.S_ISSOCK(info.st_mode)
        assert oct(info.st_mode & 0o777) == oct(0o660)
        assert info.st_gid == os.getgid()
        assert oct(path.parent.stat().st_mode & 0o777) == oct(0o755)


def test_a_stale_socket_is_replaced_a_live_one_and_other_files_are_not(tmp_path):
    path = tmp_path / "tunnel.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a killed service's leftover
    live = pytest.raises(ConfigError, match="another tunnel service is listening")
    with bind_socket(path, os.getgid()), live:
        bind_socket(path, os.getgid())
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        bind_socket(path, os.getgid())
    assert path.read_text() == "not a socket"
