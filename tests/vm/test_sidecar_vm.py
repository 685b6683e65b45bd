"""Our sidecars with the XFRM data plane, in a kernel that has ESP (the VM tier).

Namespaces joined by veths, a sidecar in each from its standalone config, real
traffic, and a capture that must show no plaintext between peers under `require`.

A Python process needs tens of seconds to start under software emulation, so each
test starts as few sidecars as it can and checks several things with them; sidecars
that can start together are launched together.
"""

from __future__ import annotations

import errno
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
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; Python's socket module does not name it
START = 300.0  # seconds: Python start-up under emulation on a loaded host
WAIT = 120.0


@pytest.fixture
def topology():
    with Topology() as topo:
        yield topo


def start_all(*sidecars: Sidecar) -> list[Sidecar]:
    for s in sidecars:
        s.launch()
    return [s.wait_ready(START) for s in sidecars]


ICMPV6_NEIGHBOR_DISCOVERY = {133, 134, 135, 136, 137}  # passes in clear by design (docs/xfrm.md)


def plaintext_between(packets: list[Packet], a: str, b: str) -> list[Packet]:
    """Packets between a and b that are neither ESP, nor IKE, nor IPv6 neighbour discovery."""
    return [p for p in packets if {p.src, p.dst} == {a, b} and not p.is_esp
            and not (p.protocol == socket.IPPROTO_UDP and ({p.sport, p.dport} & IKE_PORTS))
            and not (p.protocol == socket.IPPROTO_ICMPV6 and p.sport in ICMPV6_NEIGHBOR_DISCOVERY)]


def esp_between(packets: list[Packet], a: str, b: str) -> list[Packet]:
    return [p for p in packets if {p.src, p.dst} == {a, b} and p.is_esp]


def ping(ns, address: str, count: int = 3, deadline: int = 20) -> bool:
    six = ["-6"] if ":" in address else []
    return ns.run(["ping", *six, "-c", str(count), "-w", str(deadline), "-i", "0.2", address],
                  check=False, timeout=deadline + 10).returncode == 0


def installed(status: dict, peer: str | None = None) -> list[dict]:
    return [c for sa in status["ike_sas"] if peer is None or sa["remote"].startswith(peer)
            for c in sa["children"] if c["state"] == "installed"]


def kernel_sas(ns) -> int:
    return sum(1 for line in ns.run(["ip", "xfrm", "state", "list"]).stdout.splitlines() if line.startswith("src "))


class _End:
    """The shape netns_guest.tcp_transfer expects of an endpoint."""

    def __init__(self, ns):
        self.netns = Netns(ns.name)
        self.ipv4, self.ipv6 = ns.ipv4, ns.addrs.get("ipv6", "")

    def address(self, family: int) -> str:
        return self.ipv4 if family == socket.AF_INET else self.ipv6


def peering(name: str, peer: str, identity: str, esp: str, **extra) -> dict:
    import base64

    return {"name": name, "authentication": "psk",
            "psk": [{"id": "k1", "value": base64.b64encode(PSK.encode()).decode()}],
            "proposals": {"esp": [esp]},
            "peers": [{"name": "peer", "addresses": [peer], "identities": [identity]}], **extra}


def test_only_esp_between_sidecars_for_both_ciphers_and_families(topology, tmp_path):
    """IPv4 peering with AES-GCM-256, IPv6 peering with ChaCha20-Poly1305; the first packet
    to each peer triggers IKE through the kernel's ACQUIRE and waits rather than leaking."""
    pair = topology.pair(ipv6=True)
    sides = []
    for me, peer, mine, theirs in ((pair.left, pair.right, LEFT_ID, RIGHT_ID),
                                   (pair.right, pair.left, RIGHT_ID, LEFT_ID)):
        sides.append(Sidecar(me, tmp_path, address=me.ipv4, addresses=(me.ipv6,), identity=mine,
                             peer_address=f"{peer.ipv4}/32", peer_identity=theirs, psk=PSK,
                             esp="aes256gcm16-esn", dataplane="xfrm", name=me.role,
                             more_peerings=(peering("v6", f"{peer.ipv6}/128", theirs, "chacha20poly1305-esn"),)))
    left, right = start_all(*sides)
    setup: dict[str, float] = {}
    payload = os.urandom(128 * 1024)
    with Capture(Netns(pair.left.name), "eth0", tmp_path / "wire.pcap") as capture:
        for family, dst in ((socket.AF_INET, pair.right.ipv4), (socket.AF_INET6, pair.right.ipv6)):
            started = time.monotonic()
            assert ping(pair.left, dst, count=3, deadline=60), f"ping {dst} over ESP failed"
            setup[dst] = time.monotonic() - started
            digest = tcp_transfer(_End(pair.right), _End(pair.left), family, payload)
            assert digest == hashlib.sha256(payload).digest()
    packets = capture.packets()
    status = left.status()
    for src, dst, cipher in ((pair.left.ipv4, pair.right.ipv4, "aes256gcm16"),
                             (pair.left.ipv6, pair.right.ipv6, "chacha20poly1305")):
        assert not plaintext_between(packets, src, dst), f"plaintext between {src} and {dst}"
        assert len(esp_between(packets, src, dst)) >= 20
        assert installed(status, dst)[0]["algorithm"].startswith(cipher)
    print("\n[measure] first packet to answered ping (IKE via ACQUIRE, emulated VM): "
          + ", ".join(f"{dst}: {t:.1f}s" for dst, t in setup.items()))


