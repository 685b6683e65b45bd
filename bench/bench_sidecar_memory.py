"""Benchmark: resident memory of the sidecar, idle and with 100 IKE SAs (one CHILD_SA each).

Needs root (network namespaces). On the host: the XFRM data plane installs its policies
(the host kernel has XFRM), and the 100-SA run uses data plane `none` (no ESP on the
host kernel; the IKE and CHILD_SA state in the process is the same). The 100 IKE SAs
come from `bench/ike_loadgen.py` (our engine as 100 independent initiators), i.e. what
100 peers cost. Reports, per process: VmRSS, RssAnon (private heap), RssFile (mapped
code, shareable), Pss; and the same for a bare interpreter that imports what every
sidecar needs (cryptography, ssl, selectors, logging), the floor no change to our code can go below.

    sudo .venv/bin/python bench/bench_sidecar_memory.py [--sas 100]

`--mesh` measures mesh mode instead (no root needed): `ipsec-mesh standalone` on
127.0.0.1 and two `ipsec-mesh-sidecar mesh` (data plane none, one peering between them)
on loopback addresses; each sidecar's figures once it is ready and has talked to the
mesh API for a few seconds (certificate, peer-map long polls, status reports every
second). Two set-ups: as the webhook injects it (environment only, no settings file,
IKE on port 500 of each pod address, no SA yet), and with one IKE SA + CHILD_SA (a
settings file makes `web` initiate to `db`, and reading it loads PyYAML; `db`, the
responder, is as injected: its row is the issue's "one SA" figure). `--source DIR`
runs another checkout's code (e.g. main, for a before figure in the same run). The sidecars
run as the image runs them: the `ipsec-mesh-sidecar` console script beside this interpreter.

`--variant LABEL:NAME=VALUE,...` adds a run with that environment (interpreter and malloc
settings: PYTHONMALLOC, MALLOC_ARENA_MAX, PYTHONOPTIMIZE...), the floor read again under it;
`--no-stdlib-bytecode` adds a run as python's official images start it: no bytecode for the
standard library (those images delete it and set PYTHONDONTWRITEBYTECODE), bytecode for the
venv (pip compiles on install); done with a pycache prefix that holds only the venv's and the
checkout's bytecode. `--sidecar-venv DIR` runs the sidecars (and the floor) from another
venv, e.g. the image's, built as tests/deploy builds it (`docker/build-venv.sh deps sidecar
DIR`, then `project`): no editable-install finder (about 1 MB in the dev venv) and only the
sidecar's dependencies; the checkout's code still comes first on the path.

    .venv/bin/python bench/bench_sidecar_memory.py --mesh [--source /tmp/main-export]
        [--variant "-OO:PYTHONOPTIMIZE=2"] [--no-stdlib-bytecode]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "sidecar")]

from tests.interop.harness.netns import Topology  # noqa: E402
from tests.interop.harness.sidecar import Sidecar  # noqa: E402

FIELDS = ("VmRSS", "RssAnon", "RssFile")
# What every sidecar needs before a line of ours: the hazmat primitives it keeps (keys, AEADs,
# serialization; no cryptography.x509 since ike/certificate.py), its own event loop's selectors,
# the mesh API's ssl and logging (asyncio until 2026-12-01: the floor with it and x509 was 14.0 MB
# RssAnon, image venv).
BASELINE = ("import cryptography.hazmat.primitives.asymmetric.ec, cryptography.hazmat.primitives.serialization,"
            " cryptography.hazmat.primitives.ciphers.aead, ssl, selectors, logging; input()")
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


def baseline(env: dict[str, str] | None = None, python: str = sys.executable) -> dict[str, int]:
    proc = subprocess.Popen([python, "-c", BASELINE], stdin=subprocess.PIPE,
                            env=None if env is None else {**os.environ, **env})
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


MESH = {
    "trustDomain": "bench.mesh.local",
    "pods": [{"name": "web", "namespace": "shop", "serviceAccount": "web", "labels": {"app": "web"},
              "ips": ["127.77.0.10"]},
             {"name": "db", "namespace": "shop", "serviceAccount": "db", "labels": {"app": "db"},
              "ips": ["127.77.0.11"]}],
    "peerings": [{"name": "web-db", "namespace": "shop",
                  "spec": {"selector": {"matchLabels": {"app": "web"}},
                           "peers": [{"podSelector": {"matchLabels": {"app": "db"}}}]}}],
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(what: str, check, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s (exit code {process.poll()})")
        time.sleep(0.2)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def mesh_mode(source: Path, workdir: Path, one_sa: bool, variant: dict[str, str],
              bindir: Path = Path(sys.executable).parent) -> dict[str, dict[str, int]]:
    """Figures of each of two ready mesh-mode sidecars fed by a standalone operator.

    Each on IKE port 500 of its address. one_sa: `web` initiates to `db` (a settings file,
    which loads PyYAML); `db` stays as injected (environment only); figures read once the SA
    is up. Else both as injected.
    variant: environment of the sidecars only (the operator runs as usual); bindir: where
    the sidecar's console script is.
    """
    env = {**os.environ, "PYTHONPATH": f"{source / 'sidecar'}{os.pathsep}{source / 'operator'}"}
    (workdir / "mesh.yaml").write_text(json.dumps(MESH))  # JSON is YAML
    db = next(p["ips"][0] for p in MESH["pods"] if p["name"] == "db")
    (workdir / "sidecar-web.yaml").write_text(json.dumps({"log": {"level": "info"}, "initiate": [db]}))
    state = workdir / "state"
    with contextlib.ExitStack() as stack:
        def start(args: list[str], extra: dict[str, str], log: str) -> subprocess.Popen:
            with open(workdir / log, "wb") as out:
                process = subprocess.Popen(args, env={**env, **extra}, stdout=out, stderr=subprocess.STDOUT)
            stack.callback(_terminate, process)
            return process

        operator = start([sys.executable, "-m", "ipsec_mesh_operator.main", "standalone", "--config", str(workdir / "mesh.yaml"),
                          "--state-dir", str(state), "--listen", "127.0.0.1:0"], {}, "operator.log")
        _wait("the standalone operator", (state / "api-url").exists, operator)
        sidecars = {}
        for pod in MESH["pods"]:
            port = _free_port()
            initiator = one_sa and pod["name"] == "web"
            extra = {"IPSEC_MESH_SETTINGS": str(workdir / "sidecar-web.yaml")} if initiator else {}
            process = start([str(bindir / "ipsec-mesh-sidecar"), "mesh"], {
                "IPSEC_MESH_API_URL": (state / "api-url").read_text().strip(),
                "IPSEC_MESH_TOKEN_FILE": str(state / "pods" / pod["namespace"] / pod["name"] / "token"),
                "IPSEC_MESH_CA_BUNDLE_FILE": str(state / "ca-bundle.pem"), **extra,
                "IPSEC_MESH_DATAPLANE": "none", "IPSEC_MESH_HEALTH_HOST": "127.0.0.1",
                "IPSEC_MESH_HEALTH_PORT": str(port), "IPSEC_MESH_STATUS_LISTEN": "off",
                "IPSEC_MESH_STATUS_INTERVAL": "1", "IPSEC_MESH_WATCH_WAIT": "2",
                "POD_NAME": pod["name"], "POD_NAMESPACE": pod["namespace"], "POD_IPS": pod["ips"][0], **variant,
            }, f"sidecar-{pod['name']}.log")
            sidecars[pod["name"]] = (process, port)
        for name, (process, port) in sidecars.items():
            _wait(f"sidecar {name} ready", lambda port=port: _ready(port), process)
        if one_sa:
            _, web_port = sidecars["web"]
            _wait("web's CHILD_SA with db", lambda: _child_sas(web_port) == 1, sidecars["web"][0])
        time.sleep(SETTLE + 3)  # a few status reports and long polls
        return {name: memory(process.pid) for name, (process, _) in sidecars.items()}


def venv_bytecode_only(sources: list[Path], prefix: Path) -> dict[str, str]:
    """Environment for the image's start-up: bytecode for site-packages and `sources`, none for the stdlib.

    compileall writes into `prefix` (PYTHONPYCACHEPREFIX mirrors source paths there), so the
    interpreter finds bytecode for what is compiled and compiles the standard library from
    source at every start without writing it (PYTHONDONTWRITEBYTECODE), as in python's images.
    """
    import sysconfig

    roots = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
             *(str(source / part) for source in sources for part in ("sidecar", "operator"))]
    subprocess.run([sys.executable, "-X", f"pycache_prefix={prefix}", "-m", "compileall", "-q", "-j", "0",
                    *sorted(set(roots))], check=True, stdout=subprocess.DEVNULL)
    return {"PYTHONPYCACHEPREFIX": str(prefix), "PYTHONDONTWRITEBYTECODE": "1"}


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    label, _, assignments = text.partition(":")
    env = dict(item.split("=", 1) for item in assignments.split(",") if item)
    return label, env


def _child_sas(port: int) -> int:
    """CHILD_SAs the sidecar's /metrics reports."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0
    return sum(int(float(line.split()[1])) for line in text.splitlines() if line.startswith("ipsec_mesh_child_sas "))


