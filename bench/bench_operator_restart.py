"""Benchmark: how fast every sidecar's peer-map watch is back after the operator restarts.

A real standalone operator process on loopback serves `--pods` pods (namespaces of
`--group`); `--processes` client processes run one sidecar watch per pod with the
product's own client (`MeshApiClient.watch_peer_maps`: a TLS connection per long poll,
the product's retry and backoff). Once every watch is in, the operator is killed (-9) and
a new process started on the same port and state (same CA, same tokens). Reported: the
time from the new operator listening (and from the kill) until each pod's first long poll
reached it (p50/p99/max, in the operator's clock: after TLS, the token check and the pod
lookup), and the failed requests the watchers retried, by kind. The client processes share
the machine's cores with the operator, so the times include their work.

    .venv/bin/python bench/bench_operator_restart.py [--pods 2500] [--processes 4] [--restarts 2]
    .venv/bin/python bench/bench_operator_restart.py --pods 10000 --max-connections 12000 --restarts 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "sidecar"), str(ROOT / "operator"), str(ROOT)]

from machine import describe  # noqa: E402

from tests.support.restart_load import RestartLoad  # noqa: E402
from tests.support.watcher_load import percentile  # noqa: E402


def spread(values: list[float]) -> str:
    return (f"p50 {percentile(values, 0.5):6.2f} s  p99 {percentile(values, 0.99):6.2f} s  "
            f"max {max(values):6.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=2500)
    parser.add_argument("--group", type=int, default=20)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--wait", type=float, default=30.0, help="the sidecars' long-poll wait (s)")
    parser.add_argument("--max-connections", type=int, default=None,
                        help="above the default 4,096 for more pods: every watcher holds one connection")
    args = parser.parse_args()
    overrides = {"max_connections": args.max_connections} if args.max_connections else {}
    print(f"machine: {describe()}")
    print(f"{args.pods} watching sidecars in {args.processes} processes, long poll {args.wait:g} s")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp, RestartLoad(Path(tmp), args.pods, args.group, args.processes,
                                                           args.wait, **overrides) as load:
        began = time.monotonic()
        connected = load.connect()
        print(f"  {connected}/{args.pods} watching after {time.monotonic() - began:.1f} s")
        for round_ in range(args.restarts):
            time.sleep(2)  # every watch back in its long poll
            before, _ = load.failures()
            killed, listening = load.restart()
            first = load.back()
            after, times = load.failures()
            after.subtract(before)
            from_listen = [t - listening for t in first.values()]
            missing = connected - len(first)
            worst = max(worst, max(from_listen))
            retried = {kind: n for kind, n in sorted(after.items()) if n}
            print(f"  restart {round_ + 1}: new operator listening {listening - killed:.1f} s after the kill; "
                  f"back: {len(first)}/{connected} (missing {missing})")
            print(f"    from listening: {spread(from_listen)}")
            print(f"    from the kill:  {spread([t - killed for t in first.values()])}")
            print(f"    failed requests retried: {sum(retried.values())} {retried}")
    print(f"worst max: {worst:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
