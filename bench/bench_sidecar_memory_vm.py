"""Benchmark: private memory of a mesh-mode sidecar with the XFRM data plane and one real CHILD_SA (VM).

The host kernel has XFRM but no ESP, so `bench_sidecar_memory.py --mesh` runs data plane `none`.
This one boots the VM tier's kernel once (tests/vm/runner.py, virtme-ng, software emulation) and,
inside it, per `--source` checkout: a node namespace with a bridge and the standalone operator
(this checkout's), two pod namespaces `web` and `db` with the checkout's sidecar started as the
webhook injects it (`ipsec-mesh-sidecar mesh`, environment only, data plane `xfrm`), from a venv
built as the sidecar image builds it (docker/build-venv.sh, the nftables binding copied in, `-OO`
bytecode) and with the image's environment (PYTHONOPTIMIZE=2, MALLOC_TRIM_THRESHOLD_=131072).
A ping from web to db makes the kernel raise an ACQUIRE, the sidecars negotiate one IKE SA with
one CHILD_SA and the ping crosses as ESP (the kernel's SA counters say how many packets). With
the status reports every second and peer-map long polls of 2 s as in `--mesh`, each sidecar's
VmRSS, RssAnon, RssFile (/proc/PID/status) and Pss (/proc/PID/smaps_rollup) are read 5 s later,
five times a second apart (medians; RssAnon's range too: a request in flight holds a TLS connection),
and the floor (the image venv's python importing what every sidecar needs) under the same
environment. Both sidecars are as injected; `db` answered the IKE SA, `web` started it.

    sudo .venv/bin/python bench/bench_sidecar_memory_vm.py --source /tmp/main-export --source . [--rounds 2]

The sources, the venv and the results live in one host directory that the guest can write
(`--rwdir`); `--keep` leaves it. Boot and run take several minutes under emulation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "sidecar"), str(ROOT / "operator"), str(ROOT / "bench")]

from bench_sidecar_memory import BASELINE, FIELDS, memory  # noqa: E402

IMAGE_ENV = {"PYTHONOPTIMIZE": "2", "MALLOC_TRIM_THRESHOLD_": "131072", "PYTHONDONTWRITEBYTECODE": "1"}
MESH_YAML = """
network: 10.77.0.0/24
trustDomain: bench.mesh.local
pods:
  - {name: web, namespace: shop, serviceAccount: web, labels: {app: web}, ips: [10.77.0.10]}
  - {name: db, namespace: shop, serviceAccount: db, labels: {app: db}, ips: [10.77.0.11]}
peerings:
  - name: web-db
    namespace: shop
    spec:
      selector: {matchLabels: {app: web}}
      peers: [{podSelector: {matchLabels: {app: db}}}]
"""
READY_TIMEOUT = 600.0  # python starts slowly under emulation
SETTLE = 5.0  # seconds of status reports and long polls before reading
SAMPLES = 5  # reads of each sidecar, a second apart: figures are their medians
ESP_COUNTERS = re.compile(r"(\d+)\(bytes\), (\d+)\(packets\)")
# --trace: a sitecustomize on the sidecars' path (the bench's only, never the product's) that answers SIGUSR2
# with pymalloc's own account (sys._debugmallocstats) on stderr, between two marker lines.
TRACE_HOOK = """
import os, signal, sys, time
def _ipsec_mesh_bench_dump(signum, frame):
    os.write(2, b"@@mallocstats %.3f\\n" % time.monotonic())
    sys._debugmallocstats()
    os.write(2, b"@@end\\n")
