"""The agent's XFRM data plane on the host kernel (policies and events; SAs need the VM)."""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path

import pytest

from ipsec_mesh.agent.config import IkeSettings, parse_agent_config
from ipsec_mesh.agent.dataplane import Acquire
from ipsec_mesh.agent.peers import PeerSet
from ipsec_mesh.agent.xfrm_dataplane import XfrmDataPlane
from ipsec_mesh_operator.netns import ip
from tests.support.netns import A4, A6, B4, B6, make_pair, missing_prerequisite

PSK = base64.b64encode(b"p" * 32).decode()


@pytest.fixture
def pair():
    reason = missing_prerequisite()
    if reason:
        pytest.skip(reason)
    p = make_pair("dp")
    yield p
    p.close()


def peer_set(peers: dict[str, str], *, enforcement: str = "require", v6: bool = True) -> PeerSet:
    document = {
        "peerMap": {
            "local": {"identity": "a.default.pod.mesh.test", "addresses": [A4, A6] if v6 else [A4]},
            "peerings": [{"name": "p", "authentication": "psk", "psk": [{"id": "k", "value": PSK}],
                          "enforcement": enforcement,
                          "peers": [{"name": n, "addresses": [a], "identities": [f"{n}.mesh.test"]}
                                    for n, a in peers.items()]}],
        },
        "dataplane": "xfrm",
    }
    config = parse_agent_config(document, Path("."))
    return PeerSet(config.peer_map, IkeSettings())


def policies(netns: str) -> str:
    return ip("xfrm", "policy", "list", netns=netns)


def test_policies_follow_the_peer_set_incrementally_and_spare_foreign_ones(pair):
    foreign = ["xfrm", "policy", "add", "src", "192.0.2.1/32", "dst", "192.0.2.2/32", "dir", "out", "action", "block"]
    ip(*foreign, netns=pair.a)
    plane = XfrmDataPlane(netns=pair.a)
    first = peer_set({"b": f"{B4}/32", "b6": f"{B6}/128"})
    plane.start(first)
    try:
        text = policies(pair.a)
        for sel in (f"src {A4}/32 dst {B4}/32", f"src {B4}/32 dst {A4}/32", f"src {A6}/128 dst {B6}/128"):
            assert sel in text
        assert "level use" not in text and "192.0.2.1/32" in text  # required; the foreign one untouched
        assert "proto ipv6-icmp type 135" in text  # neighbour discovery passes in clear
        index_of_b = {line for line in text.splitlines() if "index" in line}
        # Add one peer network: only its policies are new, the others keep their kernel index.
        second = peer_set({"b": f"{B4}/32", "b6": f"{B6}/128", "c": "10.99.0.0/28"})
        plane.update_peers(first, second)
        after = policies(pair.a)
        assert f"src {A4}/32 dst 10.99.0.0/28" in after
        assert index_of_b <= {line for line in after.splitlines() if "index" in line}
        # Remove it again, and switch the rest to prefer: templates become optional.
        third = peer_set({"b": f"{B4}/32", "b6": f"{B6}/128"}, enforcement="prefer")
        plane.update_peers(second, third)
        final = policies(pair.a)
        assert "10.99.0.0/28" not in final and "level use" in final and "192.0.2.1/32" in final
    finally:
        plane.stop()
    # Stopping keeps the policies: a pod that goes away stays fail-closed.
    assert f"src {A4}/32 dst {B4}/32" in policies(pair.a)


def test_restart_reconciles_instead_of_flushing(pair):
    peers = peer_set({"b": f"{B4}/32"}, v6=False)
    first = XfrmDataPlane(netns=pair.a)
    first.start(peers)
    before = [line for line in policies(pair.a).splitlines() if "index" in line]
    first.stop()
    second = XfrmDataPlane(netns=pair.a)
    second.start(peers)
    try:
        # Same desired state: the policies are the very same kernel objects (never a gap).
        assert [line for line in policies(pair.a).splitlines() if "index" in line] == before
    finally:
        second.stop()


def test_a_packet_to_a_peer_becomes_an_acquire(pair):
    plane = XfrmDataPlane(netns=pair.a)
    plane.start(peer_set({"b": f"{B4}/32"}, v6=False))
    try:
        subprocess.run(["ip", "netns", "exec", pair.a, "ping", "-c", "1", "-W", "1", B4], capture_output=True)
        deadline = time.monotonic() + 5
        events: list = []
        while time.monotonic() < deadline and not events:
            events = [e for e in plane.read_events() if isinstance(e, Acquire)]
            time.sleep(0.1)
        assert events and events[0].remote == B4 and events[0].local == A4
    finally:
        plane.stop()


def test_a_hard_policy_expire_puts_our_policy_back(pair):
    """Our policies have no lifetimes; if something gives one a lifetime and the kernel
    removes it, the data plane reinstalls it (under `require` a gap would be plaintext)."""
    import dataclasses

    from ipsec_mesh.agent.dataplane import PolicyExpired
    from ipsec_mesh.xfrm import Direction, Lifetime

    plane = XfrmDataPlane(netns=pair.a)
    plane.start(peer_set({"b": f"{B4}/32"}, v6=False))
    try:
        out = next(s for s in plane._policies.values()
                   if s.direction == Direction.OUT and str(s.selector.dst) == f"{B4}/32")
        plane.xfrm.update_policy(dataclasses.replace(out, lifetime=Lifetime(hard_add_seconds=1)))
        assert "expire add: soft 0(sec), hard 1(sec)" in ip("-s", "xfrm", "policy", "list", netns=pair.a)
        deadline = time.monotonic() + 10
        expired: list = []
        while time.monotonic() < deadline and not expired:
            expired = [e for e in plane.read_events() if isinstance(e, PolicyExpired)]
            time.sleep(0.1)
        assert expired and expired[0].hard and f"{B4}/32" in expired[0].policy
        assert plane.errors == 1
        text = ip("-s", "xfrm", "policy", "list", netns=pair.a)
        block = text.split(f"src {A4}/32 dst {B4}/32")[1].split("src ")[0]
        assert "dir out" in block and "hard 0(sec)" in block  # back, without the lifetime
    finally:
        plane.stop()


def test_packet_counts_come_from_the_kernel_with_getsa(pair):
    """Inactivity reads both halves' counters (XFRM_MSG_GETSA). The host kernel has no ESP,
    so the SA here is the larval one SPI allocation makes; its current lifetime is real
    kernel data (0 packets). The VM tier proves counts that move (test_sa_lifecycle_vm)."""
    from types import SimpleNamespace

    from ipsec_mesh.ike.events import ChildSaRef
    from ipsec_mesh.xfrm import Xfrm

    plane = XfrmDataPlane(netns=pair.a)
    plane.start(peer_set({"b": f"{B4}/32"}, v6=False))
    xfrm = Xfrm(pair.a)
    try:
        spi = xfrm.alloc_spi(B4, A4, reqid=plane.reqid_for(B4))
        plane.inbound[spi] = SimpleNamespace(dst=A4, spi=spi, proto=50)
        ref = ChildSaRef("ike", "p", spi, 0x1234, A4, B4)
        assert plane.packets(ref) == 0
        xfrm.delete_sa(A4, spi)
        assert plane.packets(ref) is None  # gone from the kernel: nothing to say
    finally:
        xfrm.close()
        plane.stop()
