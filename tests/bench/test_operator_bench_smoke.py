"""Smoke test of the operator benchmarks: they run end to end on a small mesh and print their figures.

No timing assertions beyond what the scripts check themselves (the speed tests in
tests/operator hold the targets); only that they finish, exit 0 and report.
"""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_bench(script, *args):
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=300)


def test_peer_map_benchmark_reports_both_layouts():
    result = run_bench("bench_peer_maps.py", "--pods", "400", "--peerings", "40", "--services", "80", "--rounds", "1",
                       "--changes", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("machine: ")
    assert "[same namespace]" in result.stdout and "[cross-namespace, consented]" in result.stdout
    assert result.stdout.count("one pod added") == 2 and "targets met" in result.stdout
    # Every pod's map lists the Service in front of its peers (two in the cross-namespace layout).
    assert "400 Service entries in all maps" in result.stdout and "800 Service entries in all maps" in result.stdout
    assert "one EndpointSlice change (5 maps rebuilt)" in result.stdout
    assert "one EndpointSlice change (10 maps rebuilt)" in result.stdout


def test_signing_benchmark_signs_every_request():
    result = run_bench("bench_mesh_api_signing.py", "--requests", "40", "--pods", "4", "--concurrency", "2",
                       "--rounds", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "round 1:" in result.stdout and "per server CPU second" in result.stdout
