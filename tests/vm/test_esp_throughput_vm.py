"""The ESP throughput benchmark, run once in the VM: our SAs against the same SAs by hand.

Figures under software emulation are slow and noisy; the ratio ours/hand is what counts
(docs/benchmarks.md). The test fails if a transfer breaks, does not go over ESP, or ours
is grossly slower than hand-installed SAs (a configuration difference, not noise).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_esp_throughput.py"
ROUNDS = 8
GROSS = 0.5  # ours/hand below this is a configuration problem, not emulation noise


def load_bench():
    sys.path.insert(0, str(BENCH.parent))  # as when run as a script: bench/ helpers import by name
    spec = importlib.util.spec_from_file_location("bench_esp_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_esp_throughput_ours_against_hand_installed(tmp_path):
    bench = load_bench()
    results = bench.run(rounds=ROUNDS, seconds=2.0, max_mb=256, workdir=tmp_path,
                        log=lambda line: print(f"[measure] {line}", flush=True))
    assert [r.cipher for r in results] == [c.label for c in bench.CIPHERS]
    for r in results:
        assert all(len(v) == ROUNDS and min(v) > 0 for v in r.mbps.values()), r
        assert r.ratio > GROSS, f"{r.cipher}: ours {r.median('ours'):.2f} MB/s, hand {r.median('hand'):.2f} MB/s"
