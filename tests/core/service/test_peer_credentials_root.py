"""The real thing: the kernel's credentials of a process running as ``nobody`` decide."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.core.service.conftest import Harness, start_service
from tunplug.service.connection import stream_credentials

pytestmark = pytest.mark.root

NOBODY = 65534
#: Connects, says Hello, prints what happened as JSON: stdlib only, like any foreign client.
PROBE = """
import json, socket, struct, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(10)
try:
    sock.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect": exc.strerror})); raise SystemExit
hello = json.dumps({"type": "Hello", "id": 1, "protocol_version": 1}).encode()
try:
    sock.sendall(struct.pack(">I", len(hello)) + hello)
except OSError:
    pass  # a refused client may find the connection closed already
frames = []
data = b""
while True:
    chunk = sock.recv(65536)
    if not chunk:
        break
    data += chunk
    while len(data) >= 4 and len(data) >= 4 + struct.unpack(">I", data[:4])[0]:
        size = struct.unpack(">I", data[:4])[0]
        frames.append(json.loads(data[4:4 + size]))
        data = data[4 + size:]
    if frames and frames[-1]["type"] == "Welcome":
        break
print(json.dumps({"frames": frames}))
"""


def python_for_nobody() -> str:
    """An interpreter user 65534 can run (a pyenv build under /root may not be)."""
    probe = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-S", "-c", ""], capture_output=True, check=False,
    )  # fmt: skip
    if probe.returncode == 0:
        return sys.executable
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    fallback = system if system.exists() else Path("/usr/bin/python3")
    if not fallback.exists():
        pytest.skip(f"user {NOBODY} cannot run {sys.executable}, and there is no {fallback}")
    return str(fallback)


def as_nobody(path: Path, *groups: int) -> dict[str, object]:
    group_args = [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    result = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", *group_args,
         python_for_nobody(), "-S", "-c", PROBE, str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def real_service() -> Iterator[Harness]:
    """The service with the kernel's credentials, group root, in a directory nobody can enter."""
    with tempfile.TemporaryDirectory(prefix="tunplug-svc-") as name:
        Path(name).chmod(0o755)
        yield from start_service(Path(name), credentials=stream_credentials)


def test_nobody_is_refused_by_the_file_mode_and_by_its_credentials(real_service):
    assert real_service.service.group_gid == 0
    path = real_service.path
    assert as_nobody(path) == {"connect": "Permission denied"}
    path.chmod(0o666)  # as if an administrator loosened it: the credential check still holds
    frames = as_nobody(path)["frames"]
    assert len(frames) == 1, frames
    assert frames[0]["type"] == "Error" and frames[0]["code"] == "permission_denied"
    assert f"uid {NOBODY} (nobody)" in frames[0]["message"]
    # A member of the group (here: a supplementary group of the process) is welcome.
    path.chmod(0o660)
    welcome = as_nobody(path, 0)["frames"]
    assert [frame["type"] for frame in welcome] == ["Welcome"]
