"""Benchmark: the pod's Service translation update beside the XFRM policy update it goes with.

A peer map with N Services (one TCP and one UDP port, 3 peer endpoints each, so 3N peers);
then updates in which some Services replace one endpoint: all N (a rolling restart of
everything: N peers leave, N new ones arrive) or a few (the usual peer-map change).
Measured in a throw-away network namespace, alternating back and forth, in the same run:
- render: the whole desired table from scratch (no reuse of unchanged Services);
- translation: `ServiceTranslation.apply` (render reusing unchanged Services + the incremental
  libnftables batches, route MTUs from its cache), with and without ClientIP affinity (a dynamic
  map per service port);
- route MTU reads: what the MSS clamp would cost without the cache (every ClusterIP and endpoint
  of the new map read again, as before the cache);
- first batch after a restart: a new `ServiceTranslation` over the table left in the kernel
  (every rule replaced, the lookup elements diffed against the kernel's);
- policies: `XfrmDataPlane.update_peers` for the same two peer sets, translation left out.

    sudo .venv/bin/python bench/bench_service_translation.py [--services 500] [--few 5] [--rounds 5]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sidecar"))

from machine import describe  # noqa: E402  (bench/, the script's own directory)

from ipsec_mesh.agent.config import IkeSettings  # noqa: E402
from ipsec_mesh.agent.peers import PeerSet  # noqa: E402
from ipsec_mesh.agent.xfrm_dataplane import XfrmDataPlane  # noqa: E402
from ipsec_mesh.meshapi import PeerMap  # noqa: E402
from ipsec_mesh.svcnat import ServiceTranslation, render  # noqa: E402
from ipsec_mesh.svcnat.mtu import route_mtu, route_mtus  # noqa: E402

LOCAL = "10.0.0.1"
ENDPOINT_BASE = int(ipaddress.ip_address("10.64.0.0"))
CLUSTER_BASE = int(ipaddress.ip_address("10.96.0.0"))


def peer_map(services: int, changed: int, affinity: str) -> PeerMap:
    """Service s has endpoints 3s+1..3s+3; the first `changed` have their first replaced by a new address."""
    def endpoint(s: int, k: int) -> str:
        number = 3 * s + k + 1 if not (s < changed and k == 0) else 3 * services + s + 1
        return str(ipaddress.ip_address(ENDPOINT_BASE + number))

    entries, peers = [], []
    for s in range(services):
        addresses = sorted((endpoint(s, k) for k in range(3)), key=ipaddress.ip_address)
        peers += [{"name": f"p{a}", "addresses": [a], "identities": ["x.mesh.test"]} for a in addresses]
        eps = [{"address": a, "port": 8080, "peer": True} for a in addresses]
        entries.append({"namespace": "bench", "name": f"svc-{s}",
                        "clusterIPs": [str(ipaddress.ip_address(CLUSTER_BASE + s + 1))],
                        "sessionAffinity": affinity,
                        "ports": [{"name": p.lower(), "protocol": p, "port": 80, "endpoints": eps}
                                  for p in ("TCP", "UDP")]})
    return PeerMap.from_dict({
        "local": {"identity": "bench.mesh.test", "addresses": [LOCAL]},
        "peerings": [{"name": "p", "authentication": "psk", "psk": [{"id": "k", "value": "cA" * 22}],
                      "peers": peers}],
        "services": entries,
    })


class NoTranslation:
    """Leaves the translation out of the policy timing."""

    def apply(self, services) -> bool:
        return True

    def problem(self):
        return None

    def close(self) -> None:
        pass

    def status(self) -> dict:
        return {}


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def bench(services: int, few: int, rounds: int) -> None:
    namespace = f"svcbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        # A pod's link and default routes, as a pod has: route MTUs are read from them and each
        # translated ClusterIP gets its ESP-sized host route (without them every read failed
        # and no route was programmed, which measured neither).
        for command in (["link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
                        ["link", "set", "eth0", "up"], ["link", "set", "eth1", "up"],
                        ["link", "set", "lo", "up"], ["addr", "add", f"{LOCAL}/8", "dev", "eth0"],
                        ["addr", "add", "fd00::1/64", "dev", "eth0", "nodad"],
                        ["route", "add", "default", "dev", "eth0"], ["-6", "route", "add", "default", "dev", "eth0"]):
            subprocess.run(["ip", "-n", namespace, *command], check=True)
        results: dict[str, list[float]] = {}

        def record(label: str, seconds: float) -> None:
            results.setdefault(label, []).append(seconds)

        for affinity in ("None", "ClientIP"):
            for changed in (services, few):
                maps = [peer_map(services, c, affinity) for c in (0, changed)]
                sets = [PeerSet(m, IkeSettings()) for m in maps]
                what = f"{affinity}, {changed} of {services} change"
                translation = ServiceTranslation(namespace)
                plane = XfrmDataPlane(namespace, services=NoTranslation())
                plane.start(sets[0])
                assert translation.apply(maps[0].services), translation.last_error
                try:
                    for _ in range(rounds):
                        for old, new in ((0, 1), (1, 0)):
                            record(f"render from scratch ({what})", timed(lambda: render(maps[new].services)))
                            record(f"translation update ({what})", timed(lambda: translation.apply(maps[new].services)))
                            addresses = {a for svc in maps[new].services for a in svc.cluster_ips}
                            addresses |= {e.address for svc in maps[new].services for p in svc.ports for e in p.endpoints}
                            record(f"route MTU reads, uncached, a socket each ({len(addresses)} addresses)",
                                   timed(lambda: translation._nft._call(lambda: [route_mtu(a) for a in addresses])))
                            record(f"route MTU reads, uncached, a socket per family ({len(addresses)} addresses)",
                                   timed(lambda: translation._nft._call(lambda: route_mtus(addresses))))
                            assert not translation.last_error, translation.last_error
                            record(f"XFRM policy update ({what})", timed(lambda: plane.update_peers(sets[old], sets[new])))
                    assert plane.errors == 0
                finally:
                    plane.stop()
                    translation.close()
            for round_number in range(rounds):
                restarted = ServiceTranslation(namespace)
                record(f"first batch after a restart ({affinity})",
                       timed(lambda: restarted.apply(maps[round_number % 2].services)))
                assert not restarted.last_error, restarted.last_error
                restarted.close()
        status = subprocess.run(["ip", "netns", "exec", namespace, "nft", "list", "table", "inet", "ipsec_mesh_svc"],
                                capture_output=True, text=True).stdout
        chains = status.count("\tchain ")
        print(f"{services} services x 2 ports x 3 endpoints; {chains} chains in the final table; medians:")
        for label, values in results.items():
            print(f"  {label:<58} {statistics.median(values) * 1000:8.1f} ms   (min {min(values) * 1000:.1f}, "
                  f"n {len(values)})")
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=500)
    parser.add_argument("--few", type=int, default=5, help="Services changed in the usual update")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: it creates a network namespace")
    print(describe())
    bench(args.services, args.few, args.rounds)


if __name__ == "__main__":
    main()
