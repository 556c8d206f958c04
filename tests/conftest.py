"""Project-wide test policy: root-only tests and the CI switch that makes their skips fail.

Tests that need real TUN devices or network namespaces carry ``@pytest.mark.root``. Without
root they skip with the reason. With ``TUNPLUG_REQUIRE_ROOT_TESTS=1`` (``.ci/run`` sets it), a
skipped root test is reported as a failure, so CI can never pass by not running them.
"""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRE_ROOT_TESTS = os.environ.get("TUNPLUG_REQUIRE_ROOT_TESTS") == "1"


def _root_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) for TUN devices and network namespaces"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs the 'ip' command (iproute2)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = _root_skip_reason()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("root"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if REQUIRE_ROOT_TESTS and report.skipped and item.get_closest_marker("root"):
        report.outcome = "failed"
        detail = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"root test skipped while TUNPLUG_REQUIRE_ROOT_TESTS=1 (CI): {detail}"
    return report


@pytest.fixture
def anyio_backend() -> str:
    """The engine runs on asyncio; anyio-marked tests use it."""
    return "asyncio"
