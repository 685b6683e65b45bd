"""Benchmark: what mesh mode's start-up imports cost in private memory, data plane `none` and `xfrm`,
for one or more checkouts side by side (the "What stands in the way of 16 MB" table of
docs/benchmarks.md, measured the same way: groups imported in a fresh interpreter, RssAnon read after each).

Each round runs every checkout once, alternating, in a fresh interpreter without `site` (no editable-install
finder, as in the image) with the checkout's `sidecar/` first on the path and this interpreter's
site-packages after it. Groups, in order: the interpreter; mesh mode's start-up imports except the XFRM
data plane (what data plane `none` loads); then `ipsec_mesh.agent.xfrm_dataplane` (the XFRM layer, the
Service translation and, before issue 14's own netlink codec, pyroute2's netlink modules). Medians of
`--rounds`.

    .venv/bin/python bench/bench_xfrm_import_memory.py --source /tmp/before --source . [--rounds 7]
        [--optimize] [--start]

`--start` (root): each run in a fresh network namespace, then also the data plane's start with no Service
in the peer map (its Service translation's first update: libnftables through ctypes until issue 14's
on-demand loading), the row a pod's sidecar pays beyond the imports.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
from pathlib import Path

PROBE = """
import json, os, sys

def anon():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])

rows = [("interpreter", len(sys.modules), anon())]
import ipsec_mesh.agent.cli
ipsec_mesh.agent.cli.mesh_main = lambda settings, dataplane: 0
ipsec_mesh.agent.cli.main(["mesh"])
import ipsec_mesh.agent.mesh_settings, ipsec_mesh.agent.bootstrap, ipsec_mesh.meshapi.client, ipsec_mesh.agent.mesh_mode
rows.append(("start-up, data plane none", len(sys.modules), anon()))
import ipsec_mesh.agent.xfrm_dataplane
rows.append(("+ data plane xfrm", len(sys.modules), anon()))
if os.environ.get("PROBE_START"):  # in a fresh namespace: what the data plane's start adds with no Service
    from ipsec_mesh.agent.xfrm_dataplane import XfrmDataPlane
    XfrmDataPlane().services.apply(())
    rows.append(("+ started, no Service", len(sys.modules), anon()))
rows.append(("pyroute2 modules", sum(m.split(".")[0] == "pyroute2" for m in sys.modules), 0))
print(json.dumps(rows))
"""


def measure(source: Path, flags: tuple[str, ...] = (), netns: str | None = None) -> list[tuple[str, int, int]]:
    path = [str(source / "sidecar"), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env = {"PYTHONPATH": os.pathsep.join(path), "PATH": "/usr/bin:/bin", **({"PROBE_START": "1"} if netns else {})}
    argv = [sys.executable, "-S", *flags, "-c", PROBE]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True, env=env)
    return [tuple(row) for row in json.loads(result.stdout)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", action="append", type=Path, help="checkout to measure (repeat to compare)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--optimize", action="store_true",
                        help="run the probe with -OO, as the sidecar image does (needs .opt-2.pyc everywhere, "
                             "or every module compiles from source: python -OO -m compileall)")
    parser.add_argument("--start", action="store_true",
                        help="(root) also start the data plane's Service translation with no Service, each run in a "
                             "fresh network namespace, as a pod's sidecar does at start")
    args = parser.parse_args()
    sources = args.source or [Path(__file__).resolve().parent.parent]
    runs: dict[Path, list[list[tuple[str, int, int]]]] = {source: [] for source in sources}
    netns = f"xfrm-import-mem-{os.getpid()}" if args.start else None
    for _ in range(args.rounds):
        for source in sources:
            if netns:
                subprocess.run(["ip", "netns", "add", netns], check=True, timeout=30)
            try:
                runs[source].append(measure(source, ("-OO",) if args.optimize else (), netns))
            finally:
                if netns:
                    subprocess.run(["ip", "netns", "del", netns], check=True, timeout=30)
    print(f"python {sys.version.split()[0]}; {args.rounds} rounds, medians; RssAnon in MB (10^6 bytes)")
    for source, rounds in runs.items():
        print(f"{source}:")
        for index, (name, modules, _) in enumerate(rounds[0]):
            kib = statistics.median(r[index][2] for r in rounds)
            spread = [r[index][2] * 1024 / 1e6 for r in rounds]
            print(f"  {name:28} modules {modules:4d}  RssAnon {kib * 1024 / 1e6:6.2f} MB"
                  f"  (min {min(spread):.2f}, max {max(spread):.2f})")
        none = statistics.median(r[1][2] for r in rounds)
        xfrm = statistics.median(r[2][2] for r in rounds)
        print(f"  xfrm over none: {(xfrm - none) * 1024 / 1e6:.2f} MB")
        if args.start:
            started = statistics.median(r[3][2] for r in rounds)
            print(f"  started (no Service) over none: {(started - none) * 1024 / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
