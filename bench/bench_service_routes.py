"""Benchmark: put (replace) and delete the ClusterIP routes of 500 and 2,000 Services.

Each ClusterIP gets a host route (proto 229) through a gateway with the ESP-sized MTU, as
svcnat.routes programs them; half the ClusterIPs are IPv4, half IPv6. Each round, in fresh
network namespaces (a veth pair, default routes through an IPv4 and an IPv6 gateway on its link), alternating:
- ours: `ServiceRoutes.put` then `.delete` (packed requests, many per datagram, one ack per datagram);
- pyroute2: the same requests encoded by pyroute2's `rtmsg` (the path before the packed encoder:
  tests/support/route_reference.py) through the same channel and batching;
- `ip -batch`: `route replace` / `route delete` lines for the same routes (the whole command,
  process start included).
Every run checks afterwards that the kernel holds exactly the routes (or none).
Then, with the routes in the table, the plan an update makes for the same ClusterIPs (dump the
main table, derive each ClusterIP's route): over the indexed table (RouteIndex, ours) and as a
scan of the whole table per ClusterIP (before).
Last, `ServiceTranslation.apply` for a map of N Services (bench_service_translation's map: TCP and
UDP, 3 endpoints each, IPv4 ClusterIPs) with its ClusterIP routes, and beside it the same without
routes (a routing table that routes nothing), each round in a fresh namespace: the first update
(table and routes), an update in which 5 Services change endpoints (routes kept: the plan only),
and the update that removes every Service (the routes deleted).

    sudo .venv/bin/python bench/bench_service_routes.py [--routes 500,2000] [--rounds 5] [--services 500]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "sidecar"), str(ROOT / "operator")]

import pyroute2  # noqa: E402
from bench_service_translation import peer_map  # noqa: E402  (bench/, the script's own directory)
from machine import describe  # noqa: E402
from pyroute2.netlink import NLM_F_CREATE, NLM_F_REPLACE  # noqa: E402

from ipsec_mesh.svcnat import ServiceTranslation  # noqa: E402
from ipsec_mesh.svcnat.routes import (  # noqa: E402
    RT_PROTO,
    RTM_DELROUTE,
    RTM_NEWROUTE,
    Route,
    RouteIndex,
    ServiceRoutes,
    derive,
)
from ipsec_mesh_operator.netns import add_netns, delete_netns, ip, unique_name  # noqa: E402
from tests.support.route_reference import pyroute2_body, pyroute2_route_message, reference_derive  # noqa: E402

DEVICE = "svcrt0"
GATEWAYS = {4: ipaddress.ip_address("10.98.0.2"), 6: ipaddress.ip_address("fd98::2")}
MTU = 1458
V4_BASE, V6_BASE = int(ipaddress.ip_address("10.96.0.0")), int(ipaddress.ip_address("fd00:96::"))
STEPS = ("put", "delete", "plan")


def cluster_routes(count: int, oif: int) -> list[Route]:
    """`count` routes, IPv4 and IPv6 alternating."""
    routes = []
    for number in range(count):
        version = 4 if number % 2 == 0 else 6
        base = V4_BASE if version == 4 else V6_BASE
        routes.append(Route(ipaddress.ip_address(base + number // 2 + 1), MTU, oif, GATEWAYS[version]))
    return routes


def ip_batch_lines(verb: str, routes: list[Route]) -> str:
    lines = []
    for route in routes:
        line = f"route {verb} {route.prefix} via {route.gateway} dev {DEVICE} proto {RT_PROTO} table main"
        lines.append(line + (f" mtu {route.mtu}" if verb == "replace" else ""))
    return "\n".join(lines) + "\n"


class Namespace:
    """A fresh network namespace with the device and both gateways on its link, removed on exit."""

    def __init__(self, tag: str):
        self.name = unique_name(f"rtbench{tag}")

    def __enter__(self) -> tuple[str, int]:
        add_netns(self.name)
        try:  # a veth pair inside the namespace: this kernel has no dummy module
            ip("link", "add", DEVICE, "type", "veth", "peer", "name", DEVICE + "p", netns=self.name)
            ip("addr", "add", "10.98.0.1/24", "dev", DEVICE, netns=self.name)
            ip("addr", "add", "fd98::1/64", "dev", DEVICE, "nodad", netns=self.name)
            for device in (DEVICE, DEVICE + "p"):
                ip("link", "set", device, "up", netns=self.name)
            for version, gateway in GATEWAYS.items():  # what the ClusterIPs' routes are derived from
                ip(f"-{version}", "route", "add", "default", "via", str(gateway), netns=self.name)
            return self.name, int(ip("-o", "link", "show", "dev", DEVICE, netns=self.name).split(":")[0])
        except Exception:
            delete_netns(self.name)
            raise

    def __exit__(self, *_exc) -> None:
        delete_netns(self.name)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def count_ours(namespace: str) -> int:
    return sum(len(ip(v, "route", "show", "proto", str(RT_PROTO), netns=namespace).splitlines()) for v in ("-4", "-6"))


def our_round(count: int) -> dict[str, float]:
    with Namespace("us") as (namespace, oif):
        routes, table = cluster_routes(count, oif), ServiceRoutes(namespace)
        try:
            seconds = {"put": timed(lambda: table.put(routes))}
            assert count_ours(namespace) == count
            seconds["plan"] = timed(lambda: plan(table, routes, lambda t: RouteIndex(t), derive))
            seconds["delete"] = timed(lambda: table.delete(routes))
            assert count_ours(namespace) == 0
            return seconds
        finally:
            table.close()


def plan(table: ServiceRoutes, routes: list[Route], prepare: Callable, derive_one: Callable) -> None:
    """What an update does before it puts: dump the main table, derive each ClusterIP's route."""
    dumped = table.table()
    prepared = prepare(dumped)
    for route in routes:
        assert isinstance(derive_one(route.destination, MTU, prepared), Route)  # derived, not refused


