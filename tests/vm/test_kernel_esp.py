"""Proof that the VM's kernel does transport-mode ESP, configured by hand with `ip xfrm`.

This is the baseline the data-plane tests build on: if these fail, the kernel or the
test tooling is at fault, not ipsec-mesh.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

from tests.vm.netns_guest import (
    AES_GCM_128,
    CHACHA20_POLY1305,
    Capture,
    NetnsError,
    PeerPair,
    flush_states,
    flush_xfrm,
    install_transport_esp,
    ping,
    tcp_transfer,
)

pytestmark = pytest.mark.vm

AEADS = [pytest.param(AES_GCM_128, id="aes-gcm"), pytest.param(CHACHA20_POLY1305, id="chacha20")]
FAMILIES = [pytest.param(socket.AF_INET, id="ipv4"), pytest.param(socket.AF_INET6, id="ipv6")]
PAYLOAD_BYTES = 256 * 1024


def test_guest_kernel_has_xfrm_and_esp():
    assert Path("/proc/net/xfrm_stat").is_file()
    modules = Path("/proc/modules").read_text()
    builtin = Path(f"/lib/modules/{os.uname().release}/modules.builtin")
    builtin_text = builtin.read_text() if builtin.is_file() else ""
    for esp in ("esp4", "esp6"):
        assert f"{esp} " in modules or f"/{esp}.ko" in builtin_text, f"{esp} not loaded"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("aead", AEADS)
def test_ping_and_tcp_cross_the_veth_only_as_esp(peers: PeerPair, aead, family, tmp_path):
    left, right = peers.left.address(family), peers.right.address(family)
    sas = install_transport_esp(peers, family, aead)
    payload = os.urandom(PAYLOAD_BYTES)

    with Capture(peers.left.netns, peers.left.ifname, tmp_path / "esp.pcap") as capture:
        assert ping(peers.left, right), "ping over ESP failed"
        digest = tcp_transfer(peers.right, peers.left, family, payload)

    assert digest == hashlib.sha256(payload).digest()
    traffic = capture.traffic(left, right)
    assert not traffic.plaintext, f"plaintext on the wire: {dict(traffic.plaintext)}"
    # 3 echo requests and replies, plus at least one TCP segment per MTU of payload.
    assert traffic.esp >= 6 + PAYLOAD_BYTES // 1500
    assert traffic.spis == {sas.spi_left_to_right, sas.spi_right_to_left}


@pytest.mark.parametrize("family", FAMILIES)
def test_required_policy_without_sa_lets_nothing_through(peers: PeerPair, family, tmp_path):
    left, right = peers.left.address(family), peers.right.address(family)
    install_transport_esp(peers, family, AES_GCM_128)
    assert ping(peers.left, right, count=1), "ping over ESP failed before the SAs were removed"
    flush_states(peers)
    no_state_before = peers.left.netns.xfrm_stat()["XfrmOutNoStates"]

    with Capture(peers.left.netns, peers.left.ifname, tmp_path / "nosa.pcap") as capture:
        assert not ping(peers.left, right, count=2, deadline=2)
        with pytest.raises(NetnsError):
            tcp_transfer(peers.right, peers.left, family, b"must not leave", timeout=3)

    traffic = capture.traffic(left, right)
    leaked = f"esp={traffic.esp} {dict(traffic.plaintext)}"
    assert traffic.total == 0, f"packets left without an SA: {leaked}"
    assert peers.left.netns.xfrm_stat()["XfrmOutNoStates"] > no_state_before


@pytest.mark.parametrize("family", FAMILIES)
def test_inbound_policy_drops_plaintext(peers: PeerPair, family, tmp_path):
    left, right = peers.left.address(family), peers.right.address(family)
    install_transport_esp(peers, family, AES_GCM_128)
    flush_xfrm(peers.left.netns)  # left now sends plaintext; right still requires ESP
    mismatch_before = peers.right.netns.xfrm_stat()["XfrmInTmplMismatch"]

    with Capture(peers.right.netns, peers.right.ifname, tmp_path / "plain.pcap") as capture:
        assert not ping(peers.left, right, count=2, deadline=2)

    traffic = capture.traffic(left, right)
    icmp = "icmp" if family == socket.AF_INET else "icmpv6"
    # ping keeps sending until its deadline: at least the 2 requests, never an answer.
    assert traffic.plaintext[icmp] >= 2, "the echo requests should reach the wire unanswered"
    assert traffic.esp == 0
    assert peers.right.netns.xfrm_stat()["XfrmInTmplMismatch"] >= mismatch_before + 2
