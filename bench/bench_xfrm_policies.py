"""Benchmark: install, update and delete the XFRM policies of 1,000 and 10,000 peers.

Per peer the sidecar installs two policies (out and in, ESP required, one
reqid per peer). Each round, in fresh network namespaces on this kernel: ours
batched (many netlink requests per datagram: add, UPDPOLICY, delete), then
`ip -batch` with the same policies (the whole command, process start included),
so the ratio is measured side by side. Then dump, flush_owned and one request
per send, once.

    sudo .venv/bin/python bench/bench_xfrm_policies.py [--peers 1000,10000] [--rounds 3] [--no-single]
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


def ip_batch_lines(verb: str, policies: list[PolicySpec]) -> str:
    """The same policies as `ip -batch` input (iproute2 cannot set our selector tag)."""
    lines = []
    for policy in policies:
        selector = policy.selector
        line = f"xfrm policy {verb} src {selector.src} dst {selector.dst} dir {policy.direction.name.lower()}"
        if verb != "delete":
            reqid = policy.templates[0].reqid
            line += f" priority {policy.priority} tmpl proto esp mode transport reqid {reqid} level required"
        lines.append(line)
    return "\n".join(lines) + "\n"


def timed(action: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def one_by_one(xfrm: Xfrm, policies: list[PolicySpec]) -> list:
    return [xfrm.add_policy(policy) for policy in policies]


def machine_info() -> str:
    return f"{describe()}; pyroute2 {pyroute2.__version__}; {ip_version()}"


def ip_version() -> str:
    return subprocess.run(["ip", "-V"], capture_output=True, text=True).stdout.strip()


class Namespace:
    """A fresh network namespace, removed on exit."""

    def __init__(self, tag: str):
        self.name = f"xfbench{tag}{os.getpid()}"

    def __enter__(self) -> str:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        return self.name

    def __exit__(self, *_exc) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def run_ip_batch(namespace: str, text: str, directory: str, name: str) -> float:
    path = Path(directory) / name
    path.write_text(text)
    start = time.perf_counter()
    subprocess.run(["ip", "-n", namespace, "-batch", str(path)], check=True)
    return time.perf_counter() - start


def ip_round(texts: dict[str, str], directory: str) -> dict[str, float]:
    with Namespace("ip") as namespace:
        return {step: run_ip_batch(namespace, text, directory, step) for step, text in texts.items()}


def our_round(install: list[PolicySpec], update: list[PolicySpec]) -> dict[str, float]:
    with Namespace("us") as namespace, Xfrm(namespace) as xfrm:
        seconds = {}
        seconds["install"], results = timed(lambda: xfrm.add_policies(install))
        assert not any(results), [r for r in results if r][:3]
        seconds["update"], results = timed(lambda: xfrm.update_policies(update))
        assert not any(results), [r for r in results if r][:3]
        keys = [(p.selector, p.direction, p.mark) for p in install]
        seconds["delete"], results = timed(lambda: xfrm.delete_policies(keys))
        assert not any(results) and not xfrm.dump_policies()
        return seconds


def side_by_side(peers: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Per step (install, update, delete): median seconds of ours and of `ip -batch`."""
    install, update = peer_policies(peers, priority=1000), peer_policies(peers, priority=900)
    texts = {"install": ip_batch_lines("add", install), "update": ip_batch_lines("update", update),
             "delete": ip_batch_lines("delete", install)}
    ours: dict[str, list[float]] = {step: [] for step in texts}
    theirs: dict[str, list[float]] = {step: [] for step in texts}
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(rounds):
            for step, seconds in our_round(install, update).items():
                ours[step].append(seconds)
            for step, seconds in ip_round(texts, directory).items():
                theirs[step].append(seconds)
    return {step: (statistics.median(ours[step]), statistics.median(theirs[step])) for step in texts}


def bench(peers: int, rounds: int, single: bool) -> None:
    print(f"{peers} peers ({2 * peers} policies), median of {rounds} rounds, ours and ip -batch alternating:")
    for step, (mine, ip_s) in side_by_side(peers, rounds).items():
        print(f"  {step:<8} ours {mine:7.3f} s ({mine / peers * 1e6:6.1f} us/peer)"
              f"   ip -batch {ip_s:7.3f} s   ratio {mine / ip_s:5.2f}")
    install = peer_policies(peers, priority=1000)
    with Namespace("misc") as namespace, Xfrm(namespace) as xfrm:
        xfrm.add_policies(install)
        seconds, dumped = timed(xfrm.dump_policies)
        assert len(dumped) == 2 * peers
        print(f"  dump + decode                       {seconds:7.3f} s")
        seconds, flushed = timed(xfrm.flush_owned)
        assert flushed.policies == 2 * peers
        print(f"  flush_owned (dump + batched delete) {seconds:7.3f} s")
        if single:
            seconds, _ = timed(lambda: one_by_one(xfrm, install))
            print(f"  install, one request per send       {seconds:7.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-single", action="store_true", help="skip the unbatched run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: it creates a network namespace")
    print(machine_info())
    for count in (int(text) for text in args.peers.split(",")):
        bench(count, args.rounds, single=not args.no_single)


if __name__ == "__main__":
    main()
