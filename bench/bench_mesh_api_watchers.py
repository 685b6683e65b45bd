"""Benchmark: the mesh API holding one long-polling watcher per pod (target: 10,000 on a replica).

A real standalone operator process on loopback (the same servers, token authority and index
as in a cluster, with `--max-connections` and `--max-requests-per-pod` as given) serves
`--pods` pods in namespaces of `--group` (one peering each, every pod lists the others of its
namespace). `--processes` watcher processes hold one TLS connection per pod with that pod's
own token, long-polling `/v1/peermap` as the sidecar does (one Python process cannot make
10,000 TLS handshakes and re-polls quickly enough on two shared cores; the client processes
share those cores with the operator, so the times below include their work).

Reported: the operator's RSS and anonymous RSS before and after the watchers are in (and
per connection), its CPU for bringing them in, and for each change the time from the moment
the operator applied it to the moment each affected watcher had read the new map (p50/p99/max):
(a) a mesh CA rotation (the trust bundle of every map changes), (b) one pod's new address
(its own map and those of its namespace's pods change), `--pod-changes` times.
Targets: every map of a CA rotation read within 2 s p99, a pod change within 100 ms p99.

    .venv/bin/python bench/bench_mesh_api_watchers.py [--pods 10000] [--group 20] [--processes 4]
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

from tests.support.watcher_load import WatcherLoad, percentile, pod_name  # noqa: E402

BUNDLE_TARGET, POD_TARGET = 2.0, 0.1


def spread(latencies: dict) -> str:
    values = list(latencies.values())
    return (f"p50 {percentile(values, 0.5) * 1000:7.1f} ms  p99 {percentile(values, 0.99) * 1000:7.1f} ms  "
            f"max {max(values) * 1000:7.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10000)
    parser.add_argument("--group", type=int, default=20)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--pod-changes", type=int, default=20)
    parser.add_argument("--rotations", type=int, default=3)
    parser.add_argument("--max-connections", type=int, default=None)
    parser.add_argument("--max-requests-per-pod", type=int, default=None)
    parser.add_argument("--stream", action="store_true", help="streaming watch (watch=1) instead of long polls")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() in the operator once its maps are built, before the watchers come")
    args = parser.parse_args()
    overrides = {}
    if args.max_connections:
        overrides["max_connections"] = args.max_connections
    if args.max_requests_per_pod:
        overrides["max_requests_per_pod"] = args.max_requests_per_pod
    print(f"machine: {describe()}")
    print(f"{args.pods} watchers (one per pod, {'streaming watch' if args.stream else 'long polls'}), "
          f"namespaces of {args.group}, {args.processes} watcher processes, operator settings {overrides or 'default'}"
          f"{', gc.freeze() after start' if args.gc_freeze else ''}")
    met = True
    with tempfile.TemporaryDirectory() as directory, \
            WatcherLoad(Path(directory), args.pods, args.group, args.processes, args.stream, **overrides) as load:
        load.ask("build-maps")
        if args.gc_freeze:
            print(f"frozen: {load.ask('gc-freeze')} objects")
        idle = load.ask("stats")
        started = time.monotonic()
        connected = load.connect()
        took = time.monotonic() - started
        time.sleep(2)
        held = load.ask("stats")
        per = (held["VmRSS"] - idle["VmRSS"]) / max(held["open"], 1)
        per_anon = (held["RssAnon"] - idle["RssAnon"]) / max(held["open"], 1)
        print(f"connected: {connected} of {args.pods} in {took:.1f} s; open {held['open']}, "
              f"watching {held['watching']:.0f}; operator CPU {held['cpu'] - idle['cpu']:.1f} s for it")
        print(f"operator memory: {idle['VmRSS'] / 1024:.1f} MiB RSS ({idle['RssAnon'] / 1024:.1f} anon) idle -> "
              f"{held['VmRSS'] / 1024:.1f} MiB ({held['RssAnon'] / 1024:.1f} anon) with them: "
              f"{per:.1f} KiB RSS, {per_anon:.1f} KiB anon per connection")
        if connected != args.pods:
            errors = {e for reads, e in load.reads().values() if e}
            print(f"  errors: {sorted(errors)[:5]}")
            return 1
        everyone = {pod_name(i, args.group) for i in range(args.pods)}
        for round_number in range(args.rotations):
            load.settle(args.pods)  # every watcher back in its long poll: each is counted as woken
            before = load.ask("stats")
            change = load.ask("rotate-ca")
            if change["refused"]:
                print(f"CA rotation refused: {change['refused']}")
                return 1
            latencies = load.delivery(change, everyone)
            after = load.ask("stats")
            ok = len(latencies) == len(everyone)
            p99 = percentile(list(latencies.values()), 0.99)
            met &= ok and p99 <= BUNDLE_TARGET
            cpu = after["cpu"] - before["cpu"]
            collector = [a - b for a, b in zip(after["gc_automatic"], before["gc_automatic"], strict=True)]
            print(f"CA rotation {round_number + 1}: {len(latencies)}/{len(everyone)} read the new map, "
                  f"{change['woken']:.0f} woken; {spread(latencies)}; operator CPU {cpu:.2f} s, "
                  f"{(cpu - after['gc']) / len(everyone) * 1e6:.0f} us per map without the harness's "
                  f"full gc ({after['gc']:.2f} s); automatic gc by generation "
                  f"{' / '.join(f'{t * 1000:.0f}' for t in collector)} ms")
            time.sleep(1.5)  # past the successor's propagation: the next rotation is allowed
        pod_latencies: list[float] = []
        woken, affected = 0, 0
        for n in range(args.pod_changes):
            pod = pod_name((n * 7919) % args.pods, args.group)
            load.settle(args.pods)
            change = load.ask("move-pod", pod)
            latencies = load.delivery(change, set(map(tuple, change["affected_pods"])))
            pod_latencies.extend(latencies.values())
            woken += change["woken"]
            affected += change["affected"]
            met &= len(latencies) == change["affected"]
        p99 = percentile(pod_latencies, 0.99)
        met &= p99 <= POD_TARGET
        print(f"pod changes: {args.pod_changes}, {affected} maps changed, {woken:.0f} watchers woken; "
              f"{spread(dict(enumerate(pod_latencies)))}")
        final = load.ask("stats")
        print(f"operator at the end: {final['VmRSS'] / 1024:.1f} MiB RSS, {final['RssAnon'] / 1024:.1f} MiB anon, "
              f"{final['gc_objects']} objects tracked by gc, harness's full gc {final['gc'] * 1000:.0f} ms")
    print(f"targets (CA rotation p99 <= {BUNDLE_TARGET:g} s, pod change p99 <= {POD_TARGET * 1000:g} ms): "
          f"{'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
