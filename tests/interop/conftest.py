"""Fixtures for interop tests against strongSwan's charon in network namespaces.

Tests ask for ``topology`` (namespaces, cleaned up after the test), ``charons``
(charons stopped after the test, their logs printed when it failed), ``shim_path``
(the fake-ESP LD_PRELOAD library, built once per session) and ``capture_factory``.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from .harness.capture import Capture
from .harness.charon import Charon, missing_requirements
from .harness.netns import Namespace, Topology, netns_supported, remove_stale_namespaces
from .harness.peers import Side, start_pair
from .harness.shim import ShimBuildError, build_shim

LOG_TAIL = 4000


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Keep each phase's report on the item so fixtures know whether the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "report_call", None)
    return report is None or report.failed


@pytest.fixture(scope="session")
def interop_env() -> None:
    """Skip (with the reason) unless root, charon and ``ip netns`` are all usable."""
    reason = netns_supported() or missing_requirements()
    if reason:
        pytest.skip(reason)
    remove_stale_namespaces()


@pytest.fixture(scope="session")
def shim_path(interop_env: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return build_shim(tmp_path_factory.mktemp("xfrm-shim"))
    except ShimBuildError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def topology(interop_env: None) -> Iterator[Topology]:
    with Topology() as topo:
        yield topo


class Charons:
    """Creates charons under the test's tmp_path and stops them all afterwards."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Charon] = []

    def new(self, ns: Namespace, name: str | None = None, **kwargs: Any) -> Charon:
        """An unstarted Charon (configure it, then ``start()``)."""
        charon = Charon(ns, self.workdir, name or ns.role, **kwargs)
        self.started.append(charon)
        return charon

    def pair(self, left: Side, right: Side, conn: str = "conn", **kwargs: Any
             ) -> tuple[Charon, Charon]:
        """Started mirrored charons, see ``harness.peers.start_pair``."""
        charons = start_pair(left, right, self.workdir, conn, **kwargs)
        self.started.extend(charons)
        return charons

    def stop_all(self, dump_logs: bool) -> None:
        for charon in self.started:
            charon.stop()
        if dump_logs:
            for charon in self.started:
                print(f"----- {charon.name} charon.log (tail) -----\n{charon.log[-LOG_TAIL:]}")


@pytest.fixture
def charons(interop_env: None, tmp_path: Path, request: pytest.FixtureRequest
            ) -> Iterator[Charons]:
    registry = Charons(tmp_path)
    yield registry
    registry.stop_all(dump_logs=_failed(request))


@pytest.fixture
def capture_factory(interop_env: None, tmp_path: Path) -> Iterator[Callable[..., Capture]]:
    """``capture_factory(ns, iface="eth0")`` -> a started Capture; stopped after the test."""
    if not (shutil.which("tcpdump") and shutil.which("tshark")):
        pytest.skip("tcpdump and tshark are needed for packet captures")
    captures: list[Capture] = []

    def make(ns: Namespace, iface: str = "eth0", **kwargs: Any) -> Capture:
        capture = Capture(ns, tmp_path / f"{ns.role}-{iface}-{len(captures)}.pcap", iface,
                          **kwargs).start()
        captures.append(capture)
        return capture

    yield make
    for capture in captures:
        capture.stop()
