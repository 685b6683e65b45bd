"""Two checkouts' IKE responders side by side in ONE process: CPU per IKE SA, A against B.

On a shared machine, two benchmark runs a minute apart differ by more than the change
being measured. This runs both engines in one process, round after round (order
swapped every round), against one load generator, and times only the calls into each
responder (`time.process_time`), so load changes hit both alike.

- B is this checkout (`import ipsec_mesh`); A is the checkout given, imported as the
  package `ipsec_mesh_a` (the IKE core imports itself relatively only).
- The load generator runs a third, separate import of A (`ipsec_mesh_loadgen`): sharing
  modules with either responder warmed that one's caches and memos (an A/A run of this
  checkout against a copy of itself measured 0.86 that way; 0.99-1.03 with the third
  import).
- Proposals and credentials as in bench_ike_responder.py (profile_ike_responder.specs).

- The cyclic garbage collector is off during a round and run between rounds (untimed):
  a collection the load generator's garbage (its endpoints are cycles) triggered inside a
  timed call was charged to whichever engine was running, the same for both, so it pulled
  the ratio towards 1. The figures are then the engines' own CPU, without collection.
- `--side initiator` times the initiators instead (an endpoint per IKE SA, as the load
  generator runs them: creating it, `initiate`, and the calls for the responder's answers),
  with engine A's third import as the responder.

    python bench/ab_ike_engines.py A_CHECKOUT [--rounds 20] [--sas 200] [--auth psk|ecdsa]
        [--side responder|initiator]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from ike_loadgen import Spec  # noqa: E402
from profile_ike_responder import LOADGEN, RESPONDER, specs  # noqa: E402


def import_as(name: str, checkout: Path) -> str:
    """Import `checkout`'s ipsec_mesh package under another name; returns that name."""
    package = checkout / "sidecar" / "ipsec_mesh"
    spec = importlib.util.spec_from_file_location(name, package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    assert spec is not None and spec.loader is not None, f"no ipsec_mesh package in {checkout}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return name


def engine(package: str) -> dict[str, ModuleType]:
    return {name: importlib.import_module(f"{package}.ike.{name}")
            for name in ("auth", "certs", "config", "constants", "endpoint", "events", "identity", "payloads",
                         "proposals")}


def peer_config(e: dict[str, ModuleType], spec: Spec) -> Any:
    """ike_loadgen.peer_config, with the classes of engine `e`."""
    auth, cfg, pr, ts, ids = e["auth"], e["config"], e["proposals"], e["payloads"].TrafficSelector, e["identity"]
    protocol = e["constants"].ProtocolId
    if spec.psk is not None:
        credential, psks, trust = auth.PskCredential(spec.psk.encode()), (spec.psk.encode(),), None
    else:
        assert spec.cert and spec.key and spec.ca
        pem = Path(spec.cert).read_bytes()
        # Engines since session 6 parse certificates themselves (ike/certificate.py); older ones take x509's.
        own = getattr(e["certs"], "certificates_from_pem", None)
        chain = own(pem) if own is not None else x509.load_pem_x509_certificates(pem)
        key = serialization.load_pem_private_key(Path(spec.key).read_bytes(), password=None)
        credential, psks = auth.CertCredential(key, chain), ()
        trust = e["certs"].TrustStore.from_pem(Path(spec.ca).read_bytes())
    child = cfg.ChildConfig(name="bench", local_ts=(ts.for_address(spec.local),), remote_ts=(ts.for_address(spec.remote),),
                            esp_proposals=(pr.parse_proposal(spec.esp, protocol.ESP),))
    return cfg.PeerConfig(name="bench", local_id=ids.Identity.parse(f"fqdn:{spec.local_id}"), credential=credential,
                          remote_ids=(ids.Identity.parse(f"fqdn:{spec.remote_id}"),), psks=psks, trust=trust,
                          ike_proposals=(pr.parse_proposal(spec.ike, protocol.IKE),), children=(child,),
                          dpd_delay=0, retransmit=cfg.Retransmit(timeout=2.0, tries=2), initial_contact=False)


class Bench:
    def __init__(self, a: Path, auth: str, sas: int, window: int, side: str = "responder"):
        self.sas, self.window, self.side = sas, window, side
        self.engines = {"A": engine(import_as("ipsec_mesh_a", a)), "B": engine("ipsec_mesh")}
        self.loadgen = engine(import_as("ipsec_mesh_loadgen", a))
        with tempfile.TemporaryDirectory() as tmp:
            generator_spec, responder_spec = specs(auth, Path(tmp), sas, window)
            self.generator_configs = {name: peer_config(e, generator_spec)
                                      for name, e in (*self.engines.items(), ("loadgen", self.loadgen))}
            self.configs = {name: peer_config(e, responder_spec)
                            for name, e in (*self.engines.items(), ("loadgen", self.loadgen))}

    def round(self, name: str) -> float:
        """ms of CPU per IKE SA spent in a fresh responder of engine `name` (or in its initiators)."""
        timed_responder = self.side == "responder"
        # The engine measured plays the side measured; the load generator's import the other.
        responding, initiating = (name, "loadgen") if timed_responder else ("loadgen", name)
        e = self.engines[name] if timed_responder else self.loadgen
        unlimited = 10**9
        responder = e["endpoint"].IkeEndpoint(e["config"].single_peer_lookup(self.configs[responding], [LOADGEN[0]]),
                                              cookie_threshold=unlimited, cookie_threshold_per_source=unlimited,
                                              half_open_limit=unlimited, half_open_limit_per_source=unlimited)
        i_engine = self.loadgen if timed_responder else self.engines[name]
        new_endpoint, done = i_engine["endpoint"].IkeEndpoint, i_engine["events"].ChildSaInstallOutbound
        config = self.generator_configs[initiating]
        cpu, established, started, now = 0.0, 0, 0, 0.0
        in_flight: dict[bytes, Any] = {}
        while (started < self.sas or in_flight) and now < 10_000:
            while len(in_flight) < self.window and started < self.sas:
                began = time.process_time()
                initiator = new_endpoint(lambda local, remote: None)
                spi_i = initiator.initiate(config, LOADGEN, RESPONDER, now, config.children[0]).spi_i
                cpu += 0.0 if timed_responder else time.process_time() - began
                in_flight[spi_i] = initiator
                started += 1
            requests = [(spi, d) for spi, initiator in in_flight.items() for d in initiator.datagrams()]
            if not requests:
                break
            for spi, request in requests:
                began = time.process_time()
                responder.receive(request.data, RESPONDER, LOADGEN, now)
                responder.events()
                replies = responder.datagrams()
                cpu += time.process_time() - began if timed_responder else 0.0
                for reply in replies:
                    initiator = in_flight[reply.data[:8]]
                    began = time.process_time()
                    initiator.receive(reply.data, LOADGEN, RESPONDER, now)
                    events = initiator.events()
                    cpu += 0.0 if timed_responder else time.process_time() - began
                    if any(isinstance(event, done) for event in events):
                        established += 1
                        del in_flight[spi]
            now += 0.001
        if established != self.sas:
            raise RuntimeError(f"engine {name}: {established} of {self.sas} IKE SAs established")
        return 1000 * cpu / established


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", type=Path, help="the other checkout (A); B is this one")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--sas", type=int, default=200, help="IKE SAs per round and engine")
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--auth", choices=["psk", "ecdsa"], default="psk")
    parser.add_argument("--side", choices=["responder", "initiator"], default="responder",
                        help="whose calls are timed (the other side is A's third import)")
    args = parser.parse_args(argv)
    bench = Bench(args.a, args.auth, args.sas, args.window, args.side)
    bench.round("A"), bench.round("B")  # warm-up: memos and caches of both, not measured
    gc.collect()
    gc.freeze()  # what exists now lives through the run (the sidecar freezes after startup too)
    gc.disable()
    times: dict[str, list[float]] = {"A": [], "B": []}
    try:
        for i in range(args.rounds):
            for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
                times[name].append(bench.round(name))
                gc.collect()  # outside the timed calls
    finally:
        gc.unfreeze()
        gc.enable()
    a, b = statistics.median(times["A"]), statistics.median(times["B"])
    per_round = statistics.median(tb / ta for ta, tb in zip(times["A"], times["B"], strict=True))
    print(f"{args.auth} {args.side}, {args.rounds} rounds of {args.sas} IKE SAs: A {a:.3f} ms/SA (min {min(times['A']):.3f}), "
          f"B {b:.3f} (min {min(times['B']):.3f}); B/A {b / a:.3f} (medians), {per_round:.3f} (median of rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
