"""Throw-away network namespaces for host-kernel tests (root only).

Two namespaces joined by a veth pair, with IPv4 and IPv6 addresses, built on the product's
primitives (`ipsec_mesh_operator.netns`: add_netns, add_veth, ip, socket_in), which the
tests import from there.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from ipsec_mesh_operator.netns import IFNAME_MAX, add_netns, add_veth, delete_netns, ip, unique_name

__all__ = ["A4", "A6", "B4", "B6", "NetnsPair", "make_pair", "missing_prerequisite"]

A4, B4 = "10.99.0.1", "10.99.0.2"
A6, B6 = "fd99::1", "fd99::2"


def missing_prerequisite() -> str | None:
    """Why host-kernel tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and XFRM configuration)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    return None


@dataclass
class NetnsPair:
    a: str
    b: str
    veth_a: str = ""  # interface names inside a and b
    veth_b: str = ""

    def close(self) -> None:
        for name in (self.a, self.b):
            delete_netns(name)


def make_pair(tag: str) -> NetnsPair:
    """Namespaces A (10.99.0.1, fd99::1) and B (.2, ::2) on one veth link."""
    base, veth = unique_name(tag), unique_name("v", limit=IFNAME_MAX - 1)
    pair = NetnsPair(base + "a", base + "b", veth + "a", veth + "b")
    try:
        add_netns(pair.a)
        add_netns(pair.b)
        add_veth(pair.a, pair.veth_a, pair.b, pair.veth_b)
        for name, dev, v4, v6 in ((pair.a, pair.veth_a, A4, A6), (pair.b, pair.veth_b, B4, B6)):
            ip("addr", "add", f"{v4}/24", "dev", dev, netns=name)
            ip("addr", "add", f"{v6}/64", "dev", dev, "nodad", netns=name)
    except Exception:
        pair.close()
        raise
    return pair
