"""Smoke tests of the IKE CPU benchmarks: they run end to end with a handful of IKE SAs.

No timing assertions (CPU figures from 5 SAs mean nothing); only that every pairing
established every IKE SA and that a figure was reported for each.
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from tests.interop.harness.charon import missing_requirements
from tests.interop.harness.netns import netns_supported, remove_stale_namespaces

pytestmark = pytest.mark.interop

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def load_bench(name: str):
    reason = netns_supported() or missing_requirements()
    if reason:
        pytest.skip(reason)
    remove_stale_namespaces()
    sys.path.insert(0, str(BENCH_DIR))  # as when run as a script: bench/ helpers import by name
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_ike_responder")


@pytest.mark.parametrize("auth", ["psk", "ecdsa"])
def test_benchmark_reports_both_responders(bench, tmp_path, capsys, auth):
    out = tmp_path / "results.json"
    assert bench.main(["--sas", "5", "--window", "5", "--auth", auth, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    results = {r["implementation"]: r for r in report["results"]}
    assert set(results) == {"ours", "charon"}
    for result in results.values():
        assert result["auth"] == auth and result["established"] == 5
        assert result["loadgen"]["established"] == 5 and result["loadgen"]["failed"] == 0
        assert result["cpu_seconds"] >= 0 and not math.isnan(result["ms_per_sa"])
    assert report["versions"]["strongswan"] and report["machine"]["cores"] >= 1
    assert f"ratio ours/charon ({auth}, median" in capsys.readouterr().out
    assert set(report["medians"][auth]) == {"ours", "charon"}


@pytest.mark.parametrize("auth", ["psk", "ecdsa"])
def test_initiator_benchmark_reports_every_pairing(tmp_path, capsys, auth):
    bench = load_bench("bench_ike_initiator")
    out = tmp_path / "results.json"
    assert bench.main(["--sas", "5", "--window", "5", "--auth", auth, "--rounds", "1", "--json", str(out)]) == 0
    results = {f"{r['initiator']}->{r['responder']}": r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"ours->charon", "charon->charon", "ours->ours"}
    for result in results.values():
        assert result["auth"] == auth and result["initiated"] == 5 and result["established"] == 5
        assert result["initiator_cpu"] >= 0 and result["responder_cpu"] >= 0 and result["wall_seconds"] > 0
    text = capsys.readouterr().out
    assert f"initiator ({auth}, against charon, medians)" in text and f"end to end ({auth}, medians)" in text


def test_initiator_report_has_no_ratio_when_a_side_used_less_than_a_clock_tick():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import bench_ike_initiator as bench

    assert bench.ratio(0.5, 1.0) == "0.50"
    assert bench.ratio(0.5, 0.0).startswith("n/a") and bench.ratio(0.0, 0.5).startswith("n/a")
    assert bench.per_cpu_second(0.0) == "n/a"
