"""The Tun contract (tunplug.testing.contract) on every backend tunplug ships.

- ``fake``: the in-memory FakeTun;
- ``linux-mq``: a real kernel TUN device in a throw-away network namespace (root). The two
  backpressure checks are left out for it: the kernel always drains a TUN device (see
  ``LinuxMqHarness.backpressure_unsupported``), so ``send_ready`` cannot be held blocked;
- ``wintun-fake``: the WinTun backend over a fake wintun.dll (not real Windows);
- ``darwin-socketpair``: the utun backend over a Unix socket pair (not real macOS).
"""

from __future__ import annotations

import pytest

from tests.contract.harnesses import (
    DarwinSocketpairHarness,
    LinuxMqHarness,
    WintunFakeHarness,
)
from tunplug.testing import contract

pytestmark = pytest.mark.anyio

HARNESSES: dict[str, type[contract.TunHarness]] = {
    "fake": contract.FakeTunHarness,
    "linux-mq": LinuxMqHarness,
    "wintun-fake": WintunFakeHarness,
    "darwin-socketpair": DarwinSocketpairHarness,
}
MARKS = {"linux-mq": [pytest.mark.root]}


@pytest.mark.parametrize(("check", "harness"), contract.cases(HARNESSES, MARKS))
async def test_tun_contract(check: contract.Check, harness: type[contract.TunHarness]) -> None:
    await contract.run_check(check, harness)


def test_every_backend_runs_every_check_except_documented_gaps() -> None:
    ids = {param.id for param in contract.cases(HARNESSES, MARKS)}
    for check in contract.CHECKS:
        for name in HARNESSES:
            expected = not (check.needs_backpressure and name == "linux-mq")
            assert (f"{check.name}-{name}" in ids) is expected
    assert LinuxMqHarness.backpressure_unsupported
