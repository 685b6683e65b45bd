"""Benchmark: what one more peer in the peer map, and one more established SA, cost a sidecar.

Needs root (network namespaces). One sidecar (`ipsec-mesh-sidecar run`, data plane `none`:
the host kernel has no ESP; the IKE and CHILD_SA state in the process is the same) in
three runs, each a fresh process in a fresh namespace pair, side by side:

  baseline   1 peer (the load generator), no SA
  peers      --peers peers in the map (the load generator and --peers - 1 others), no SA
  peers+SAs  the same map and --sas IKE SAs, each with one CHILD_SA, from bench/ike_loadgen.py
             (our engine as independent initiators from one address), which keeps answering
             while the window runs: the sidecar rekeys every CHILD_SA (lifetime --child-lifetime)
             and checks liveness (DPD after --dpd idle seconds), so the window is a steady state

For each: start-up CPU (until ready), then over a window of --window seconds after settling
the CPU time used, and at its end VmRSS, RssAnon and Pss. Per peer = (peers - baseline) /
(peers - 1); per SA = (peers+SAs - peers) / SAs.

    sudo .venv/bin/python bench/bench_sidecar_per_peer.py [--peers 1000] [--sas 100] [--window 40]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "sidecar"), str(REPO / "bench")]

import bench_ike_responder as ike  # noqa: E402
from bench_sidecar_memory import memory  # noqa: E402

from tests.interop.harness.netns import Topology  # noqa: E402
from tests.interop.harness.sidecar import Sidecar  # noqa: E402

SETTLE = 3.0  # seconds after readiness (or the last SA) before the window opens


def cpu_seconds(pid: int) -> float:
    """CPU time of all the process's threads, from the scheduler's nanosecond counters
    (/proc/PID/stat counts in 10 ms ticks: too coarse for a rekey)."""
    return sum(int((task / "schedstat").read_text().split()[0])
               for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9


def other_peers(count: int) -> dict:
    """A peering with `count` peers that never show up (pod addresses outside the topology)."""
    peers = [{"name": f"p{i}", "addresses": [f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}/32"],
              "identities": [f"p{i}.bench.pod.mesh.test"]} for i in range(count)]
    return {"name": "others", "authentication": "psk", "peers": peers,
            "psk": [{"id": "k1", "value": base64.b64encode(ike.PSK.encode()).decode()}]}


def run_one(peers: int, sas: int, args, workdir: Path, label: str) -> dict:
    with Topology() as topo:
        pair = topo.pair(ipv6=False)
        more = (other_peers(peers - 1),) if peers > 1 else ()
        sidecar = Sidecar(pair.right, workdir, name=label, address=ike.RESPONDER_ADDR, identity=ike.RESPONDER_ID,
                          peer_address=f"{ike.LOADGEN_ADDR}/32", peer_identity=ike.LOADGEN_ID, psk=ike.PSK,
                          ike=ike.IKE, esp=ike.ESP, more_peerings=more, log_level="info",
                          lifetimes={"child": args.child_lifetime, "inactivity": 0},
                          ike_settings={**ike.OUR_IKE_SETTINGS, "dpd": args.dpd})
        started = time.monotonic()
        sidecar.start(120)
        pid = sidecar.process.pid
        result = {"label": label, "peers": peers, "sas": 0, "ready_s": round(time.monotonic() - started, 2),
                  "startup_cpu_s": round(cpu_seconds(pid), 3)}
        loadgen = None
        try:
            if sas:
                spec = {"local": ike.LOADGEN_ADDR, "remote": ike.RESPONDER_ADDR, "local_id": ike.LOADGEN_ID,
                        "remote_id": ike.RESPONDER_ID, "sas": sas, "window": min(sas, 20),
                        "deadline": max(60.0, sas * 0.5), "ike": ike.IKE, "esp": ike.ESP, "psk": ike.PSK,
                        "hold": args.window + 4 * SETTLE}
                (workdir / f"{label}-loadgen.json").write_text(json.dumps(spec))
                loadgen = pair.left.popen(pair.left.python_argv(str(REPO / "bench" / "ike_loadgen.py"), "--spec",
                                                                str(workdir / f"{label}-loadgen.json")),
                                          stdout=open(workdir / f"{label}-loadgen.out", "wb"))
                deadline = time.monotonic() + spec["deadline"]
                while _established(sidecar) < sas and time.monotonic() < deadline:
                    time.sleep(0.5)
            time.sleep(SETTLE)
            before = cpu_seconds(pid)
            time.sleep(args.window)
            after = cpu_seconds(pid)
            result["sas"] = _established(sidecar)
            result["window_cpu_s"] = round(after - before, 4)
            result.update(memory(pid))
        finally:
            if loadgen is not None:
                loadgen.wait(args.window + 10 * SETTLE + 60)
                out = (workdir / f"{label}-loadgen.out").read_text().strip().splitlines()
                result["loadgen"] = json.loads(out[-1]) if out else {}
            sidecar.stop()
    return result


def _established(sidecar: Sidecar) -> int:
    """IKE SAs established with an installed CHILD_SA, as the sidecar's status reports them."""
    status = sidecar.status() or {"ike_sas": []}
    return sum(1 for sa in status["ike_sas"] if sa["state"] == "established"
               and any(child["state"] == "installed" for child in sa["children"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--sas", type=int, default=100)
    parser.add_argument("--window", type=float, default=40.0, help="seconds of steady state measured")
    parser.add_argument("--child-lifetime", type=int, default=20, help="CHILD_SA lifetime (rekey at 80-90 %%)")
    parser.add_argument("--dpd", type=int, default=10, help="liveness check after this many idle seconds")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    print(f"machine: {ike.machine()}")
    runs = []
    with tempfile.TemporaryDirectory(prefix="per-peer-bench-") as workdir:
        for label, peers, sas in (("baseline", 1, 0), ("peers", args.peers, 0), ("peers+SAs", args.peers, args.sas)):
            runs.append(run_one(peers, sas, args, Path(workdir), label))
    for run in runs:
        print(f"{run['label']:10} peers {run['peers']:5}  SAs {run['sas']:4}  ready {run['ready_s']:5.2f} s  "
              f"start-up CPU {run['startup_cpu_s']:6.3f} s  window CPU {run['window_cpu_s']:6.3f} s / "
              f"{args.window:.0f} s  VmRSS {run['VmRSS'] / 1024:5.1f} MB  RssAnon {run['RssAnon'] / 1024:5.1f} MB"
              f"  Pss {run['Pss'] / 1024:5.1f} MB" + (f"  loadgen {run['loadgen']}" if "loadgen" in run else ""))
    base, many, loaded = runs
    per_peer = max(1, many["peers"] - 1)
    established = max(1, loaded["sas"])
    print(f"per peer: RssAnon {(many['RssAnon'] - base['RssAnon']) / per_peer:.2f} kB, Pss "
          f"{(many['Pss'] - base['Pss']) / per_peer:.2f} kB, start-up CPU "
          f"{(many['startup_cpu_s'] - base['startup_cpu_s']) / per_peer * 1000:.3f} ms, steady CPU "
          f"{(many['window_cpu_s'] - base['window_cpu_s']) / per_peer / args.window * 1e6:.2f} us/s")
    print(f"per SA:   RssAnon {(loaded['RssAnon'] - many['RssAnon']) / established:.2f} kB, Pss "
          f"{(loaded['Pss'] - many['Pss']) / established:.2f} kB, steady CPU (rekey every "
          f"~{args.child_lifetime * 0.85:.0f} s, DPD {args.dpd} s) "
          f"{(loaded['window_cpu_s'] - many['window_cpu_s']) / established / args.window * 1000:.3f} ms/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
