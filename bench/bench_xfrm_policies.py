"""Benchmark: install and update the XFRM policies of 1,000 and 10,000 peers.

Per peer the sidecar installs two policies (out and in, ESP required, one
reqid per peer). Measured in a throw-away network namespace on this kernel:
batched (many netlink requests per datagram) and one-request-per-send, then
update (UPDPOLICY), dump and flush_owned.

    sudo .venv/bin/python bench/bench_xfrm_policies.py [--peers 1000,10000] [--no-single]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sidecar"))

import pyroute2  # noqa: E402
from machine import describe  # noqa: E402  (bench/, the script's own directory)

from ipsec_mesh.xfrm import Direction, PolicySpec, Selector, Template, Xfrm, owned_reqid  # noqa: E402

LOCAL = ipaddress.ip_address("10.0.0.1")
PEER_BASE = int(ipaddress.ip_address("10.64.0.0"))


def peer_policies(count: int, priority: int) -> list[PolicySpec]:
    policies = []
    for number in range(count):
        peer = ipaddress.ip_address(PEER_BASE + number + 1)
        template = (Template(owned_reqid(number % 0xFFFF + 1)),)
        for selector, direction in (
            (Selector.host_pair(LOCAL, peer), Direction.OUT),
            (Selector.host_pair(peer, LOCAL), Direction.IN),
        ):
            policies.append(PolicySpec(selector, direction, priority=priority, templates=template))
    return policies


def timed(action: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def one_by_one(xfrm: Xfrm, policies: list[PolicySpec]) -> list:
    return [xfrm.add_policy(policy) for policy in policies]


def machine_info() -> str:
    return f"{describe()}; pyroute2 {pyroute2.__version__}"


def report(label: str, peers: int, seconds: float) -> None:
    print(f"  {label:<34} {seconds:8.3f} s   {seconds / peers * 1e6:8.1f} us/peer")


def bench(peers: int, single: bool) -> None:
    namespace = f"xfbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        with Xfrm(namespace) as xfrm:
            print(f"{peers} peers ({2 * peers} policies):")
            policies = peer_policies(peers, priority=1000)
            seconds, results = timed(lambda: xfrm.add_policies(policies))
            assert not any(results), [r for r in results if r][:3]
            report("install, batched", peers, seconds)
            seconds, results = timed(lambda: xfrm.update_policies(peer_policies(peers, priority=900)))
            assert not any(results)
            report("update (UPDPOLICY), batched", peers, seconds)
            seconds, dumped = timed(xfrm.dump_policies)
            assert len(dumped) == 2 * peers and all(p.priority == 900 for p in dumped)
            report("dump + decode", peers, seconds)
            seconds, flushed = timed(xfrm.flush_owned)
            assert flushed.policies == 2 * peers
            report("flush_owned (dump + batched delete)", peers, seconds)
            if single:
                seconds, _ = timed(lambda: one_by_one(xfrm, peer_policies(peers, priority=1000)))
                report("install, one request per send", peers, seconds)
                xfrm.flush_owned()
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="1000,10000")
    parser.add_argument("--no-single", action="store_true", help="skip the unbatched run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: it creates a network namespace")
    print(machine_info())
    for count in (int(text) for text in args.peers.split(",")):
        bench(count, single=not args.no_single)


if __name__ == "__main__":
    main()
