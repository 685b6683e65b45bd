"""Responder CPU time per established IKE SA: our sidecar against strongSwan's charon.

Two network namespaces: the load generator (10.0.0.1, `bench/ike_loadgen.py`, our own
IKE engine as initiator) and the responder (10.0.0.2): charon (with the fake-ESP shim,
CHILD_SA policies off: no kernel install) or our sidecar (`dataplane: none`). Each IKE
SA: X25519, AES-GCM-256, PRF-SHA256, one CHILD_SA (AES-GCM-256, ESN), PSK or ECDSA
P-256 certificates. The responder's utime+stime (/proc/<pid>/stat, all threads) is read
after startup and after the run; the count of established SAs comes from the responder
(charon: vici list-sas; ours: the status endpoint). DoS protection (cookies, half-open
limits per source) is off on both, so every IKE SA costs exactly two exchanges.

    sudo python bench/bench_ike_responder.py [--sas N] [--auth psk|ecdsa|both]
        [--window 50] [--rounds R] [--profile FILE.prof] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "sidecar")]

from machine import cpu_model  # noqa: E402  (bench/, the script's own directory)

from tests.interop.harness.charon import Charon, missing_requirements  # noqa: E402
from tests.interop.harness.netns import Namespace, Topology, netns_supported  # noqa: E402
from tests.interop.harness.shim import build_shim  # noqa: E402
from tests.interop.harness.sidecar import Sidecar  # noqa: E402
from tests.interop.harness.swanctl import Child, Connection  # noqa: E402
from tests.support.pki import MeshPki  # noqa: E402

IKE = "aes256gcm16-prfsha256-x25519"
ESP = "aes256gcm16-esn"
PSK = "bench-psk-0123456789abcdef0123456789"
LOADGEN_ADDR, RESPONDER_ADDR = "10.0.0.1", "10.0.0.2"
LOADGEN_ID, RESPONDER_ID = "loadgen.bench.pod.mesh.test", "responder.bench.pod.mesh.test"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LINK_TRIES = 90  # pings of at most 1 s each
# charon as deployed: log level 1 for every subsystem (its default), like our sidecar at info.
CHARON_LOG = {"default": 1, "ike": 1, "cfg": 1, "net": 1, "enc": 1, "knl": 1}
OUR_IKE_SETTINGS = {"dpd": 0, "retransmitTimeout": 2, "cookieThreshold": 1_000_000,
                    "cookieThresholdPerSource": 1_000_000, "halfOpenLimit": 1_000_000,
                    "halfOpenLimitPerSource": 1_000_000}


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


@dataclass
class Credentials:
    psk: str | None = None
    pki: MeshPki | None = None

    @classmethod
    def make(cls, auth: str) -> "Credentials":
        return cls(psk=PSK) if auth == "psk" else cls(pki=MeshPki())

    def issue(self, label: str, identity: str):
        return self.pki.issue(label, key_type="p256", dns=[identity])


@dataclass
class Result:
    implementation: str
    auth: str
    sas: int
    established: int
    cpu_seconds: float
    system_seconds: float  # the kernel's part of cpu_seconds (sockets, logging writes)
    wall_seconds: float
    loadgen: dict

    @property
    def ms_per_sa(self) -> float:
        return 1000 * self.cpu_seconds / self.established if self.established else float("nan")


class CharonResponder:
    """charon as the responder (10.0.0.2), or with `initiator=True` as the initiator (10.0.0.1)
    that bench_ike_initiator.py drives over vici."""

    name = "charon"

    def __init__(self, ns: Namespace, workdir: Path, creds: Credentials, shim: Path, initiator: bool = False):
        settings = {"dos_protection": False, "retransmit_timeout": 2.0}
        local, remote, local_id, remote_id = RESPONDER_ADDR, LOADGEN_ADDR, RESPONDER_ID, LOADGEN_ID
        if initiator:
            local, remote, local_id, remote_id = LOADGEN_ADDR, RESPONDER_ADDR, LOADGEN_ID, RESPONDER_ID
            # Every `initiate` makes a new IKE SA, as the load generator does (charon would
            # otherwise add each CHILD_SA to the first IKE SA with CREATE_CHILD_SA).
            settings["reuse_ikesa"] = False
        self.charon = Charon(ns, workdir, "charon", fake_esp=True, shim_path=shim, log_levels=CHARON_LOG,
                             settings=settings)
        child = Child(mode="transport", esp_proposals=ESP, local_ts=f"{local}/32",
                      remote_ts=f"{remote}/32", options={"policies": False})
        conn = Connection(local_addrs=local, remote_addrs=remote, local_id=local_id,
                          remote_id=remote_id, proposals=IKE, children={"bench": child},
                          options={"unique": "never"})
        if creds.psk is not None:
            self.charon.add_psk(creds.psk, RESPONDER_ID, LOADGEN_ID)
        else:
            issued = creds.issue("charon-initiator" if initiator else "charon", local_id)
            conn.auth = "pubkey"
            conn.local_certs = self.charon.add_identity("local", issued.cert_pem(), issued.key_pem(),
                                                        (creds.pki.root.cert_pem(),))
        self.charon.add_connection("bench", conn)

    def start(self) -> int:
        self.charon.start()
        return self.charon.process.pid

    def established(self) -> int:
        return sum(1 for sa in self.charon.list_sas() if sa.state == "ESTABLISHED"
                   and (c := sa.child("bench")) is not None and c.state == "INSTALLED")

    def stop(self) -> None:
        self.charon.stop()


class SidecarResponder:
    name = "ours"

    def __init__(self, ns: Namespace, workdir: Path, creds: Credentials, profile: Path | None = None,
                 env: dict[str, str] | None = None):
        env = {**(env or {}), **({"IPSEC_MESH_PROFILE": str(profile)} if profile else {})}
        common = dict(address=RESPONDER_ADDR, identity=RESPONDER_ID, peer_address=f"{LOADGEN_ADDR}/32",
                      peer_identity=LOADGEN_ID, ike=IKE, esp=ESP, ike_settings=OUR_IKE_SETTINGS,
                      log_level="info", env=env)
        if creds.psk is not None:
            self.sidecar = Sidecar(ns, workdir, psk=creds.psk, **common)
        else:
            issued = creds.issue("ours", RESPONDER_ID)
            self.sidecar = Sidecar(ns, workdir, cert_pem=issued.cert_pem(), key_pem=issued.key_pem(),
                                   ca_pem=creds.pki.root.cert_pem(), **common)

    def start(self) -> int:
        self.sidecar.start()
        return self.sidecar.process.pid

    def established(self) -> int:
        status = self.sidecar.status() or {"ike_sas": []}
        return sum(1 for sa in status["ike_sas"] if sa["state"] == "established"
                   and any(c["state"] == "installed" for c in sa["children"]))

    def stop(self) -> None:
        self.sidecar.stop()


def run_loadgen(ns: Namespace, workdir: Path, creds: Credentials, sas: int, window: int, deadline: float) -> dict:
    spec = {"local": LOADGEN_ADDR, "remote": RESPONDER_ADDR, "local_id": LOADGEN_ID, "remote_id": RESPONDER_ID,
            "sas": sas, "window": window, "deadline": deadline, "ike": IKE, "esp": ESP, "psk": creds.psk}
    if creds.pki is not None:
        issued = creds.issue("loadgen", LOADGEN_ID)
        for name, pem in (("cert", issued.cert_pem()), ("key", issued.key_pem()), ("ca", creds.pki.root.cert_pem())):
            (workdir / f"loadgen-{name}.pem").write_bytes(pem)
            spec[name] = str(workdir / f"loadgen-{name}.pem")
    spec_path = workdir / "loadgen.json"
    spec_path.write_text(json.dumps(spec))
    proc = ns.run(ns.python_argv(str(REPO / "bench" / "ike_loadgen.py"), "--spec", str(spec_path)),
                  timeout=deadline + 30)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def link_up(pair) -> None:
    """Wait (bounded) until the new link carries traffic: on a loaded machine (other runs
    creating and deleting namespaces) a fresh veth pair took up to 20 s, and the load
    generator's IKE_SA_INITs timed out meanwhile."""
    for _ in range(LINK_TRIES):
        if pair.left.run(["ping", "-c1", "-W1", RESPONDER_ADDR], check=False).returncode == 0:
            return
    raise RuntimeError(f"no ping reply from {RESPONDER_ADDR} in {LINK_TRIES} tries")