def pyroute2_round(count: int) -> dict[str, float]:
    """The same requests and batching, encoded by pyroute2, and the plan as a scan (what ServiceRoutes did before)."""
    with Namespace("p2") as (namespace, oif):
        routes, table = cluster_routes(count, oif), ServiceRoutes(namespace)
        try:
            channel = table._open()

            def send(msg_type: int, flags: int) -> None:
                requests = [(pyroute2_body(pyroute2_route_message(route), msg_type), msg_type, flags) for route in routes]
                errors = channel.batch(requests, "bench")
                assert not any(errors), [e for e in errors if e][:3]

            seconds = {"put": timed(lambda: send(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE))}
            assert count_ours(namespace) == count
            seconds["plan"] = timed(lambda: plan(table, routes, lambda t: t, reference_derive))
            seconds["delete"] = timed(lambda: send(RTM_DELROUTE, 0))
            assert count_ours(namespace) == 0
            return seconds
        finally:
            table.close()


def ip_round(count: int, directory: str) -> dict[str, float]:
    with Namespace("ip") as (namespace, oif):
        routes, seconds = cluster_routes(count, oif), {}
        for step, verb in (("put", "replace"), ("delete", "delete")):  # no plan: `ip` has none
            path = Path(directory) / step
            path.write_text(ip_batch_lines(verb, routes))
            seconds[step] = timed(lambda path=path: subprocess.run(["ip", "-n", namespace, "-batch", str(path)],
                                                                 check=True))
            assert count_ours(namespace) == (count if step == "put" else 0)
        return seconds