signal.signal(signal.SIGUSR2, _ipsec_mesh_bench_dump)
"""
TRACE_DUMP = re.compile(r"^@@mallocstats [^\n]*\n(.*?)^@@end\n", re.S | re.M)
MALLOC_STATS = {"arenas": re.compile(r"^# arenas allocated current\s*=\s*([\d,]+)", re.M),
                "allocated": re.compile(r"^# bytes in allocated blocks\s*=\s*([\d,]+)", re.M),
                "available": re.compile(r"^# bytes in available blocks\s*=\s*([\d,]+)", re.M),
                "unused pools": re.compile(r"^\d+ unused pools \* \d+ bytes\s*=\s*([\d,]+)", re.M)}


# ---------------------------------------------------------------- host side

def prepare(rundir: Path, sources: list[Path]) -> dict:
    """The image's venv and a copy of each checkout's code, compiled as the image is, in `rundir`."""
    venv = rundir / "venv"
    env = {**os.environ, "PYTHON": sys.executable}
    for step in ("deps", "project"):
        subprocess.run(["sh", "docker/build-venv.sh", step, "sidecar", str(venv)], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL, timeout=900)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # As the Dockerfile's sidecar stage: netfilter's binding out of Debian's python3-nftables.
    import nftables

    shutil.copytree(Path(nftables.__file__).resolve().parent, Path(purelib) / "nftables",
                    ignore=shutil.ignore_patterns("__pycache__"))
    copies = []
    for index, source in enumerate(sources):
        copy = rundir / f"src{index}-{source.resolve().name}"
        for part in ("sidecar", "operator"):
            shutil.copytree(source / part, copy / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        # The checkout's own `ipsec-mesh-sidecar` (its pyproject's entry point), written as pip writes a
        # console script: the venv's one is the entry point of this checkout only.
        module, function = tomllib.loads((source / "pyproject.toml").read_text())["project"]["scripts"][
            "ipsec-mesh-sidecar"].split(":")
        script = copy / "bin" / "ipsec-mesh-sidecar"
        script.parent.mkdir()
        script.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {module} import {function}\n"
                          f"if __name__ == '__main__':\n    sys.exit({function}())\n")
        script.chmod(0o755)
        copies.append(str(copy))
    for level in ("0", "2"):
        subprocess.run([str(venv / "bin" / "python"), "-m", "compileall", "-q", "-j", "0", "-o", level, purelib,
                        *copies], check=True, stdout=subprocess.DEVNULL, timeout=900)
    return {"venv": str(venv), "sources": copies, "labels": [str(s) for s in sources]}


def host_main(args: argparse.Namespace) -> int:
    from machine import describe

    from tests.vm.runner import command_script, locate, run_script

    if os.geteuid() != 0:
        print("needs root (the VM and network namespaces)", file=sys.stderr)
        return 2
    config = locate(rootdir=ROOT)
    # The node's bridge, and nf_tables for a sidecar that still lists its table at start (main before issue 14's
    # on-demand translation): loaded up front, like the tier's own modules.
    config = dataclasses.replace(config, guest_modules=(*config.guest_modules, "bridge", "nf_tables"))
    rundir = Path(tempfile.mkdtemp(prefix="ipsec-mesh-memvm-"))
    try:
        plan = {**prepare(rundir, [s.resolve() for s in args.source or [ROOT]]), "rounds": args.rounds,
                "dataplane": args.dataplane, "one_sa": not args.no_sa, "status_interval": args.status_interval,
                "settle": args.settle, "trace": args.trace}
        (rundir / "plan.json").write_text(json.dumps(plan))
        if args.here:  # this kernel, no VM: for set-ups without ESP (no SA, or data plane none)
            status = guest_main(rundir)
            report(json.loads((rundir / "results.json").read_text()), describe(), None)
            return status
        argv = [sys.executable, str(Path(__file__).resolve()), "--guest", str(rundir)]
        result = run_script(command_script(config, rundir, ROOT, argv, sys.executable, label="bench"), rundir, ROOT,
                            config)
        results = rundir / "results.json"
        if not results.exists():
            print(f"no results from the VM (exit status {result.exit_status}); console log {result.console_log}",
                  file=sys.stderr)
            return 1
        report(json.loads(results.read_text()), describe(), result)
        return 0 if result.exit_status == 0 else 1
    finally:
        if args.keep:
            print(f"kept {rundir}")
        else:
            shutil.rmtree(rundir, ignore_errors=True)


def row(label: str, figures: dict[str, int]) -> str:
    """kB as /proc gives them, and MiB (kB / 1024: what bench_sidecar_memory.py prints as "MB")."""
    return f"  {label:44} " + "  ".join(f"{name} {figures.get(name, 0):6d} kB = {figures.get(name, 0) / 1024:5.2f} MiB"
                                         for name in (*FIELDS, "Pss"))


def report(results: dict, host: str, result) -> None:
    print(f"host: {host}")
    where = "this host, no VM" if result is None else (
        f"VM (software emulation), boot {result.boot_seconds or 0:.0f} s, whole run {result.total_seconds:.0f} s")
    print(f"measured on: kernel {results['kernel']}, {results['cpus']} CPUs, {results['python']}, "
          f"cryptography {results['cryptography']}; {where}")
    setup = "one IKE SA + CHILD_SA (real ESP)" if results["one_sa"] else "no SA"
    print(f"kB = 1024 bytes (/proc), MiB = 1024 kB; data plane {results['dataplane']}, {setup}, image venv and environment")
    print(row("floor (image venv python + what every sidecar imports)", results["floor"]))
    for run in results["runs"]:
        for pod in ("db", "web"):
            figures = run["pods"][pod]
            print(row(f"{Path(run['source']).name[:14]} {pod} (round {run['round']})", figures)
                  + f"  RssAnon {figures['RssAnon_min']}-{figures['RssAnon_max']} kB over {SAMPLES} reads;"
                  + f" IKE SAs {figures['ike_sas']}, CHILD_SAs {figures['child_sas']}, kernel ESP SAs "
                    f"{figures['esp_sas']} carried {figures['esp_packets']} packets")
            huge = figures.get("huge", {})
            print(f"      transparent huge pages: {huge.get('AnonHugePages', '?')} kB (THP_enabled {huge.get('THP_enabled', '?')})")
            biggest = sorted(figures["anonymous"].items(), key=lambda kv: -kv[1])[:8]
            print("      anonymous kB by mapping: " + ", ".join(f"{kind} {kb}" for kind, kb in biggest))
            print(f"      log: {figures['log_lines']} lines" + "".join(f"\n        {line}" for line in figures["log_notable"]))
            for moment in figures.get("timeline", ()):
                print(f"      t+{moment['t']:5.1f} s RssAnon {moment['RssAnon']:6d} kB threads {moment['threads']}"
                      f" log {moment['log_lines']:3d} lines pymalloc "
                      + " ".join(f"{key} {value}" for key, value in moment["pymalloc"].items())
                      + "".join(f"; {kind} {delta:+d}" for kind, delta in moment["changed"].items()))


# ---------------------------------------------------------------- guest side

def _http_ok(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode() if response.status == 200 else None
    except OSError:
        return None


def _gauge(netns: str, name: str) -> int:
    """A gauge of the sidecar's /metrics (ipsec_mesh_child_sas, ipsec_mesh_ike_sas); 0 until it answers."""
    from ipsec_mesh.meshapi.ports import HEALTH_PORT
    from ipsec_mesh_operator.netns import in_netns

    text = in_netns(netns, _http_ok, f"http://127.0.0.1:{HEALTH_PORT}/metrics") or ""
    return sum(int(float(line.split()[1])) for line in text.splitlines() if line.startswith(f"{name} "))


