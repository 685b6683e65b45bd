"""Our sidecars with the XFRM data plane, in a kernel that has ESP (the VM tier).

Namespaces joined by veths, a sidecar in each from its standalone config, real
traffic, and a capture that must show no plaintext between peers under `require`.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest

from tests.interop.harness.netns import Topology
from tests.interop.harness.sidecar import Sidecar
from tests.vm.netns_guest import Capture, Netns, tcp_transfer
from tests.vm.pcap_reader import Packet

pytestmark = pytest.mark.vm

PSK = "vm-tier-psk-0123456789abcdef-0123"
LEFT_ID, RIGHT_ID = "left.default.pod.mesh.test", "right.default.pod.mesh.test"
IKE_PORTS = {500, 4500}
# Under software emulation a Python process takes many seconds to start and to answer.
START = 180.0
WAIT = 90.0


@pytest.fixture
def topology():
    with Topology() as topo:
        yield topo


def sidecars(pair, tmp_path, *, esp=None, lifetimes=None, enforcement=None, ipv6=True, name="", **kwargs):
    """A sidecar on each side of `pair`, each knowing the other (IPv4, and IPv6 when asked)."""
    made = []
    for me, peer, my_id, peer_id in ((pair.left, pair.right, LEFT_ID, RIGHT_ID),
                                     (pair.right, pair.left, RIGHT_ID, LEFT_ID)):
        peers = f"{peer.ipv4}/32" + (f",{peer.ipv6}/128" if ipv6 else "")
        made.append(Sidecar(me, tmp_path, address=me.ipv4, addresses=(me.ipv6,) if ipv6 else (),
                            identity=my_id, peer_address=peers, peer_identity=peer_id, psk=PSK,
                            esp=esp, lifetimes=lifetimes, enforcement=enforcement, dataplane="xfrm",
                            name=f"{me.role}{name}", **kwargs).start(START))
    return made


def plaintext_between(packets: list[Packet], a: str, b: str) -> list[Packet]:
    """Packets between a and b that are neither ESP nor IKE."""
    ends = {a, b}
    return [p for p in packets if {p.src, p.dst} == ends and not p.is_esp
            and not (p.protocol == socket.IPPROTO_UDP and ({p.sport, p.dport} & IKE_PORTS))]


def esp_between(packets: list[Packet], a: str, b: str) -> list[Packet]:
    return [p for p in packets if {p.src, p.dst} == {a, b} and p.is_esp]


def ping(ns, address: str, count: int = 3, deadline: int = 10) -> bool:
    six = ["-6"] if ":" in address else []
    return ns.run(["ping", *six, "-c", str(count), "-w", str(deadline), "-i", "0.2", address],
                  check=False, timeout=deadline + 5).returncode == 0


def installed_children(sidecar: Sidecar) -> int:
    status = sidecar.status() or {"ike_sas": []}
    return sum(1 for sa in status["ike_sas"] for c in sa["children"] if c["state"] == "installed")


def kernel_sas(ns) -> int:
    out = ns.run(["ip", "xfrm", "state", "list"]).stdout
    return sum(1 for line in out.splitlines() if line.startswith("src "))


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("esp", ["aes256gcm16-esn", "chacha20poly1305-esn"])
def test_acquire_then_only_esp_between_peers(topology, tmp_path, family, esp):
    pair = topology.pair(ipv6=True)
    left, right = sidecars(pair, tmp_path, esp=esp)
    dst = pair.right.ipv4 if family == "ipv4" else pair.right.ipv6
    src = pair.left.ipv4 if family == "ipv4" else pair.left.ipv6
    with Capture(Netns(pair.left.name), "eth0", tmp_path / "wire.pcap") as capture:
        started = time.monotonic()
        assert ping(pair.left, dst, count=5, deadline=40), "ping over ESP failed"
        left.wait_for(lambda s: installed_children_of(s) >= 1, WAIT, "a CHILD_SA after ACQUIRE")
        setup = time.monotonic() - started
        payload = os.urandom(128 * 1024)
        digest = tcp_transfer(_guest_endpoint(pair.right, family), _guest_endpoint(pair.left, family),
                              socket.AF_INET if family == "ipv4" else socket.AF_INET6, payload)
    assert digest == hashlib.sha256(payload).digest()
    packets = capture.packets()
    assert not plaintext_between(packets, src, dst), "plaintext between peers under require"
    assert len(esp_between(packets, src, dst)) >= 10
    algorithm = left.status()["ike_sas"][0]["children"][0]["algorithm"]
    assert algorithm.startswith(esp.split("-")[0])
    print(f"\n[measure] {family} {esp}: first packet to installed SAs and answered ping: {setup:.2f}s "
          f"(software-emulated VM)")


def installed_children_of(status: dict) -> int:
    return sum(1 for sa in status["ike_sas"] for c in sa["children"] if c["state"] == "installed")


class _GuestEnd:
    """The shape netns_guest.tcp_transfer expects of an endpoint."""

    def __init__(self, ns, family):
        self.netns = Netns(ns.name)
        self.ipv4 = ns.ipv4
        self.ipv6 = ns.addrs.get("ipv6", "")

    def address(self, family: int) -> str:
        return self.ipv4 if family == socket.AF_INET else self.ipv6


def _guest_endpoint(ns, family):
    return _GuestEnd(ns, family)


def test_rekeys_lose_no_packet(topology, tmp_path):
    """CHILD_SA rekeys every ~3 s under a numbered stream both ways: every packet arrives."""
    pair = topology.pair(ipv6=False)
    left, right = sidecars(pair, tmp_path, lifetimes={"child": "3s", "ike": "1h"}, ipv6=False)
    assert ping(pair.left, pair.right.ipv4, count=2)
    left.wait_for(lambda s: installed_children_of(s) >= 1, WAIT, "first CHILD_SA")
    rekeys_before = _child_rekeys(left) + _child_rekeys(right)
    lost = _stream_both_ways(pair, seconds=62, rate=40)
    rekeys = _child_rekeys(left) + _child_rekeys(right) - rekeys_before
    assert rekeys >= 20, f"only {rekeys} CHILD_SA rekeys happened"
    assert lost == {"left->right": 0, "right->left": 0}
    # No SA piles up: one CHILD_SA (two kernel SAs) per side, plus at most one in its grace period.
    assert kernel_sas(pair.left) <= 4 and kernel_sas(pair.right) <= 4


def test_ike_rekeys_lose_no_packet(topology, tmp_path):
    pair = topology.pair(ipv6=False)
    left, right = sidecars(pair, tmp_path, lifetimes={"child": "1h", "ike": "3s"}, ipv6=False)
    assert ping(pair.left, pair.right.ipv4, count=2)
    left.wait_for(lambda s: installed_children_of(s) >= 1, WAIT, "first CHILD_SA")
    before = _ike_rekeys(left) + _ike_rekeys(right)
    lost = _stream_both_ways(pair, seconds=62, rate=40)
    rekeys = _ike_rekeys(left) + _ike_rekeys(right) - before
    assert rekeys >= 20, f"only {rekeys} IKE SA rekeys happened"
    assert lost == {"left->right": 0, "right->left": 0}


def _metric(sidecar: Sidecar, name: str) -> float:
    text = sidecar.ns.call(_fetch, 9741, "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _fetch(port: int, path: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
        return response.read().decode()


def _child_rekeys(sidecar: Sidecar) -> float:
    return _metric(sidecar, "ipsec_mesh_child_sa_rekeys_total")


def _ike_rekeys(sidecar: Sidecar) -> float:
    return _metric(sidecar, "ipsec_mesh_ike_sa_rekeys_total")


def _udp_receiver(address: str, port: int, expected: int, seconds: float) -> list[int]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, port))
    s.settimeout(1.0)
    seen: set[int] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(seen) < expected:
        try:
            data, _ = s.recvfrom(64)
        except socket.timeout:
            continue
        seen.add(int.from_bytes(data[:4], "big"))
    s.close()
    return sorted(seen)


def _udp_sender(address: str, port: int, count: int, interval: float) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    start = time.monotonic()
    for n in range(count):
        # Paced by the clock, not by sleeps alone, so the stream keeps its rate.
        delay = start + n * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        s.sendto(n.to_bytes(4, "big") + b"x" * 60, (address, port))
    s.close()
    return count


def _stream_both_ways(pair, seconds: float, rate: float) -> dict[str, int]:
    """Numbered UDP both ways at `rate` pps for `seconds`; returns how many were lost per direction."""
    count = int(seconds * rate)
    results: dict[str, object] = {}

    def run(name, fn, ns, *args):
        results[name] = ns.call(fn, *args, timeout=seconds + 60)

    threads = [
        threading.Thread(target=run, args=("rx-right", _udp_receiver, pair.right, pair.right.ipv4, 7001, count,
                                           seconds + 20)),
        threading.Thread(target=run, args=("rx-left", _udp_receiver, pair.left, pair.left.ipv4, 7002, count,
                                           seconds + 20)),
    ]
    for t in threads:
        t.start()
    time.sleep(1.0)
    senders = [
        threading.Thread(target=run, args=("tx-left", _udp_sender, pair.left, pair.right.ipv4, 7001, count,
                                           1.0 / rate)),
        threading.Thread(target=run, args=("tx-right", _udp_sender, pair.right, pair.left.ipv4, 7002, count,
                                           1.0 / rate)),
    ]
    for t in senders:
        t.start()
    for t in senders + threads:
        t.join(seconds + 90)
    return {"left->right": count - len(results.get("rx-right", [])),
            "right->left": count - len(results.get("rx-left", []))}


def test_kill_9_and_restart_never_leaks_plaintext(topology, tmp_path):
    pair = topology.pair(ipv6=False)
    left, right = sidecars(pair, tmp_path, ipv6=False)
    a, b = pair.left.ipv4, pair.right.ipv4
    with Capture(Netns(pair.left.name), "eth0", tmp_path / "restart.pcap") as capture:
        assert ping(pair.left, b, count=3)
        left.wait_for(lambda s: installed_children_of(s) >= 1, WAIT, "first CHILD_SA")
        left.kill()
        # While no sidecar runs, the policies stay: traffic is blocked, never in plaintext.
        assert not ping(pair.left, b, count=3, deadline=3)
        restarted = Sidecar(pair.left, tmp_path, address=a, identity=LEFT_ID, peer_address=f"{b}/32",
                            peer_identity=RIGHT_ID, psk=PSK, dataplane="xfrm", name="left-restarted").start(START)
        # Traffic resumes on its own (ACQUIRE, INITIAL_CONTACT clears the peer's stale SAs).
        assert ping(pair.left, b, count=5, deadline=20)
        restarted.wait_for(lambda s: installed_children_of(s) >= 1, WAIT, "CHILD_SA after restart")
    assert not plaintext_between(capture.packets(), a, b)
    time.sleep(3)  # the peer's replaced SAs leave after their grace period
    assert kernel_sas(pair.left) == 2, pair.left.run(["ip", "xfrm", "state"]).stdout
    assert kernel_sas(pair.right) == 2, pair.right.run(["ip", "xfrm", "state"]).stdout
    restarted.stop()
    left.stop()
    right.stop()


def test_nat_between_sidecars_uses_udp_encapsulation(topology, tmp_path):
    nat = topology.nat()
    left = Sidecar(nat.left, tmp_path, address="192.168.1.2", identity=LEFT_ID, peer_address="203.0.113.2/32",
                   peer_identity=RIGHT_ID, psk=PSK, dataplane="xfrm", initiate=True, name="natleft").start(START)
    # Behind the NAT the right side sees the router's address.
    Sidecar(nat.right, tmp_path, address="203.0.113.2", identity=RIGHT_ID, peer_address="203.0.113.1/32",
            peer_identity=LEFT_ID, psk=PSK, dataplane="xfrm", name="natright").start(START)
    left.wait_for(lambda s: installed_children_of(s) >= 1, WAIT, "CHILD_SA through the NAT")
    with Capture(Netns(nat.right.name), "eth0", tmp_path / "nat.pcap") as capture:
        assert ping(nat.left, "203.0.113.2", count=3)
    packets = capture.packets()
    encapsulated = [p for p in packets if p.is_esp and p.protocol == socket.IPPROTO_UDP]
    assert encapsulated and all(4500 in (p.sport, p.dport) for p in encapsulated)
    assert not plaintext_between(packets, "203.0.113.1", "203.0.113.2")


@pytest.mark.parametrize("enforcement", ["prefer", "require"])
def test_prefer_allows_plaintext_to_a_peer_without_sidecar(topology, tmp_path, enforcement):
    pair = topology.pair(ipv6=False)
    Sidecar(pair.left, tmp_path, address=pair.left.ipv4, identity=LEFT_ID, peer_address=f"{pair.right.ipv4}/32",
            peer_identity=RIGHT_ID, psk=PSK, dataplane="xfrm", enforcement=enforcement,
            ike_settings={"retransmitTimeout": 1, "retransmitTries": 1}).start(START)
    with Capture(Netns(pair.left.name), "eth0", tmp_path / "prefer.pcap") as capture:
        answered = ping(pair.left, pair.right.ipv4, count=3, deadline=4)
    plain = plaintext_between(capture.packets(), pair.left.ipv4, pair.right.ipv4)
    if enforcement == "prefer":
        assert answered and plain
    else:
        assert not answered and not plain


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-initiates", "charon-initiates"])
def test_charon_peer_with_real_esp(topology, tmp_path, we_initiate):
    """strongSwan's charon using the kernel (no shim) as the peer: ESP both ways, and rekeys."""
    from tests.interop.harness.charon import Charon, missing_requirements
    from tests.interop.harness.swanctl import Child, Connection

    if missing_requirements():
        pytest.skip(missing_requirements())
    pair = topology.pair(ipv6=False)
    a, b = pair.left.ipv4, pair.right.ipv4
    charon = Charon(pair.right, tmp_path, "charon")
    charon.add_psk(PSK, RIGHT_ID, LEFT_ID)
    charon.add_connection("conn", Connection(
        local_addrs=b, remote_addrs=a, local_id=RIGHT_ID, remote_id=LEFT_ID,
        proposals="aes256gcm16-prfsha256-x25519",
        children={"child": Child(mode="transport", esp_proposals="aes256gcm16-esn",
                                 local_ts=f"{b}/32", remote_ts=f"{a}/32")}))
    charon.start()
    try:
        ours = Sidecar(pair.left, tmp_path, address=a, identity=LEFT_ID, peer_address=f"{b}/32",
                       peer_identity=RIGHT_ID, psk=PSK, dataplane="xfrm", initiate=we_initiate,
                       ike="aes256gcm16-prfsha256-x25519").start(START)
        if not we_initiate:
            charon.initiate(child="child", ike="conn")
        charon.wait_established("conn", ("child",), timeout=WAIT)
        ours.wait_for(lambda s: installed_children_of(s) >= 1, WAIT, "our CHILD_SA")
        with Capture(Netns(pair.left.name), "eth0", tmp_path / "charon.pcap") as capture:
            assert ping(pair.left, b, count=3)
            old = charon.list_sas()[0].child("child").spi_in
            charon.rekey(child="child")
            charon.wait_for(lambda sas: sas and sas[0].child("child").spi_in != old
                            and sas[0].child("child").state == "INSTALLED", timeout=WAIT)
            assert ping(pair.left, b, count=3)
        packets = capture.packets()
        assert not plaintext_between(packets, a, b)
        assert len({p.spi for p in esp_between(packets, a, b)}) >= 3, "ESP on old and new SAs"
        ours.stop()
    finally:
        charon.stop()
