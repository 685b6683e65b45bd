"""Benchmark: certificates per second signed by the mesh API over HTTPS (target >= 500/s).

A real operator runtime (mesh CA, TokenReview stubbed in-process, HTTPS server on
loopback) and a load generator in a separate process: P-256 CSRs from --pods pods,
--concurrency requests in flight over keep-alive connections, --requests in all. The
rate is given per server CPU second (what the operator spends, whatever the shared
machine's neighbours do) and per wall-clock second (client and server on these cores).
The load is tests/support/signing_load.py, as in tests/operator/test_api_speed.py.

    .venv/bin/python bench/bench_mesh_api_signing.py [--requests 3000] [--pods 64] [--concurrency 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "sidecar"), str(ROOT / "operator"), str(ROOT)]

from machine import describe  # noqa: E402

from tests.support.signing_load import measure_signing  # noqa: E402

TARGET = 500


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--pods", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {describe()}")
    print(f"{args.requests} CSRs (P-256) from {args.pods} pods, {args.concurrency} in flight, {args.rounds} rounds")
    cpu_rates, wall_rates = [], []
    for round_number in range(1, args.rounds + 1):
        done, cpu, wall, direct = asyncio.run(measure_signing(args.requests, args.pods, args.concurrency))
        if done != args.requests:
            print(f"round {round_number}: only {done} of {args.requests} signed")
            return 1
        cpu_rates.append(done / cpu)
        wall_rates.append(done / wall)
        print(f"  round {round_number}: {done / cpu:6.0f}/s per server CPU second, {done / wall:6.0f}/s wall clock,"
              f" {done / direct:6.0f}/s signed directly (HTTPS costs {cpu / direct:.2f} times that)")
    rate = statistics.median(cpu_rates)
    print(f"median: {rate:.0f}/s per server CPU second, {statistics.median(wall_rates):.0f}/s wall clock"
          f"  (target >= {TARGET}/s): {'met' if rate >= TARGET else 'MISSED'}")
    return 0 if rate >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