def _until(what: str, check, processes: list[subprocess.Popen], timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        dead = [p.args for p in processes if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s (exited: {dead})")
        time.sleep(1.0)


def _esp(netns: str) -> tuple[int, int]:
    """ESP SAs in the pod's kernel and the packets they carried (either direction)."""
    text = subprocess.run(["ip", "-s", "-n", netns, "xfrm", "state"], capture_output=True, text=True, check=True,
                          timeout=30).stdout
    packets = sum(int(m.group(2)) for m in ESP_COUNTERS.finditer(text))
    return text.count("proto esp"), packets


def one_run(source: Path, venv: Path, workdir: Path, dataplane: str = "xfrm", one_sa: bool = True,
            status_interval: float = 1.0, settle: float = SETTLE, trace: float = 0.0) -> dict:
    """Each sidecar's figures; `one_sa`: after web's ping to db brought up one CHILD_SA (needs ESP in the
    kernel unless `dataplane` is none, where nothing raises an ACQUIRE: then no SA either). With `trace`,
    each sidecar is also read every second for `trace` seconds from the SA on (`timeline`)."""
    from ipsec_mesh.meshapi.ports import HEALTH_PORT
    from ipsec_mesh_operator.demo.config import load_config
    from ipsec_mesh_operator.demo.runner import Demo
    from ipsec_mesh_operator.netns import in_netns, stop_process

    (workdir / "mesh.yaml").write_text(MESH_YAML)
    if trace:
        (workdir / "trace").mkdir()
        (workdir / "trace" / "sitecustomize.py").write_text(TRACE_HOOK)
    demo = Demo(load_config(workdir / "mesh.yaml"), out=sys.stderr)
    sidecars: dict[str, subprocess.Popen] = {}
    try:
        demo.build_network()
        demo.start_operator()
        operator = demo.operator
        for pod in demo.config.pods:
            path = [str(source / "sidecar")] + ([str(workdir / "trace")] if trace else [])
            env = {"PATH": f"{venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": ":".join(path),
                   "PYTHONUNBUFFERED": "1", **IMAGE_ENV,
                   # What the webhook gives a pod (server/admission.py), the mesh API being the node's operator.
                   "IPSEC_MESH_API_URL": operator.url, "IPSEC_MESH_TOKEN_FILE": str(operator.token_file(pod)),
                   "IPSEC_MESH_CA_BUNDLE": operator.ca_bundle, "IPSEC_MESH_HEALTH_PORT": str(HEALTH_PORT),
                   "POD_NAME": pod.name, "POD_NAMESPACE": pod.namespace, "POD_IPS": ",".join(pod.ips),
                   # As bench_sidecar_memory.py --mesh: a report every second, long polls of 2 s.
                   "IPSEC_MESH_STATUS_INTERVAL": f"{status_interval:g}", "IPSEC_MESH_WATCH_WAIT": "2", "IPSEC_MESH_DATAPLANE": dataplane}
            with open(workdir / f"sidecar-{pod.name}.log", "wb") as log:
                sidecars[pod.name] = subprocess.Popen(
                    ["ip", "netns", "exec", demo.netns(pod.name), str(source / "bin" / "ipsec-mesh-sidecar"), "mesh"],
                    env=env, stdout=log, stderr=subprocess.STDOUT)
        processes = list(sidecars.values())
        for name in sidecars:
            _until(f"sidecar {name} ready", lambda name=name: in_netns(
                demo.netns(name), _http_ok, f"http://127.0.0.1:{HEALTH_PORT}/ready") is not None, processes)
        if one_sa:
            bring_up_one_sa(demo, processes)
        timelines = follow({name: p.pid for name, p in sidecars.items()}, workdir, trace) if trace else {}
        time.sleep(settle)
        # A report or long poll in flight holds a TLS connection and its buffers: several reads a second apart.
        samples: dict[str, list[dict[str, int]]] = {name: [] for name in sidecars}
        for _ in range(SAMPLES):
            for name, process in sidecars.items():
                samples[name].append(memory(process.pid))
            time.sleep(1.0)
        figures = {}
        for name, reads in samples.items():
            figures[name] = {field: int(statistics.median(read[field] for read in reads)) for field in reads[0]}
            figures[name]["RssAnon_min"] = min(read["RssAnon"] for read in reads)
            figures[name]["RssAnon_max"] = max(read["RssAnon"] for read in reads)
            figures[name]["esp_sas"], figures[name]["esp_packets"] = _esp(demo.netns(name))
            figures[name]["anonymous"] = anonymous_by_mapping(sidecars[name].pid)
            figures[name]["huge"] = huge_pages(sidecars[name].pid)
            if name in timelines:
                figures[name]["timeline"] = timelines[name]
            logged = sidecar_log(workdir, name)[0].splitlines()
            figures[name]["log_lines"] = len(logged)
            figures[name]["log_notable"] = [line[:300] for line in logged
                                            if any(word in line for word in ("WARNING", "ERROR", "Traceback"))][-5:]
            for gauge in ("ike_sas", "child_sas"):  # what the process held when read
                figures[name][gauge] = _gauge(demo.netns(name), f"ipsec_mesh_{gauge}")
        return figures
    except BaseException:
        for name in sidecars:
            sys.stderr.write(f"--- sidecar {name} log (tail)\n")
            sys.stderr.write((workdir / f"sidecar-{name}.log").read_text(errors="replace")[-3000:])
        raise
    finally:
        for process in sidecars.values():
            stop_process(process, grace=30)
        demo.cleanup()


def anonymous_by_mapping(pid: int) -> dict[str, int]:
    """The process's anonymous kB (/proc/PID/smaps) by where it lies: the brk heap, the stack, written
    pages of each library (relocated data), and unnamed mappings (mmap: pymalloc's 1 MiB arenas, glibc's
    large blocks and other threads' arenas, thread stacks) by their size in the address space."""
    kinds: dict[str, int] = {}
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):  # a mapping's header: range perms offset dev inode [path]
            start, end = (int(x, 16) for x in head[0].split("-"))
            path = head[5] if len(head) > 5 else ""
            name = (path if path.startswith("[") else f"lib {Path(path).name}" if path
                    else f"anon {(end - start) // 1024} kB {head[1]}")
        elif head[0] == "Anonymous:" and int(head[1]):
            kinds[name] = kinds.get(name, 0) + int(head[1])
    return kinds


def follow(pids: dict[str, int], workdir: Path, seconds: float) -> dict[str, list[dict]]:
    """Each sidecar's RssAnon, threads, log length and anonymous kB by mapping every second for `seconds`
    (bounded: at most `seconds` + 1 reads), with pymalloc's arena count asked for every 5 s (SIGUSR2,
    answered in the log by the --trace hook): what changed since the previous read, and when."""
    import signal

    start = time.monotonic()
    timelines: dict[str, list[dict]] = {name: [] for name in pids}
    previous: dict[str, dict[str, int]] = {}
    for tick in range(int(seconds) + 1):
        if tick % 5 == 0:
            for pid in pids.values():
                os.kill(pid, signal.SIGUSR2)
        time.sleep(max(start + tick + 0.5 - time.monotonic(), 0.0))  # the dumps are in the log by now
        for name, pid in pids.items():
            status = proc_fields(f"/proc/{pid}/status")
            anonymous = anonymous_by_mapping(pid)
            logged, last = sidecar_log(workdir, name)
            stats = {key: int(found.group(1).replace(",", "")) for key, pattern in MALLOC_STATS.items()
                     if (found := pattern.search(last))}
            before = previous.get(name, anonymous)
            changed = {kind: anonymous.get(kind, 0) - before.get(kind, 0)
                       for kind in sorted({*anonymous, *before}) if abs(anonymous.get(kind, 0) - before.get(kind, 0)) >= 16}
            previous[name] = anonymous
            timelines[name].append({"t": time.monotonic() - start, "RssAnon": int(status["RssAnon"].split()[0]),
                                    "threads": int(status["Threads"]), "pymalloc": stats, "log_lines": len(logged.splitlines()),
                                    "changed": changed})
        time.sleep(max(start + tick + 1 - time.monotonic(), 0.0))
    return timelines


def sidecar_log(workdir: Path, name: str) -> tuple[str, str]:
    """The sidecar's log without the --trace hook's dumps, and the last dump ("" before the first)."""
    text = (workdir / f"sidecar-{name}.log").read_text(errors="replace")
    dumps = TRACE_DUMP.findall(text)
    return TRACE_DUMP.sub("", text), dumps[-1] if dumps else ""


def proc_fields(path: str) -> dict[str, str]:
    """The `Name: value` lines of a /proc file (status, smaps_rollup), values stripped."""
    return {name: value.strip() for name, colon, value in
            (line.partition(":") for line in Path(path).read_text().splitlines()) if colon}


def huge_pages(pid: int) -> dict[str, int | str]:
    """kB of the process's anonymous memory in transparent huge pages (smaps_rollup), and whether the kernel
    may give it any (THP_enabled in /proc/PID/status: 0 once the process opted out)."""
    return {"AnonHugePages": int(proc_fields(f"/proc/{pid}/smaps_rollup")["AnonHugePages"].split()[0]),
            "THP_enabled": proc_fields(f"/proc/{pid}/status").get("THP_enabled", "?")}


def bring_up_one_sa(demo, processes: list[subprocess.Popen]) -> None:
    from ipsec_mesh_operator.netns import run

    db = demo.config.pod("db").ips[0]
    # The first packet raises the ACQUIRE; the kernel holds it (larval drop off) until the SA is in.
    ping = run("ip", "netns", "exec", demo.netns("web"), "ping", "-c", "5", "-i", "0.5", "-w", "120", db,
               check=False, timeout=150)
    if ping.returncode != 0:
        raise RuntimeError(f"web could not ping db through the mesh:\n{ping.stdout}")
    for name in ("web", "db"):
        _until(f"{name}'s CHILD_SA", lambda name=name: _gauge(demo.netns(name), "ipsec_mesh_child_sas") == 1, processes)


def floor(env: dict[str, str], python: Path) -> dict[str, int]:
    """The floor's figures once its imports are done (it says so: under emulation they take seconds)."""
    process = subprocess.Popen([str(python), "-c", BASELINE.replace("input()", "print(flush=True); input()")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **env})
    try:
        process.stdout.readline()
        time.sleep(1.0)
        return memory(process.pid)
    finally:
        process.communicate(b"\n", timeout=60)


def guest_main(rundir: Path) -> int:
    import platform

    plan = json.loads((rundir / "plan.json").read_text())
    venv = Path(plan["venv"])
    version = subprocess.run([str(venv / "bin" / "python"), "-c", "import cryptography; print(cryptography.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    results = {"kernel": platform.release(), "cpus": os.cpu_count(), "python": f"Python {platform.python_version()}",
               "cryptography": version, "floor": floor(IMAGE_ENV, venv / "bin" / "python"), "runs": [],
               "dataplane": plan["dataplane"], "one_sa": plan["one_sa"]}
    for round_ in range(1, plan["rounds"] + 1):
        for source, label in zip(plan["sources"], plan["labels"], strict=True):
            with tempfile.TemporaryDirectory(prefix="memvm-") as workdir:
                pods = one_run(Path(source), venv, Path(workdir), plan["dataplane"], plan["one_sa"],
                               plan.get("status_interval", 1.0), plan.get("settle", SETTLE), plan.get("trace", 0.0))
            results["runs"].append({"source": label, "round": round_, "pods": pods})
            print(f"@@bench {label} round {round_}: {json.dumps(pods)}", flush=True)
            (rundir / "results.json").write_text(json.dumps(results))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, action="append", help="checkout whose sidecar runs (repeat to compare)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every source, alternating")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (venv, sources, results)")
    parser.add_argument("--dataplane", choices=["xfrm", "none"], default="xfrm")
    parser.add_argument("--no-sa", action="store_true", help="read the sidecars once ready, without an SA")
    parser.add_argument("--status-interval", type=float, default=1.0,
                        help="the sidecars' status report interval (the product's default is 30 s; each report trims the heap)")
    parser.add_argument("--settle", type=float, default=SETTLE, help="seconds after the SA before reading")
    parser.add_argument("--trace", type=float, default=0.0,
                        help="also read each sidecar every second for this many seconds from the SA on (with pymalloc's"
                             " arena count every 5 s, through a bench-only sitecustomize hook)")
    parser.add_argument("--here", action="store_true",
                        help="run on this kernel instead of the VM (with --no-sa: this host's kernel has no ESP)")
    parser.add_argument("--guest", type=Path, help=argparse.SUPPRESS)  # inside the VM: the run directory
    args = parser.parse_args()
    if args.guest:
        return guest_main(args.guest)
    return host_main(args)


if __name__ == "__main__":
    sys.exit(main())
