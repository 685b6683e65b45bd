"""Test-suite wide configuration.

`vm.plugin` (tests/vm/plugin.py) runs tests marked `@pytest.mark.vm` inside a VM whose
kernel has ESP, booted once per session; see tests/vm/README.md.

On CI (`CI=true`) a skip outside `tests/e2e` is a failure: every other tier can run on the
machines CI uses, so a skip there means an install step is missing (issue 9).
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.vm.plugin"]

#: Tiers that may skip on CI: only kind end to end (no Docker engine with kind on CI machines).
MAY_SKIP_ON_CI = ("tests/e2e/",)


def _on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def skip_is_failure(report: pytest.TestReport) -> bool:
    """A skip that CI must count as a failure (xfail and the kind tier excepted)."""
    return (
        report.skipped
        and not hasattr(report, "wasxfail")
        and not report.nodeid.startswith(MAY_SKIP_ON_CI)
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_logreport(report: pytest.TestReport):
    # Here rather than in makereport: the VM tier replays the guest's reports through
    # logreport only, and those skips must count too.
    if _on_ci() and skip_is_failure(report):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (
            f"skipped on CI ({reason}); CI=true turns skips outside tests/e2e into failures: "
            "this machine kind runs every other tier, so an install step is missing"
        )
    yield


#: Tests that need root, network namespaces and this machine's kernel (XFRM, nftables) but no
#: charon and no VM: the `host` tier. Marked by place so `-m host` / `-m "not host"` select it.
HOST_TIER = ("tests/host/", "tests/deploy/")


def _is_host_tier(nodeid: str) -> bool:
    path = nodeid.split("::", 1)[0]
    return path.startswith(HOST_TIER) or path.endswith("_host.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _is_host_tier(item.nodeid) and not item.get_closest_marker("vm"):
            item.add_marker(pytest.mark.host)