def side_by_side(count: int, rounds: int) -> dict[str, dict[str, float]]:
    """Per contender and step: the median seconds over `rounds` alternating rounds."""
    samples: dict[str, dict[str, list[float]]] = {who: {step: [] for step in STEPS}
                                                  for who in ("ours", "pyroute2", "ip -batch")}
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(rounds):
            for who, run in (("ours", lambda: our_round(count)), ("pyroute2", lambda: pyroute2_round(count)),
                             ("ip -batch", lambda: ip_round(count, directory))):
                for step, seconds in run().items():
                    samples[who][step].append(seconds)
    return {who: {step: statistics.median(values) for step, values in steps.items() if values}
            for who, steps in samples.items()}


class NoRoutes:
    """A routing table that routes nothing: the translation without its ClusterIP routes."""

    def __init__(self, netns: str | None = None):
        pass

    def table(self) -> list:
        return []

    def installed(self, table=None) -> dict:
        return {}

    def link_names(self) -> dict:
        return {}

    def put(self, routes) -> None:
        pass

    def delete(self, routes) -> None:
        pass

    def close(self) -> None:
        pass


TRANSLATION_STEPS = ("first update", "5 Services change", "all Services go")


def translation_round(services: int, routed: bool) -> dict[str, float]:
    maps = [peer_map(services, changed, "None").services for changed in (0, 5)]
    with Namespace("tr" if routed else "tn") as (namespace, _oif):
        translation = ServiceTranslation(namespace, routes_factory=ServiceRoutes if routed else NoRoutes)
        try:
            seconds = {}
            for step, services_now in zip(TRANSLATION_STEPS, (maps[0], maps[1], ()), strict=True):
                seconds[step] = timed(lambda services_now=services_now: translation.apply(services_now))
                assert not translation.last_error and not translation.route_error, translation.status()
                if step == "first update":
                    assert count_ours(namespace) == (services if routed else 0), translation.route_problems
            assert count_ours(namespace) == 0
            return seconds
        finally:
            translation.close()


def bench_translation(services: int, rounds: int) -> None:
    samples: dict[bool, dict[str, list[float]]] = {True: {}, False: {}}
    for _ in range(rounds):
        for routed in (True, False):
            for step, seconds in translation_round(services, routed).items():
                samples[routed].setdefault(step, []).append(seconds)
    print(f"translation update, {services} Services, with and without their ClusterIP routes, median of {rounds}:")
    for step in TRANSLATION_STEPS:
        with_routes, without = (statistics.median(samples[routed][step]) for routed in (True, False))
        print(f"  {step:<18} with routes {with_routes * 1e3:7.1f} ms   without {without * 1e3:7.1f} ms"
              f"   routes' share {(with_routes - without) * 1e3:6.1f} ms")


def bench(count: int, rounds: int) -> None:
    medians = side_by_side(count, rounds)
    print(f"{count} ClusterIP routes ({count - count // 2} IPv4, {count // 2} IPv6), median of {rounds} rounds:")
    for step in STEPS[:2]:
        ours, old, theirs = (medians[who][step] for who in ("ours", "pyroute2", "ip -batch"))
        print(f"  {step:<7} ours {ours * 1e3:7.1f} ms   pyroute2 {old * 1e3:7.1f} ms   ip -batch {theirs * 1e3:7.1f} ms"
              f"   ours/ip {ours / theirs:5.2f}   ours/pyroute2 {ours / old:5.2f}")
    ours, old = medians["ours"]["plan"], medians["pyroute2"]["plan"]
    print(f"  plan    ours {ours * 1e3:7.1f} ms   scan     {old * 1e3:7.1f} ms   (dump + derive, "
          f"{count} of ours in the table)   ours/scan {ours / old:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", default="500,2000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--services", type=int, default=500, help="Services of the translation update")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: it creates network namespaces")
    print(f"{describe()}; pyroute2 {pyroute2.__version__}; "
          f"{subprocess.run(['ip', '-V'], capture_output=True, text=True).stdout.strip()}")
    for count in (int(text) for text in args.routes.split(",")):
        bench(count, args.rounds)
    bench_translation(args.services, args.rounds)


if __name__ == "__main__":
    main()