def measure(topology: Topology, implementation: str, auth: str, sas: int, window: int, workdir: Path,
            shim: Path, profile: Path | None = None, env: dict[str, str] | None = None) -> Result:
    pair = topology.pair(ipv6=False)
    link_up(pair)
    creds = Credentials.make(auth)
    workdir.mkdir(parents=True, exist_ok=True)
    if implementation == "charon":
        responder = CharonResponder(pair.right, workdir, creds, shim)
    else:
        responder = SidecarResponder(pair.right, workdir, creds, profile, env)
    try:
        pid = responder.start()
        time.sleep(0.5)  # let startup work finish before the first reading
        before, began = cpu_times(pid), time.monotonic()
        loadgen = run_loadgen(pair.left, workdir, creds, sas, window, deadline=max(30.0, sas * 0.05))
        after, wall = cpu_times(pid), time.monotonic() - began
        user, system = after[0] - before[0], after[1] - before[1]
        established = responder.established()
    finally:
        responder.stop()
        topology.close()
    return Result(implementation, auth, sas, established, user + system, system, wall, loadgen)


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "kernel": platform.release()}


def versions() -> dict:
    import cryptography

    charon = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "strongswan-charon"],
                            capture_output=True, text=True).stdout.strip()
    return {"strongswan": charon or "unknown", "python": platform.python_version(),
            "cryptography": cryptography.__version__}


