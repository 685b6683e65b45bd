"""Smoke test of bench/bench_mesh_scale.py: a 3-sidecar baseline and a 4-sidecar mesh, end to end.

No timing assertions; only that every phase completed (every pair up, every change applied,
every pair back after the restart) and that the figures and the ratio line are reported.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_mesh_scale.py"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 to create network namespaces")


def test_benchmark_reports_every_phase(tmp_path):
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, str(BENCH), "--sidecars", "4", "--baseline", "3", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert [f["sidecars"] for f in figures] == [3, 4]
    for f in figures:
        assert f["establish"]["missing"] == 0 and f["restart"]["missing"] == 0
        assert all(c["missing"] == [] for c in f["changes"]) and len(f["changes"]) == 4
        assert f["memory"]["sidecars"] == f["sidecars"] and f["memory"]["pss_per_pod_mib"] > 0
    assert "ratios 4 vs 3 sidecars" in done.stdout