def _fetch(port: int, path: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.read().decode()


def metric(sidecar: Sidecar, name: str) -> float:
    for line in sidecar.ns.call(_fetch, 9741, "/metrics", timeout=30).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _udp_receiver(address: str, port: int, expected: int, seconds: float, stop: str | None = None) -> list[int]:
    """The numbers received; `stop`: a file whose existence ends it (after a second of quiet)."""
    s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
    # 8 MiB (SO_RCVBUFFORCE, we are root): this process can go unscheduled for seconds on a
    # loaded emulated guest, and the default buffer (~270 datagrams) then overflowed, counted
    # as UdpRcvbufErrors, not as anything the mesh dropped.
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    s.bind((address, port))
    s.settimeout(1.0)
    seen: set[int] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(seen) < expected:
        try:
            data, _ = s.recvfrom(64)
        except socket.timeout:
            if stop is not None and os.path.exists(stop):
                break  # the senders stopped, and nothing came for a second since
            continue
        seen.add(int.from_bytes(data[:4], "big"))
    s.close()
    return sorted(seen)


def _udp_sender(address: str, port: int, count: int, interval: float, stop: str | None = None,
                errors: dict[str, list[int]] | None = None) -> int:
    """Numbered datagrams, paced; how many were due (fewer than `count` once the file `stop`
    exists: these run in a forked process, so the signal goes through the file system).
    Without `errors` a refused send raises; with it, the datagram is not sent (the receiver
    counts it lost) and its number is listed under the error's name, and the stream goes on."""
    s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
    start = time.monotonic()
    for n in range(count):
        if stop is not None and os.path.exists(stop):
            count = n
            break
        delay = start + n * interval - time.monotonic()  # paced by the clock
        if delay > 0:
            time.sleep(delay)
        try:
            s.sendto(n.to_bytes(4, "big") + b"x" * 60, (address, port))
        except OSError as exc:
            if errors is None:
                raise
            errors.setdefault(errno.errorcode.get(exc.errno or 0, str(exc)), []).append(n)
    s.close()
    return count


def _udp_sender_reporting(address: str, port: int, count: int, interval: float,
                          stop: str | None = None) -> tuple[int, dict[str, list[int]]]:
    """`_udp_sender` that goes on past refused sends: (how many were due, refused ones by error)."""
    errors: dict[str, list[int]] = {}
    return _udp_sender(address, port, count, interval, stop, errors), errors


def stream_both_ways(pair, seconds: float, rate: float, family: int = socket.AF_INET,
                     stop: str | None = None, missing: dict[str, list[int]] | None = None,
                     refused: dict[str, dict[str, list[int]]] | None = None) -> dict[str, int]:
    """Numbered UDP both ways at `rate` packets/s for `seconds` or until the file `stop`
    exists; how many of those due were lost per direction (`missing`, if given, gets the lost
    numbers: number n was due n / rate seconds after the senders began). With `refused`, a
    send the kernel refuses is a lost datagram, listed there per direction and error, and
    the stream goes on (without it the sender stops there and every later one is lost)."""
    count = int(seconds * rate)
    six = family == socket.AF_INET6
    left, right = (pair.left.ipv6, pair.right.ipv6) if six else (pair.left.ipv4, pair.right.ipv4)
    to_right, to_left = (7003, 7004) if six else (7001, 7002)
    results: dict[str, object] = {}

    def run(name, fn, ns, *args):
        results[name] = ns.call(fn, *args, timeout=seconds + 120)

    receivers = [threading.Thread(target=run, args=("rx-right", _udp_receiver, pair.right, right, to_right,
                                                    count, seconds + 30, stop)),
                 threading.Thread(target=run, args=("rx-left", _udp_receiver, pair.left, left, to_left,
                                                    count, seconds + 30, stop))]
    sender = _udp_sender if refused is None else _udp_sender_reporting
    senders = [threading.Thread(target=run, args=("tx-left", sender, pair.left, right, to_right, count,
                                                  1.0 / rate, stop)),
               threading.Thread(target=run, args=("tx-right", sender, pair.right, left, to_left, count,
                                                  1.0 / rate, stop))]
    for t in receivers:
        t.start()
    time.sleep(2.0)
    for t in senders:
        t.start()
    for t in senders + receivers:
        t.join(seconds + 180)
    if refused is not None:
        for direction, tx in (("left->right", "tx-left"), ("right->left", "tx-right")):
            if tx in results:
                results[tx], refused[direction] = results[tx]
    if missing is not None:
        for direction, tx, rx in (("left->right", "tx-left", "rx-right"), ("right->left", "tx-right", "rx-left")):
            missing[direction] = sorted(set(range(results.get(tx, count))) - set(results.get(rx, [])))
    return {"left->right": results.get("tx-left", count) - len(results.get("rx-right", [])),
            "right->left": results.get("tx-right", count) - len(results.get("rx-left", []))}


def test_rekeys_lose_no_packet(topology, tmp_path):
    """CHILD_SA and IKE SA rekeys every few seconds under numbered streams both ways: zero loss."""
    pair = topology.pair(ipv6=False)
    left, right = start_all(*(
        Sidecar(me, tmp_path, address=me.ipv4, identity=mine, peer_address=f"{peer.ipv4}/32",
                peer_identity=theirs, psk=PSK, dataplane="xfrm", name=me.role,
                ike="aes256gcm16-prfsha256-x25519", lifetimes={"child": "3s", "ike": "4s"})
        for me, peer, mine, theirs in ((pair.left, pair.right, LEFT_ID, RIGHT_ID),
                                       (pair.right, pair.left, RIGHT_ID, LEFT_ID))))
    assert ping(pair.left, pair.right.ipv4, count=2, deadline=60)
    counters = ("ipsec_mesh_child_sa_rekeys_total", "ipsec_mesh_ike_sa_rekeys_total")
    before = {c: metric(left, c) + metric(right, c) for c in counters}
    lost = stream_both_ways(pair, seconds=75, rate=40)
    done = {c: metric(left, c) + metric(right, c) - before[c] for c in counters}
    print(f"\n[measure] {done} rekeys during 75 s of 40 pps each way; lost: {lost}")
    assert done["ipsec_mesh_child_sa_rekeys_total"] >= 20
    assert done["ipsec_mesh_ike_sa_rekeys_total"] >= 20
    assert lost == {"left->right": 0, "right->left": 0}
    # Nothing piles up: one CHILD_SA (two SAs) per side, plus the inbound SAs still in their
    # 2 s grace period (rekeys go on every ~1.5 s per side here, so up to two or three of those).
    assert kernel_sas(pair.left) <= 6 and kernel_sas(pair.right) <= 6


def test_kill_9_and_restart_never_leaks_plaintext(topology, tmp_path):
    pair = topology.pair(ipv6=False)
    a, b = pair.left.ipv4, pair.right.ipv4

    def sidecar(ns, mine, peer, theirs, name):
        return Sidecar(ns, tmp_path, address=ns.ipv4, identity=mine, peer_address=f"{peer}/32",
                       peer_identity=theirs, psk=PSK, dataplane="xfrm", name=name)

    left, right = start_all(sidecar(pair.left, LEFT_ID, b, RIGHT_ID, "left"),
                            sidecar(pair.right, RIGHT_ID, a, LEFT_ID, "right"))
    with Capture(Netns(pair.left.name), "eth0", tmp_path / "restart.pcap") as capture:
        assert ping(pair.left, b, count=3, deadline=60)
        left.kill()
        # No sidecar runs: its policies and SAs stay in the kernel, so traffic goes on over
        # ESP or is blocked, but never leaves in plaintext (checked on the capture below).
        ping(pair.left, b, count=3, deadline=3)
        restarted = sidecar(pair.left, LEFT_ID, b, RIGHT_ID, "left-restarted").start(START)
        # The kept SAs carry the pings; the restarted sidecar replaces them with new ones
        # (docs/sidecar.md, "Stopping and restarting"; tests/vm/test_sa_lifecycle_vm.py).
        assert ping(pair.left, b, count=3, deadline=60)
    assert not plaintext_between(capture.packets(), a, b)
    time.sleep(4)  # replaced SAs leave after their grace period
    assert kernel_sas(pair.left) == 2, pair.left.run(["ip", "xfrm", "state"]).stdout
    assert kernel_sas(pair.right) == 2, pair.right.run(["ip", "xfrm", "state"]).stdout
    restarted.stop()
    right.stop()


def test_nat_between_sidecars_uses_udp_encapsulation(topology, tmp_path):
    nat = topology.nat()
    # The right side knows the left by the address it sees: the router's.
    left, _ = start_all(
        Sidecar(nat.left, tmp_path, address="192.168.1.2", identity=LEFT_ID, peer_address="203.0.113.2/32",
                peer_identity=RIGHT_ID, psk=PSK, dataplane="xfrm", initiate=True, name="natleft"),
        Sidecar(nat.right, tmp_path, address="203.0.113.2", identity=RIGHT_ID, peer_address="203.0.113.1/32",
                peer_identity=LEFT_ID, psk=PSK, dataplane="xfrm", name="natright"))
    left.wait_for(lambda s: installed(s), WAIT, "a CHILD_SA through the NAT")
    with Capture(Netns(nat.right.name), "eth0", tmp_path / "nat.pcap") as capture:
        assert ping(nat.left, "203.0.113.2", count=3, deadline=30)
    packets = capture.packets()
    encapsulated = [p for p in packets if p.is_esp and p.protocol == socket.IPPROTO_UDP]
    assert encapsulated and all(4500 in (p.sport, p.dport) for p in encapsulated)
    assert not plaintext_between(packets, "203.0.113.1", "203.0.113.2")


def test_prefer_lets_plaintext_through_require_does_not(topology, tmp_path):
    """Two peers without a sidecar: `prefer` reaches one in plaintext, `require` blocks the other."""
    pair = topology.pair(ipv6=False)
    other = pair.right
    other.run(["ip", "addr", "add", "10.0.0.3/24", "dev", "eth0"])
    Sidecar(pair.left, tmp_path, address=pair.left.ipv4, identity=LEFT_ID, peer_address="10.0.0.2/32",
            peer_identity=RIGHT_ID, psk=PSK, dataplane="xfrm", enforcement="prefer",
            ike_settings={"retransmitTimeout": 1, "retransmitTries": 1},
            more_peerings=(peering("strict", "10.0.0.3/32", RIGHT_ID, "aes256gcm16-esn",
                                   enforcement="require"),)).start(START)
    with Capture(Netns(pair.left.name), "eth0", tmp_path / "prefer.pcap") as capture:
        preferred = ping(pair.left, "10.0.0.2", count=3, deadline=5)
        required = ping(pair.left, "10.0.0.3", count=3, deadline=5)
    packets = capture.packets()
    assert preferred and plaintext_between(packets, pair.left.ipv4, "10.0.0.2")
    # Nothing of ours to the `require` peer in clear (that peer's kernel may still answer
    # our IKE attempts with ICMP port-unreachable: its packets, not ours).
    ours = [p for p in plaintext_between(packets, pair.left.ipv4, "10.0.0.3") if p.src == pair.left.ipv4]
    assert not required and not ours


def test_charon_peer_with_real_esp(topology, tmp_path):
    """strongSwan's charon using the kernel (no shim) as the peer: ESP both ways, a rekey,
    then the same again with charon initiating."""
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
    charon.start(timeout=WAIT)
    try:
        ours = Sidecar(pair.left, tmp_path, address=a, identity=LEFT_ID, peer_address=f"{b}/32",
                       peer_identity=RIGHT_ID, psk=PSK, dataplane="xfrm", initiate=True,
                       ike="aes256gcm16-prfsha256-x25519").start(START)
        charon.wait_established("conn", ("child",), timeout=WAIT)
        with Capture(Netns(pair.left.name), "eth0", tmp_path / "charon.pcap") as capture:
            assert ping(pair.left, b, count=3)
            old = charon.list_sas()[0].child("child").spi_in
            charon.rekey(child="child")
            charon.wait_for(lambda sas: sas and sas[0].child("child").spi_in != old
                            and sas[0].child("child").state == "INSTALLED", timeout=WAIT)
            assert ping(pair.left, b, count=3)
            # Charon deletes and initiates itself this time.
            charon.terminate(ike="conn")
            ours.wait_for(lambda s: not s["ike_sas"], WAIT, "our SA gone after charon's delete")
            charon.initiate(child="child", ike="conn", timeout=WAIT)
            ours.wait_for(lambda s: installed(s), WAIT, "CHILD_SA initiated by charon")
            assert ping(pair.left, b, count=3)
        packets = capture.packets()
        assert not plaintext_between(packets, a, b)
        assert len({p.spi for p in esp_between(packets, a, b)}) >= 5, "ESP on three generations of SAs"
        ours.stop()
    finally:
        charon.stop()
