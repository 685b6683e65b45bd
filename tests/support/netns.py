"""Throw-away network namespaces for host-kernel tests (root only).

Two namespaces joined by a veth pair, with IPv4 and IPv6 addresses; sockets
are made inside a namespace with the product's `ipsec_mesh_operator.netns.socket_in`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from dataclasses import dataclass

from ipsec_mesh_operator.netns import socket_in

__all__ = ["A4", "A6", "B4", "B6", "NetnsPair", "ip", "make_pair", "missing_prerequisite", "socket_in"]

_counter = itertools.count()

A4, B4 = "10.99.0.1", "10.99.0.2"
A6, B6 = "fd99::1", "fd99::2"


def missing_prerequisite() -> str | None:
    """Why host-kernel tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and XFRM configuration)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    return None


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    command = ["ip"] + (["-n", netns] if netns else []) + list(args)
    done = subprocess.run(command, capture_output=True, text=True, timeout=20)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class NetnsPair:
    a: str
    b: str
    veth_a: str = ""  # interface names inside a and b
    veth_b: str = ""

    def close(self) -> None:
        for name in (self.a, self.b):
            ip("netns", "del", name, check=False)


def make_pair(tag: str) -> NetnsPair:
    """Namespaces A (10.99.0.1, fd99::1) and B (.2, ::2) on one veth link."""
    number = next(_counter)
    base = f"{tag}{os.getpid()}x{number}"
    veth_a, veth_b = f"v{os.getpid() % 100000}x{number}a", f"v{os.getpid() % 100000}x{number}b"
    pair = NetnsPair(base + "a", base + "b", veth_a, veth_b)
    try:
        ip("netns", "add", pair.a)
        ip("netns", "add", pair.b)
        ip("link", "add", veth_a, "netns", pair.a, "type", "veth", "peer", "name", veth_b, "netns", pair.b)
        for name, dev, v4, v6 in ((pair.a, veth_a, A4, A6), (pair.b, veth_b, B4, B6)):
            ip("link", "set", "lo", "up", netns=name)
            ip("link", "set", dev, "up", netns=name)
            ip("addr", "add", f"{v4}/24", "dev", dev, netns=name)
            ip("addr", "add", f"{v6}/64", "dev", dev, "nodad", netns=name)
    except Exception:
        pair.close()
        raise
    return pair
