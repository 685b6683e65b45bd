"""Benchmark: resident memory of the sidecar, idle and with 100 IKE SAs (one CHILD_SA each).

Needs root (network namespaces). On the host: the XFRM data plane installs its policies
(the host kernel has XFRM), and the 100-SA run uses data plane `none` (no ESP on the
host kernel; the IKE and CHILD_SA state in the process is the same). The 100 IKE SAs
come from `bench/ike_loadgen.py` (our engine as 100 independent initiators), i.e. what
100 peers cost. Reports, per process: VmRSS, RssAnon (private heap), RssFile (mapped
code, shareable), Pss; and the same for a bare interpreter that imports what every
sidecar needs (cryptography, asyncio), the floor no change to our code can go below.

    sudo .venv/bin/python bench/bench_sidecar_memory.py [--sas 100]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "sidecar")]

from tests.interop.harness.netns import Topology  # noqa: E402
from tests.interop.harness.sidecar import Sidecar  # noqa: E402

FIELDS = ("VmRSS", "RssAnon", "RssFile")
BASELINE = "import cryptography.x509, cryptography.hazmat.primitives.ciphers.aead, asyncio; input()"
SETTLE = 2.0  # seconds after readiness (or the last SA) before reading


def _responder_bench():
    """bench_ike_responder.py: its sidecar settings and load generator driver."""
    spec = importlib.util.spec_from_file_location("bench_ike_responder", ROOT / "bench" / "bench_ike_responder.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def memory(pid: int) -> dict[str, int]:
    """kB figures of one process: VmRSS, RssAnon, RssFile (status) and Pss (smaps_rollup)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in FIELDS:
            out[name] = int(value.split()[0])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            out["Pss"] = int(line.split()[1])
    return out


def baseline() -> dict[str, int]:
    proc = subprocess.Popen([sys.executable, "-c", BASELINE], stdin=subprocess.PIPE)
    try:
        time.sleep(3.0)  # imports done long before (about 0.2 s here)
        return memory(proc.pid)
    finally:
        proc.communicate(b"\n", timeout=10)


def sidecar_pid(sidecar: Sidecar) -> int:
    """The interpreter's pid (`ip netns exec` execs `env`, which execs python: one pid)."""
    return sidecar.process.pid


def idle(dataplane: str, workdir: Path, bench) -> dict[str, int]:
    with Topology() as topo:
        pair = topo.pair(ipv6=False)
        sidecar = Sidecar(pair.right, workdir, address=bench.RESPONDER_ADDR, identity=bench.RESPONDER_ID,
                          peer_address=f"{bench.LOADGEN_ADDR}/32", peer_identity=bench.LOADGEN_ID,
                          psk=bench.PSK, dataplane=dataplane, log_level="info", name=f"idle-{dataplane}")
        sidecar.start(60)
        try:
            time.sleep(SETTLE)
            return memory(sidecar_pid(sidecar))
        finally:
            sidecar.stop()


def loaded(sas: int, workdir: Path, bench) -> tuple[dict[str, int], int]:
    with Topology() as topo:
        pair = topo.pair(ipv6=False)
        creds = bench.Credentials.make("psk")
        responder = bench.SidecarResponder(pair.right, workdir, creds)
        pid = responder.start()
        try:
            bench.run_loadgen(pair.left, workdir, creds, sas, window=min(sas, 20), deadline=max(60.0, sas * 0.5))
            time.sleep(SETTLE)
            return memory(pid), responder.established()
        finally:
            responder.stop()


def line(label: str, figures: dict[str, int]) -> str:
    return f"{label:40} " + "  ".join(f"{name} {figures.get(name, 0) / 1024:5.1f} MB" for name in (*FIELDS, "Pss"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sas", type=int, default=100)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    bench = _responder_bench()
    print(f"machine: {bench.machine()}")
    print(line("python + cryptography + asyncio", baseline()))
    with tempfile.TemporaryDirectory(prefix="mem-bench-") as workdir:
        for dataplane in ("none", "xfrm"):
            print(line(f"sidecar idle, data plane {dataplane}", idle(dataplane, Path(workdir), bench)))
        figures, established = loaded(args.sas, Path(workdir), bench)
        print(line(f"sidecar, {established} IKE SAs + CHILD_SAs (none)", figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
