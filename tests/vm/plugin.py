"""pytest plugin for the VM tier: tests marked `vm` run in a kernel that has ESP.

On the host, vm tests are not run directly. At the first one, the VM is booted once and
every selected vm test runs inside it in one batch; each host item then replays the
guest's own reports (pass, failure with the guest's traceback, skip with its reason).
Inside the guest (IPSEC_MESH_IN_VM=1) or on a host whose kernel already has ESP, vm tests
run normally. See tests/vm/README.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _pytest.reports import BaseReport, TestReport

from tests.vm.runner import (
    IN_VM_ENV,
    NODEIDS_ENV,
    RESULTS_ENV,
    BatchResult,
    VMConfig,
    VMRunError,
    VMUnavailable,
    console_tail,
    host_kernel_has_esp,
    locate,
    run_batch,
)

SKIP_ENV = "IPSEC_MESH_SKIP_VM"


def _is_vm_test(item: pytest.Item) -> bool:
    return item.get_closest_marker("vm") is not None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


class GuestReporter:
    """Inside the VM: run only the requested node ids and write every report as JSON."""

    def __init__(self, config: pytest.Config, results: Path, nodeids: set[str]) -> None:
        self.config = config
        self.nodeids = nodeids
        self.out = open(results, "a", encoding="utf-8")

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        # The host passes whole files (so an unknown id cannot abort the run); keep only
        # what the host selected. A test not collected here is reported missing there.
        keep = [item for item in items if item.nodeid in self.nodeids]
        dropped = [item for item in items if item.nodeid not in self.nodeids]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep

    def pytest_runtest_logreport(self, report: TestReport) -> None:
        self._write("test", report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self._write("collect", report)

    def pytest_unconfigure(self) -> None:
        self.out.close()

    def _write(self, kind: str, report: TestReport | pytest.CollectReport) -> None:
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        entry = {"kind": kind, "nodeid": report.nodeid, "report": data}
        # One line per report, flushed: a guest crash still leaves the earlier results.
        self.out.write(json.dumps(entry) + "\n")
        self.out.flush()


class HostVMTier:
    """On the host: decide how vm tests run, and replay the guest's results."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.mode: str | None = None  # "vm", "direct" or "skip" once vm tests are seen
        self.vm_config: VMConfig | None = None
        self.batch: BatchResult | None = None
        self.batch_error: str | None = None
        self.batch_size = 0

    @pytest.hookimpl(trylast=True)  # after -m/-k deselection
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        vm_items = [item for item in items if _is_vm_test(item)]
        if not vm_items:
            return
        skip_reason = self._choose_mode()
        if skip_reason:
            for item in vm_items:
                item.add_marker(pytest.mark.skip(reason=skip_reason))

    def _choose_mode(self) -> str | None:
        """Set self.mode; return a skip reason when vm tests cannot run."""
        if _env_flag(SKIP_ENV):
            self.mode = "skip"
            return f"VM tier skipped on request ({SKIP_ENV}={os.environ[SKIP_ENV]})"
        if host_kernel_has_esp():
            self.mode = "direct"
            return None
        try:
            self.vm_config = locate(rootdir=self.config.rootpath)
        except VMUnavailable as exc:
            self.mode = "skip"
            return f"VM tier unavailable, host kernel has no ESP and VM cannot boot: {exc}"
        self.mode = "vm"
        return None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> bool | None:
        if self.mode != "vm" or not _is_vm_test(item):
            return None
        if self.batch is None and self.batch_error is None:
            self._run_batch(item.session)
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        for report in self._reports_for(item):
            item.ihook.pytest_runtest_logreport(report=report)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    def _run_batch(self, session: pytest.Session) -> None:
        assert self.vm_config is not None
        nodeids = [item.nodeid for item in session.items if _is_vm_test(item)]
        self.batch_size = len(nodeids)
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"\n[vm] booting {self.vm_config.kernel.name} for {len(nodeids)} vm tests; "
                f"console log: {self.vm_config.console_log}"
            )
        try:
            self.batch = run_batch(nodeids, self.config.rootpath, self.vm_config)
        except (VMRunError, VMUnavailable) as exc:
            self.batch_error = str(exc)

    def _reports_for(self, item: pytest.Item) -> list[TestReport]:
        guest_reports = self.batch.reports.get(item.nodeid) if self.batch else None
        if guest_reports:
            return [self._deserialize(data) for data in guest_reports]  # type: ignore[misc]
        return self._missing_result_reports(item, self._missing_result_message())

    def _deserialize(self, data: dict) -> BaseReport:
        report = self.config.hook.pytest_report_from_serializable(config=self.config, data=data)
        if isinstance(report.longrepr, list):
            # A skip's (path, line, reason) came back from JSON as a list; pytest's
            # summary wants the tuple.
            report.longrepr = tuple(report.longrepr)
        return report

    def _missing_result_message(self) -> str:
        if self.batch_error is not None:
            return f"VM tier failed: {self.batch_error}"
        assert self.batch is not None
        collect_errors = [self._deserialize(d).longreprtext for d in self.batch.collect_errors]
        if collect_errors:
            return "the guest could not collect this test:\n" + "\n".join(collect_errors)
        return (
            f"the guest produced no result for this test (guest pytest exit status "
            f"{self.batch.exit_status}); console log: {self.batch.console_log}\n"
            f"{console_tail(self.batch.console_log)}"
        )

    @staticmethod
    def _missing_result_reports(item: pytest.Item, message: str) -> list[TestReport]:
        keywords = {name: 1 for name in item.keywords}

        def report(when: str, outcome: str, longrepr: str | None) -> TestReport:
            return TestReport(item.nodeid, item.location, keywords, outcome, longrepr, when)  # type: ignore[arg-type]

        return [report("setup", "passed", None), report("call", "failed", message),
                report("teardown", "passed", None)]

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.mode == "direct":
            terminalreporter.write_sep("-", "VM tier: host kernel has ESP, vm tests ran directly")
        if self.mode != "vm" or (self.batch is None and self.batch_error is None):
            return
        terminalreporter.write_sep("-", "VM tier")
        assert self.vm_config is not None
        terminalreporter.write_line(f"kernel: {self.vm_config.kernel}")
        terminalreporter.write_line(f"console log: {self.vm_config.console_log}")
        if self.batch is not None:
            boot = f"{self.batch.boot_seconds:.1f}s" if self.batch.boot_seconds else "unknown"
            terminalreporter.write_line(
                f"{self.batch_size} tests in one VM: boot {boot}, "
                f"total {self.batch.total_seconds:.1f}s, guest pytest exit status "
                f"{self.batch.exit_status}"
            )
        else:
            terminalreporter.write_line(f"VM batch failed: {self.batch_error}")


def pytest_configure(config: pytest.Config) -> None:
    if _env_flag(IN_VM_ENV):
        results = os.environ.get(RESULTS_ENV)
        nodeids_file = os.environ.get(NODEIDS_ENV)
        if results and nodeids_file:
            nodeids = set(Path(nodeids_file).read_text().splitlines())
            config.pluginmanager.register(
                GuestReporter(config, Path(results), nodeids), "ipsec-mesh-vm-guest"
            )
        return  # in the guest, vm tests simply run
    config.pluginmanager.register(HostVMTier(config), "ipsec-mesh-vm-host")
