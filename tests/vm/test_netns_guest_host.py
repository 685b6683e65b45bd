"""The namespace helpers on the host kernel (no ESP needed): the veth pair, ping, TCP,
capture and classification all work, and plaintext is seen as plaintext. This keeps the
helpers honest so that the VM tests' 'zero plaintext' means something."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest

from tests.vm.netns_guest import (
    Capture,
    NetnsError,
    PeerPair,
    missing_requirements,
    peer_pair,
    ping,
    run,
    tcp_transfer,
)

FAMILIES = [pytest.param(socket.AF_INET, id="ipv4"), pytest.param(socket.AF_INET6, id="ipv6")]


@pytest.mark.parametrize("family", FAMILIES)
def test_plaintext_ping_and_tcp_are_captured_as_plaintext(peers: PeerPair, family, tmp_path):
    left, right = peers.left.address(family), peers.right.address(family)
    payload = os.urandom(64 * 1024)

    with Capture(peers.left.netns, peers.left.ifname, tmp_path / "plain.pcap") as capture:
        assert ping(peers.left, right, count=2)
        digest = tcp_transfer(peers.right, peers.left, family, payload)

    assert digest == hashlib.sha256(payload).digest()

    traffic = capture.traffic(left, right)
    icmp = "icmp" if family == socket.AF_INET else "icmpv6"
    assert traffic.esp == 0
    assert traffic.plaintext[icmp] == 4  # 2 requests, 2 replies: no ARP/NDP noise
    assert traffic.plaintext["tcp"] > len(payload) // 65536


def test_failed_tcp_transfer_raises(peers: PeerPair):
    peers.right.netns.ip_batch(["link set eth0 down"])
    with pytest.raises(NetnsError, match="TCP transfer"):
        tcp_transfer(peers.right, peers.left, socket.AF_INET, b"x", timeout=1)


def test_namespaces_are_removed_even_when_the_block_fails():
    if missing_requirements():
        pytest.skip(f"namespace tests need: {', '.join(missing_requirements())}")
    with pytest.raises(RuntimeError), peer_pair() as pair:
        names = (pair.left.netns.name, pair.right.netns.name)
        raise RuntimeError("test body failed")
    listed = run(["ip", "netns", "list"]).stdout
    assert not any(name in listed for name in names)


def test_xfrm_stat_is_read_inside_the_namespace(peers: PeerPair):
    stats = peers.left.netns.xfrm_stat()
    assert stats["XfrmOutNoStates"] == 0 and "XfrmInTmplMismatch" in stats
