"""Where our responder's (or initiator's) CPU time goes, without namespaces or sockets: quick to iterate on.

Runs N IKE SAs (one CHILD_SA each, the same proposals and credentials as
bench_ike_responder.py) between load-generator endpoints and ONE responder
`IkeEndpoint` in this process, exchanging datagrams in memory. Only the calls into
the responder are profiled (cProfile on CPU time); prints the CPU time per IKE SA of
those calls and the hottest functions.

    python bench/profile_ike_responder.py [--sas 1000] [--auth psk|ecdsa] [--window 50] [--top 30]
        [--side responder|initiator] [--no-profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from ike_loadgen import Spec, peer_config  # noqa: E402

from ipsec_mesh.ike.config import single_peer_lookup  # noqa: E402
from ipsec_mesh.ike.endpoint import IkeEndpoint  # noqa: E402
from ipsec_mesh.ike.events import ChildSaInstallOutbound  # noqa: E402
from tests.support.pki import MeshPki  # noqa: E402

LOADGEN, RESPONDER = ("10.0.0.1", 500), ("10.0.0.2", 500)
IKE, ESP, PSK = "aes256gcm16-prfsha256-x25519", "aes256gcm16-esn", "bench-psk-0123456789abcdef0123456789"
IDS = ("loadgen.bench.pod.mesh.test", "responder.bench.pod.mesh.test")


def specs(auth: str, workdir: Path, sas: int, window: int) -> tuple[Spec, Spec]:
    """(load generator, responder) specs; their PeerConfigs mirror each other."""
    def spec(me: int, files: dict) -> Spec:
        local, remote = (LOADGEN, RESPONDER)[me], (RESPONDER, LOADGEN)[me]
        return Spec(local=local[0], remote=remote[0], local_id=IDS[me], remote_id=IDS[1 - me], sas=sas,
                    window=window, deadline=0, ike=IKE, esp=ESP, **files)
    if auth == "psk":
        return spec(0, {"psk": PSK}), spec(1, {"psk": PSK})
    pki = MeshPki()
    (workdir / "ca.pem").write_bytes(pki.root.cert_pem())
    files = []
    for me in (0, 1):
        issued = pki.issue(f"side{me}", key_type="p256", dns=[IDS[me]])
        (workdir / f"cert{me}.pem").write_bytes(issued.cert_pem())
        (workdir / f"key{me}.pem").write_bytes(issued.key_pem())
        files.append({"cert": str(workdir / f"cert{me}.pem"), "key": str(workdir / f"key{me}.pem"),
                      "ca": str(workdir / "ca.pem")})
    return spec(0, files[0]), spec(1, files[1])


def run(auth: str, sas: int, window: int, profiler: cProfile.Profile, side: str = "responder") -> tuple[float, int]:
    """CPU seconds spent inside the responder (or the initiators), and IKE SAs established."""
    with tempfile.TemporaryDirectory() as tmp:
        generator_spec, responder_spec = specs(auth, Path(tmp), sas, window)
        generator_config, responder_config = peer_config(generator_spec), peer_config(responder_spec)
    responder = IkeEndpoint(single_peer_lookup(responder_config, [LOADGEN[0]]), cookie_threshold=10**9,
                            cookie_threshold_per_source=10**9, half_open_limit=10**9,
                            half_open_limit_per_source=10**9)
    cpu, established, started, now = 0.0, 0, 0, 0.0
    in_flight: dict[bytes, IkeEndpoint] = {}
    ours = side == "responder"  # which side's calls are timed and profiled
    while (started < sas or in_flight) and now < 10_000:
        while len(in_flight) < window and started < sas:
            began = time.process_time()
            profiler.enable() if not ours else None
            endpoint = IkeEndpoint(lambda local, remote: None)
            sa = endpoint.initiate(generator_config, LOADGEN, RESPONDER, now, generator_config.children[0])
            profiler.disable() if not ours else None
            cpu += 0.0 if ours else time.process_time() - began
            in_flight[sa.spi_i] = endpoint
            started += 1
        requests = [(spi, d) for spi, e in in_flight.items() for d in e.datagrams()]
        if not requests:
            break
        for spi, request in requests:
            began = time.process_time()
            profiler.enable() if ours else None
            responder.receive(request.data, RESPONDER, LOADGEN, now)
            responder.events()
            replies = responder.datagrams()
            profiler.disable() if ours else None
            cpu += time.process_time() - began if ours else 0.0
            for reply in replies:
                endpoint = in_flight[reply.data[:8]]
                began = time.process_time()
                profiler.enable() if not ours else None
                endpoint.receive(reply.data, LOADGEN, RESPONDER, now)
                events = endpoint.events()
                profiler.disable() if not ours else None
                cpu += 0.0 if ours else time.process_time() - began
                if any(isinstance(e, ChildSaInstallOutbound) for e in events):
                    established += 1
                    del in_flight[spi]
        now += 0.001
    return cpu, established


class _NoProfiler:
    """Stands in for cProfile.Profile when only the CPU time is wanted."""

    def enable(self) -> None:
        pass

    def disable(self) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sas", type=int, default=1000)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--auth", choices=["psk", "ecdsa"], default="psk")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--no-profile", action="store_true", help="time only (cProfile triples the cost)")
    parser.add_argument("--side", choices=["responder", "initiator"], default="responder",
                        help="whose calls to time: the responder's or the initiators' (theirs include "
                             "creating an endpoint per IKE SA, as the load generator does)")
    args = parser.parse_args()
    profiler = _NoProfiler() if args.no_profile else cProfile.Profile(time.process_time)
    cpu, established = run(args.auth, args.sas, args.window, profiler, args.side)
    under = "" if args.no_profile else " (under cProfile)"
    print(f"{args.auth}: {established}/{args.sas} IKE SAs, {args.side} CPU {1000 * cpu / max(established, 1):.3f} ms "
          f"per IKE SA{under}")
    if not args.no_profile:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
    return 0 if established == args.sas else 1


if __name__ == "__main__":
    sys.exit(main())
