"""Benchmark: the whole mesh on one machine (issue 14).

N real `ipsec-mesh-sidecar mesh` processes (data plane none, `initiate: peers`), one network
namespace each on one bridge, against `ipsec-mesh standalone` with one namespace-wide
certificate peering (tests/scale/harness.py). Reports, for the baseline size (20, the CI
test's) and then for `--sidecars` in the same run:

- time from the first sidecar's start until every pair is established (both ends' /status,
  the latest `established_at`), and per pair;
- the operator's CPU seconds over that phase and its RSS; the sidecars' Pss (total, per pod),
  RSS and RssAnon per pod;
- pod add and pod remove: from SIGHUP of the operator's YAML to each sidecar's log line
  "peer map version N applied", p50/p99 over the sidecars (2 adds, 2 removes);
- every sidecar restarted at once (SIGTERM, then all started): time until every pair is back,
  the IKE responders' pushback (COOKIE challenges, half-open refusals and evictions, summed
  from /status), the operator's CPU over the restart and its refusals (metrics).

Needs root. It is heavy: 100 sidecars hold 9,900 IKE SAs between them.

    sudo .venv/bin/python bench/bench_mesh_scale.py --sidecars 100 [--baseline 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "sidecar"), str(ROOT / "operator")]

from machine import describe  # noqa: E402  (bench/, the script's own directory)

from tests.scale.harness import PUSHBACK_COUNTERS, MeshOnOneMachine  # noqa: E402

PHASE_LIMIT = 900.0  # seconds: give up on a phase (the figure says what was missing)
REFUSALS = ("ipsec_mesh_api_requests_refused_total", "ipsec_mesh_server_connections_dropped_total")


def refusals(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The operator's refusals (by metric and label) that grew between two scrapes."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if k.startswith(REFUSALS) and v > before.get(k, 0.0)}


def run(sidecars: int, say) -> dict:
    mesh = MeshOnOneMachine(sidecars, spare=2)
    figures: dict = {"sidecars": sidecars, "pairs": sidecars * (sidecars - 1) // 2}
    try:
        say(f"[{sidecars}] starting {sidecars} sidecars")
        mesh.build_network(routed=True)
        mesh.start_operator(mesh.members, metrics_port=9464)
        cpu0 = mesh.operator_usage()["cpu_s"]
        since = time.monotonic()
        mesh.start_sidecars(mesh.members, mesh.settings)
        figures["all_ready_s"] = round(time.monotonic() - since, 1)
        up = mesh.wait_all_pairs(since, PHASE_LIMIT)
        usage = mesh.operator_usage()
        figures["establish"] = {"seconds": up.seconds, "established": up.established, "missing": len(up.missing),
                                "ms_per_pair": round(1000 * up.seconds / up.pairs, 1) if up.seconds else None}
        figures["operator"] = {"cpu_s_startup": round(usage["cpu_s"] - cpu0, 2), "rss_mib": usage["rss_mib"]}
        time.sleep(5)  # a few status reports and long polls, as a running mesh does
        figures["memory"] = mesh.sidecar_memory()
        counters = mesh.counters()
        figures["startup_pushback"] = {k: counters.get(k, 0) for k in PUSHBACK_COUNTERS}
        say(f"[{sidecars}] {up.established}/{up.pairs} pairs in {up.seconds} s; {figures['memory']}")
        changes = []
        for _ in range(2):
            name, change = mesh.add_pod()
            changes.append(change.summary())
            mesh.wait_all_pairs(time.monotonic(), PHASE_LIMIT)
        for name in ("p000", "p001"):
            changes.append(mesh.remove_pod(name).summary())
        figures["changes"] = changes
        say(f"[{sidecars}] changes: {changes}")
        before_metrics, cpu0 = mesh.operator_metrics(), mesh.operator_usage()["cpu_s"]
        restarted = mesh.restart_all()
        ready = round(time.monotonic() - restarted, 1)
        back = mesh.wait_all_pairs(restarted, PHASE_LIMIT)
        after_metrics = mesh.operator_metrics()
        statuses = mesh.statuses()
        counters = mesh.counters(statuses)  # the restarted processes count from zero
        figures["restart"] = {
            "sidecars": len(statuses), "pairs": back.pairs, "established": back.established,
            "missing": len(back.missing), "all_ready_s": ready, "seconds": back.seconds,
            "pushback": {k: counters.get(k, 0) for k in PUSHBACK_COUNTERS},
            "failures": mesh.failures(statuses),
            "operator_cpu_s": round(mesh.operator_usage()["cpu_s"] - cpu0, 2),
            "operator_rss_mib": mesh.operator_usage()["rss_mib"],
            "operator_refusals": refusals(before_metrics, after_metrics),
            "certificates_issued": after_metrics["ipsec_mesh_certificates_issued_total"]
            - before_metrics["ipsec_mesh_certificates_issued_total"],
        }
        say(f"[{sidecars}] restart: {figures['restart']}")
    finally:
        mesh.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sidecars", type=int, default=100)
    parser.add_argument("--baseline", type=int, default=20, help="the smaller mesh measured first (0: none)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    print(describe(), flush=True)
    say = lambda text: print(text, flush=True)  # noqa: E731
    results = [run(n, say) for n in ([args.baseline] if args.baseline else []) + [args.sidecars]]
    print("\nsidecars  pairs  all-pairs s  ms/pair  op CPU s  op RSS MiB  Pss/pod MiB  Pss total MiB"
          "  add p50/p99 s  remove p50/p99 s  restart s  pushback  op refusals")
    for r in results:
        adds = [c for c in r["changes"] if c["what"].startswith("add")]
        removes = [c for c in r["changes"] if c["what"].startswith("remove")]
        worst = lambda cs, key: max(c[key] for c in cs if c[key] is not None)  # noqa: E731
        print(f"{r['sidecars']:8}  {r['pairs']:5}  {r['establish']['seconds']!s:>11}  "
              f"{r['establish']['ms_per_pair']!s:>7}  {r['operator']['cpu_s_startup']:8}  {r['operator']['rss_mib']:10}  "
              f"{r['memory']['pss_per_pod_mib']:11}  {r['memory']['pss_total_mib']:13}  "
              f"{worst(adds, 'p50')}/{worst(adds, 'p99')}  {worst(removes, 'p50')}/{worst(removes, 'p99')}  "
              f"{r['restart']['seconds']!s:>9}  {sum(r['restart']['pushback'].values()):8}  "
              f"{sum(r['restart']['operator_refusals'].values()):g}")
    if len(results) == 2 and all(r["establish"]["seconds"] for r in results):
        small, big = results
        print(f"\nratios {big['sidecars']} vs {small['sidecars']} sidecars ({big['pairs'] / small['pairs']:.1f}x pairs):"
              f" all-pairs time {big['establish']['seconds'] / small['establish']['seconds']:.2f}x,"
              f" per pair {big['establish']['ms_per_pair'] / small['establish']['ms_per_pair']:.2f}x,"
              f" operator CPU {big['operator']['cpu_s_startup'] / max(small['operator']['cpu_s_startup'], 0.01):.2f}x,"
              f" Pss per pod {big['memory']['pss_per_pod_mib'] / small['memory']['pss_per_pod_mib']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