def _terminate(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def line(label: str, figures: dict[str, int]) -> str:
    return f"{label:40} " + "  ".join(f"{name} {figures.get(name, 0) / 1024:5.1f} MB" for name in (*FIELDS, "Pss"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sas", type=int, default=100)
    parser.add_argument("--mesh", action="store_true", help="mesh mode against a standalone operator")
    parser.add_argument("--source", type=Path, action="append",
                        help="checkout whose code runs (--mesh; repeat to compare, e.g. main then this one)")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:NAME=VALUE,...",
                        help="--mesh: also run the sidecars (and the floor) with this environment")
    parser.add_argument("--no-stdlib-bytecode", action="store_true",
                        help="--mesh: also run as python's images do (no stdlib bytecode, venv compiled)")
    parser.add_argument("--setup", choices=["injected", "one-sa", "both"], default="both")
    parser.add_argument("--sidecar-venv", type=Path, help="--mesh: run the sidecars from this venv (the image's)")
    args = parser.parse_args()
    if args.mesh:
        sources = [source.resolve() for source in args.source or [ROOT]]
        with tempfile.TemporaryDirectory(prefix="mem-bench-pyc-") as pycache:
            variants = [("", {}), *map(parse_variant, args.variant)]
            if args.no_stdlib_bytecode:
                variants.append(("no stdlib .pyc", venv_bytecode_only(sources, Path(pycache))))
            setups = {"injected": (False,), "one-sa": (True,), "both": (False, True)}[args.setup]
            bindir = (args.sidecar_venv or Path(sys.executable).parent.parent).absolute() / "bin"
            for label, variant in variants:
                print(line(f"floor {label}".strip(), baseline(variant, str(bindir / "python"))))
                for source in sources:
                    for one_sa in setups:
                        with tempfile.TemporaryDirectory(prefix="mem-bench-mesh-") as workdir:
                            for name, figures in mesh_mode(source, Path(workdir), one_sa, variant,
                                                           bindir).items():
                                setup = "one SA" if one_sa else "injected"
                                print(line(f"{source.name[:12]} {name} {setup} {label}".rstrip(), figures))
        return 0
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
