"""The VM tier plugin on the host, with the VM replaced by running the guest script
directly: selection, replay of guest outcomes, skips, and failure reporting.

These run on the host (no `vm` marker) and never boot a VM.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import tests.vm.plugin as vm_plugin
import tests.vm.runner as vm_runner
from tests.vm.runner import BatchResult, VMConfig, VMRunError, VMUnavailable

pytest_plugins = ["pytester"]

TESTS_DIR = Path(__file__).resolve().parent.parent

GUEST_TESTS = """
import os
import pytest

pytestmark = pytest.mark.vm

def test_sees_guest_env():
    assert os.environ["IPSEC_MESH_IN_VM"] == "1"

def test_fails_in_guest():
    observed = 41
    assert observed == 42, "guest-side failure"

def test_skips_in_guest():
    pytest.skip("guest says skip")

@pytest.mark.xfail(reason="known guest bug")
def test_xfails_in_guest():
    assert False

@pytest.fixture
def broken():
    raise RuntimeError("setup exploded in the guest")

def test_setup_error(broken):
    pass
"""

HOST_TESTS = """
import os

def test_runs_on_host():
    assert "IPSEC_MESH_IN_VM" not in os.environ
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A tiny project using the plugin, on a host that has no ESP but can 'boot'."""
    pytester.makeini("[pytest]\nmarkers =\n    vm: runs in the VM\n")
    pytester.makeconftest('pytest_plugins = ["tests.vm.plugin"]\n')
    pytester.makepyfile(test_guest=GUEST_TESTS, test_host=HOST_TESTS)
    for name in ("IPSEC_MESH_SKIP_VM", "IPSEC_MESH_IN_VM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(vm_plugin, "host_kernel_has_esp", lambda: False)
    config = VMConfig(
        vng=Path("/nonexistent/vng"), qemu=Path("/nonexistent/qemu"),
        kernel=Path("/boot/vmlinuz-fake"), console_log=pytester.path / "console.log",
        guest_modules=(),  # never load modules on the host
    )
    monkeypatch.setattr(vm_plugin, "locate", lambda rootdir: config)
    return pytester


@pytest.fixture
def boots(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace booting the VM by running the guest script on the host; record each boot."""
    calls: list[Path] = []

    def run_guest_script(config: VMConfig, rundir: Path, rootdir: Path) -> BatchResult:
        calls.append(rundir)
        env = {**os.environ, "PYTHONPATH": str(TESTS_DIR.parent)}  # the repository root: tests.vm.plugin
        proc = subprocess.run(
            ["sh", str(rundir / "guest.sh")], cwd=rootdir, env=env,
            capture_output=True, text=True, timeout=120,
        )
        config.console_log.write_text(proc.stdout + proc.stderr)
        return BatchResult(console_log=config.console_log, boot_seconds=0.1, total_seconds=1.0)

    monkeypatch.setattr(vm_runner, "_boot_and_wait", run_guest_script)
    return calls


def test_guest_outcomes_are_replayed_on_the_host(project: pytest.Pytester, boots: list[Path]):
    result = project.runpytest_inprocess("-rA")

    result.assert_outcomes(passed=2, failed=1, skipped=1, xfailed=1, errors=1)
    assert len(boots) == 1, "one boot for all vm tests"
    # The guest's own traceback and reasons reach the host report.
    result.stdout.fnmatch_lines([
        "*def test_fails_in_guest():*",
        "*AssertionError: guest-side failure*",
        "*assert 41 == 42*",
    ])
    result.stdout.fnmatch_lines(["*RuntimeError: setup exploded in the guest*"])
    result.stdout.fnmatch_lines(["SKIPPED *guest says skip*"])
    result.stdout.fnmatch_lines(["XFAIL *known guest bug*"])
    result.stdout.fnmatch_lines(["*VM tier*", "*5 tests in one VM*"])
    assert not list(boots[0].parent.glob(boots[0].name)), "run directory removed"


def test_only_selected_vm_tests_run_in_the_guest(project: pytest.Pytester, boots: list[Path]):
    result = project.runpytest_inprocess("-k", "sees_guest_env or test_fails_in_guest")

    result.assert_outcomes(passed=1, failed=1, deselected=4)
    console = (project.path / "console.log").read_text()
    assert "test_sees_guest_env PASSED" in console
    assert "test_skips_in_guest" not in console


def test_no_boot_without_vm_tests(project: pytest.Pytester, boots: list[Path]):
    project.runpytest_inprocess("test_host.py").assert_outcomes(passed=1)
    assert boots == []


def test_skip_env_skips_the_tier(project: pytest.Pytester, boots, monkeypatch):
    monkeypatch.setenv("IPSEC_MESH_SKIP_VM", "1")
    result = project.runpytest_inprocess("-rs")

    result.assert_outcomes(passed=1, skipped=5)
    result.stdout.fnmatch_lines(["*VM tier skipped on request (IPSEC_MESH_SKIP_VM=1)*"])
    assert boots == []


def test_unbootable_vm_skips_with_what_is_missing(project: pytest.Pytester, boots, monkeypatch):
    def missing_qemu(rootdir: Path) -> VMConfig:
        raise VMUnavailable("qemu-system-x86_64 (apt install qemu-system-x86)")

    monkeypatch.setattr(vm_plugin, "locate", missing_qemu)
    result = project.runpytest_inprocess("-rs")

    result.assert_outcomes(passed=1, skipped=5)
    result.stdout.fnmatch_lines(
        ["*VM tier unavailable*qemu-system-x86_64 (apt install qemu-system-x86)*"]
    )
    assert boots == []


def test_host_kernel_with_esp_runs_vm_tests_directly(project: pytest.Pytester, boots, monkeypatch):
    monkeypatch.setattr(vm_plugin, "host_kernel_has_esp", lambda: True)
    project.makepyfile(test_guest="""
import os, pytest
@pytest.mark.vm
def test_direct():
    assert "IPSEC_MESH_IN_VM" not in os.environ
""")
    project.runpytest_inprocess().assert_outcomes(passed=2)
    assert boots == []


def test_vm_failure_fails_every_vm_test(project: pytest.Pytester, monkeypatch):
    def crash(config: VMConfig, rundir: Path, rootdir: Path) -> BatchResult:
        raise VMRunError("VM batch exceeded 480s; console log: /tmp/x.log")

    monkeypatch.setattr(vm_runner, "_boot_and_wait", crash)
    result = project.runpytest_inprocess()

    result.assert_outcomes(passed=1, failed=5)
    result.stdout.fnmatch_lines(["*VM tier failed: VM batch exceeded 480s*"])


def test_missing_guest_result_fails_with_console_tail(project: pytest.Pytester, monkeypatch):
    def guest_ran_nothing(config: VMConfig, rundir: Path, rootdir: Path) -> BatchResult:
        config.console_log.write_text("Kernel panic - not syncing: test\n")
        return BatchResult(console_log=config.console_log)

    monkeypatch.setattr(vm_runner, "_boot_and_wait", guest_ran_nothing)
    result = project.runpytest_inprocess("-k", "sees_guest_env")

    result.assert_outcomes(failed=1, deselected=5)
    result.stdout.fnmatch_lines(["*guest produced no result for this test*", "*Kernel panic*"])