def profile_summary(path: Path, limit: int = 20) -> str:
    """The functions with the most own time in the profiled sidecar, as text."""
    import io

    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats("ipsec_mesh", limit)
    return out.getvalue()


def median_ms(results: list[Result], auth: str, implementation: str) -> float | None:
    values = [r.ms_per_sa for r in results if r.auth == auth and r.implementation == implementation]
    return statistics.median(values) if values else None


def report(results: list[Result], info: dict) -> str:
    lines = [f"machine: {info['machine']['cpu']}, {info['machine']['cores']} cores, kernel {info['machine']['kernel']}",
             f"versions: strongSwan {info['versions']['strongswan']}, Python {info['versions']['python']}, "
             f"cryptography {info['versions']['cryptography']}",
             f"proposals: IKE {IKE}, ESP {ESP}; one CHILD_SA per IKE SA; window {info['window']}",
             f"{'auth':6} {'responder':9} {'SAs':>6} {'estab.':>6} {'CPU s':>7} {'(sys)':>7} {'wall s':>7} {'ms/SA':>7}"]
    for r in results:
        lines.append(f"{r.auth:6} {r.implementation:9} {r.sas:6d} {r.established:6d} {r.cpu_seconds:7.2f} "
                     f"{r.system_seconds:7.2f} {r.wall_seconds:7.2f} {r.ms_per_sa:7.3f}")
    for auth in dict.fromkeys(r.auth for r in results):
        medians = {impl: median_ms(results, auth, impl) for impl in ("ours", "charon")}
        if None not in medians.values():
            rounds = sum(1 for r in results if r.auth == auth and r.implementation == "ours")
            theirs = medians["charon"]
            ratio = f"{medians['ours'] / theirs:.2f}" if theirs > 0 else \
                f"n/a (charon's CPU time is below the {1000 / CLOCK_TICKS:.0f} ms clock tick; use more SAs)"
            lines.append(f"ratio ours/charon ({auth}, median ms/SA of {rounds} round(s): ours {medians['ours']:.3f}, "
                         f"charon {theirs:.3f}): {ratio}")
    return "\n".join(lines)


def load_arguments(parser: argparse.ArgumentParser, rounds: int) -> None:
    """The options this benchmark shares with bench_ike_initiator.py."""
    parser.add_argument("--sas", type=int, default=1000, help="IKE SAs per measurement")
    parser.add_argument("--window", type=int, default=50, help="IKE SAs in flight at once")
    parser.add_argument("--auth", choices=["psk", "ecdsa", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=rounds,
                        help="measure each side this many times, alternating; the ratios use medians")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")


def cannot_run() -> bool:
    reason = netns_supported() or missing_requirements()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
    return bool(reason)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    load_arguments(parser, rounds=1)
    parser.add_argument("--only", choices=["ours", "charon"], help="measure one responder only")
    parser.add_argument("--profile", type=Path, help="also run ours under cProfile, dump the stats here")
    parser.add_argument("--sidecar-env", default="", metavar="NAME=VALUE,...",
                        help="environment of our responder (interpreter or allocator settings)")
    args = parser.parse_args(argv)
    sidecar_env = dict(item.split("=", 1) for item in args.sidecar_env.split(",") if item)
    if cannot_run():
        return 2
    auths = ["psk", "ecdsa"] if args.auth == "both" else [args.auth]
    implementations = [args.only] if args.only else ["charon", "ours"]
    info = {"machine": machine(), "versions": versions(), "window": args.window,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-ike-") as tmp:
        workdir = Path(tmp)
        shim = build_shim(workdir / "shim")
        for round_ in range(args.rounds):
            for auth in auths:
                for implementation in implementations:
                    with Topology() as topology:
                        results.append(measure(topology, implementation, auth, args.sas, args.window,
                                               workdir / f"{round_}-{auth}-{implementation}", shim,
                                               env=sidecar_env))
                    print(report(results[-1:], info).splitlines()[-1], file=sys.stderr, flush=True)
        if args.profile:
            with Topology() as topology:
                measure(topology, "ours", auths[0], args.sas, args.window, workdir / "profile", shim,
                        profile=args.profile.resolve())
    text = report(results, info)
    print(text)
    if args.profile:
        print(f"\nprofile of our responder ({auths[0]}, {args.sas} SAs, under cProfile):")
        print(profile_summary(args.profile))
    if args.json:
        medians = {auth: {impl: median_ms(results, auth, impl) for impl in implementations} for auth in auths}
        args.json.write_text(json.dumps({**info, "medians": medians,
                                         "results": [asdict(r) | {"ms_per_sa": r.ms_per_sa} for r in results]},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
