"""Initiator CPU time per IKE SA, and IKE SAs per second end to end: ours against charon.

The same two namespaces, proposals, credentials and load as bench_ike_responder.py
(1000 IKE SAs with one CHILD_SA each, 50 in flight), in three pairings measured one
after the other in each round:

- `ours->charon`: our IKE engine as initiator (`bench/ike_loadgen.py`: one process, one
  UDP socket, one `IkeEndpoint` per IKE SA) against a charon responder;
- `charon->charon`: charon as initiator (`reuse_ikesa = no`, driven over vici: `initiate`
  with timeout -1, one more each time a `child-updown` event reports a CHILD_SA up)
  against a charon responder;
- `ours->ours`: the load generator against our sidecar (`dataplane: none`).

The first two give the initiator ratio (same responder, initiator CPU compared); the
second and third give end to end figures: IKE SAs per second of wall time, and CPU of
both processes per IKE SA. Each process's CPU (utime+stime; the load generator reads its
own `process_time`) is counted from the first initiation to the last CHILD_SA, startup
excluded. Both initiators are told to send no INITIAL_CONTACT (charon: `unique = never`).

    sudo python bench/bench_ike_initiator.py [--sas N] [--auth psk|ecdsa|both] [--rounds R] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ike_responder import (  # noqa: E402  (bench/, the script's own directory)
    CharonResponder,
    Credentials,
    SidecarResponder,
    build_shim,
    cannot_run,
    cpu_times,
    link_up,
    load_arguments,
    machine,
    run_loadgen,
    versions,
)

from tests.interop.harness.charon import Charon  # noqa: E402
from tests.interop.harness.netns import Topology  # noqa: E402

PAIRINGS = (("ours", "charon"), ("charon", "charon"), ("ours", "ours"))


@dataclass
class PairResult:
    initiator: str
    responder: str
    auth: str
    sas: int
    initiated: int  # CHILD_SAs the initiator reported up
    established: int  # IKE SAs with their CHILD_SA, counted by the responder
    initiator_cpu: float
    responder_cpu: float
    wall_seconds: float  # first initiation to last CHILD_SA up, at the initiator

    @property
    def pairing(self) -> str:
        return f"{self.initiator}->{self.responder}"

    def per_sa(self, seconds: float) -> float:
        return 1000 * seconds / self.established if self.established else float("nan")

    @property
    def sas_per_second(self) -> float:
        return self.established / self.wall_seconds if self.wall_seconds else float("nan")


def drive_charon(charon: Charon, sas: int, window: int, deadline: float) -> dict:
    """Make `charon` initiate `sas` IKE SAs, `window` at a time; returns counts and wall time."""
    started = up = 0
    with charon.vici(timeout=30) as events, charon.vici(timeout=30) as control:
        events.subscribe("child-updown")
        began = time.monotonic()

        def initiate() -> None:
            nonlocal started
            control.request("initiate", {"child": "bench", "timeout": -1, "init-limits": False})
            started += 1

        while started < min(window, sas):
            initiate()
        for _, message in events.events(deadline):
            if message.get("up") != "yes":
                continue
            up += 1
            if started < sas:
                initiate()
            if up >= sas:
                break
        seconds = time.monotonic() - began
    return {"started": started, "established": up, "seconds": round(seconds, 3)}


def measure(initiator: str, responder: str, auth: str, sas: int, window: int, workdir: Path,
            shim: Path) -> PairResult:
    deadline = max(30.0, sas * 0.05)
    with Topology() as topology:
        pair = topology.pair(ipv6=False)
        link_up(pair)
        creds = Credentials.make(auth)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "responder").mkdir()
        (workdir / "initiator").mkdir()
        answering = (CharonResponder(pair.right, workdir / "responder", creds, shim) if responder == "charon"
                     else SidecarResponder(pair.right, workdir / "responder", creds))
        asking = (CharonResponder(pair.left, workdir / "initiator", creds, shim, initiator=True)
                  if initiator == "charon" else None)
        try:
            responder_pid = answering.start()
            initiator_pid = asking.start() if asking else None
            time.sleep(0.5)  # let startup work finish before the first reading
            responder_before = cpu_times(responder_pid)
            if asking is not None:
                initiator_before = cpu_times(initiator_pid)
                run = drive_charon(asking.charon, sas, window, deadline)
                initiator_cpu = sum(cpu_times(initiator_pid)) - sum(initiator_before)
            else:
                run = run_loadgen(pair.left, workdir / "initiator", creds, sas, window, deadline)
                initiator_cpu = run["cpu_seconds"]
            responder_cpu = sum(cpu_times(responder_pid)) - sum(responder_before)
            established = answering.established()
        finally:
            answering.stop()
            if asking is not None:
                asking.stop()
    return PairResult(initiator, responder, auth, sas, run["established"], established, initiator_cpu,
                      responder_cpu, run["seconds"])


def median(results: list[PairResult], auth: str, pairing: str, value) -> float:
    return statistics.median(value(r) for r in results if r.auth == auth and r.pairing == pairing)


def report(results: list[PairResult], info: dict) -> str:
    lines = [f"machine: {info['machine']['cpu']}, {info['machine']['cores']} cores, kernel {info['machine']['kernel']}",
             f"versions: strongSwan {info['versions']['strongswan']}, Python {info['versions']['python']}, "
             f"cryptography {info['versions']['cryptography']}; load average before/after: "
             f"{info['load_before']} / {info.get('load_after', '-')}",
             f"{'auth':6} {'pairing':15} {'SAs':>5} {'up':>5} {'estab.':>6} {'init ms/SA':>10} {'resp ms/SA':>10} "
             f"{'wall s':>7} {'SAs/s':>7}"]
    for r in results:
        lines.append(f"{r.auth:6} {r.pairing:15} {r.sas:5d} {r.initiated:5d} {r.established:6d} "
                     f"{r.per_sa(r.initiator_cpu):10.3f} {r.per_sa(r.responder_cpu):10.3f} "
                     f"{r.wall_seconds:7.2f} {r.sas_per_second:7.0f}")
    for auth in dict.fromkeys(r.auth for r in results):
        pairings = {r.pairing for r in results if r.auth == auth}
        if {"ours->charon", "charon->charon"} <= pairings:
            ours = median(results, auth, "ours->charon", lambda r: r.per_sa(r.initiator_cpu))
            theirs = median(results, auth, "charon->charon", lambda r: r.per_sa(r.initiator_cpu))
            lines.append(f"initiator ({auth}, against charon, medians): ours {ours:.3f} ms/SA, charon {theirs:.3f}: "
                         f"ratio {ratio(ours, theirs)}")
        if {"ours->ours", "charon->charon"} <= pairings:
            both = {p: median(results, auth, p, lambda r: r.per_sa(r.initiator_cpu + r.responder_cpu))
                    for p in ("ours->ours", "charon->charon")}
            rate = {p: median(results, auth, p, lambda r: r.sas_per_second) for p in both}
            lines.append(f"end to end ({auth}, medians): both sides' CPU ours {both['ours->ours']:.3f} ms/SA, "
                         f"charon {both['charon->charon']:.3f} (ratio {ratio(both['ours->ours'], both['charon->charon'])}); "
                         f"{per_cpu_second(both['ours->ours'])} vs {per_cpu_second(both['charon->charon'])} "
                         "IKE SAs per CPU second; "
                         f"wall: {rate['ours->ours']:.0f} vs {rate['charon->charon']:.0f} IKE SAs/s")
    return "\n".join(lines)


def ratio(ours: float, theirs: float) -> str:
    # A few SAs can cost less than one 10 ms clock tick: no ratio then, rather than a made-up one.
    return f"{ours / theirs:.2f}" if ours > 0 and theirs > 0 else "n/a (CPU time below the clock tick; use more SAs)"


def per_cpu_second(ms_per_sa: float) -> str:
    return f"{1000 / ms_per_sa:.0f}" if ms_per_sa > 0 else "n/a"


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    load_arguments(parser, rounds=3)
    args = parser.parse_args(argv)
    if cannot_run():
        return 2
    auths = ["psk", "ecdsa"] if args.auth == "both" else [args.auth]
    info = {"machine": machine(), "versions": versions(), "window": args.window, "load_before": load_average(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    results: list[PairResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-ike-init-") as tmp:
        shim = build_shim(Path(tmp) / "shim")
        for round_ in range(args.rounds):
            for auth in auths:
                for initiator, responder in PAIRINGS:
                    results.append(measure(initiator, responder, auth, args.sas, args.window,
                                           Path(tmp) / f"{round_}-{auth}-{initiator}-{responder}", shim))
                    print(report(results[-1:], info).splitlines()[-1], file=sys.stderr, flush=True)
    info["load_after"] = load_average()
    print(report(results, info))
    if args.json:
        args.json.write_text(json.dumps({**info, "results": [asdict(r) for r in results]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
