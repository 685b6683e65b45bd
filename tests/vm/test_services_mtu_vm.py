"""Datagrams near the link MTU through a ClusterIP, with real ESP (VM tier, issue 11).

The client socket of a ClusterIP call takes its MTU from the ClusterIP's route; after the pod's
DNAT the packet goes through an endpoint's SA and grows by the ESP overhead. With the sidecar's
ClusterIP routes, the socket sees the ESP inner MTU (1458) and UDP datagrams of every size from
1400 to 1472 bytes (IPv4; 1380 to 1452 over IPv6: the same packet sizes) either arrive intact
or, on a never-fragment socket (IP_PMTUDISC_DO, as QUIC uses), are refused at send() exactly
above what fits: none is lost on the way, and only ESP (and IKE) crosses the wire. The same
calls without the routes are measured side by side in the same boot. SCTP through the
ClusterIP delivers every message, IPv4 and IPv6, with 0 checksum errors at the server, because
the sidecar turned `tx-checksum-sctp` off on the client pod's eth0 (docs/services.md, "SCTP and
checksum offload"); SCTP straight to the pod through the same SA is the control.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.interop.harness.netns import Topology
from tests.vm.netns_guest import Capture, Netns
from tests.vm.test_services_vm import (
    CLIENT4,
    CLIENT6,
    CLUSTER4,
    CLUSTER6,
    SERVER4,
    SERVER6,
    routed,
    start_client_and_server,
)
from tests.vm.test_services_vm import SERVICE as ECHO_SERVICE
from tests.vm.test_sidecar_vm import plaintext_between

pytestmark = pytest.mark.vm

SIZES = {CLUSTER4: range(1400, 1473), CLUSTER6: range(1380, 1453)}

# The echo Service's ClusterIPs and endpoints, with a UDP and an SCTP port.
SERVICE = dict(ECHO_SERVICE, name="datagrams",
               ports=[dict(ECHO_SERVICE["ports"][0], name=proto.lower(), protocol=proto) for proto in ("UDP", "SCTP")])

# Each datagram or message is answered with its length and digest, so "arrived intact" is checked
# by the client against what it sent.
DIGEST_SERVER = """
import hashlib, socket, threading, time
def answer(data):
    return f"{len(data)} {hashlib.sha256(data).hexdigest()[:16]}".encode()
def udp(family, address):
    s = socket.socket(family, socket.SOCK_DGRAM); s.bind((address, 8080))
    while True:
        data, peer = s.recvfrom(65536); s.sendto(answer(data), peer)
def sctp_conversation(c):
    with c:
        while data := c.recv(65536):  # one message per recv (SCTP keeps message boundaries)
            c.sendall(answer(data))
def sctp(family, address):
    s = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((address, 8080)); s.listen(8)
    while True:
        c, _ = s.accept(); threading.Thread(target=sctp_conversation, args=(c,), daemon=True).start()
for family, address in ((socket.AF_INET, %r), (socket.AF_INET6, %r)):
    for serve in (udp, sctp):
        threading.Thread(target=serve, args=(family, address), daemon=True).start()
print("up", flush=True)
time.sleep(600)
""" % (SERVER4, SERVER6)

SIZES_CLIENT = """
import errno, hashlib, json, os, socket, sys, time
kind, address, low, high = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
v6 = ":" in address
family = socket.AF_INET6 if v6 else socket.AF_INET
level = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
MTU, MTU_DISCOVER, PMTUDISC_DO = (24, 23, 2) if v6 else (14, 10, 2)  # linux/in6.h, linux/in.h
sent, got, refused, errors = {}, {}, [], []
def digest(data):
    return hashlib.sha256(data).hexdigest()[:16]
if kind.startswith("udp"):
    s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout(5)
    if kind == "udp-do":  # as QUIC stacks do: never fragment, learn the MTU instead
        s.setsockopt(level, MTU_DISCOVER, PMTUDISC_DO)
    s.connect((address, 80))
    for attempt in range(20):  # the first datagrams wait for IKE (a send may block until the SA is there)
        try:
            s.send(b"hello"); s.recv(200); break
        except socket.timeout:
            continue
    else:
        raise SystemExit("no UDP answer")
    route_mtu = s.getsockopt(level, MTU)
    for size in range(low, high + 1):  # each size once: a drop is a loss, not a retry
        data = os.urandom(size); sent[size] = digest(data)
        try:
            s.send(data)
        except OSError as exc:
            (refused if exc.errno == errno.EMSGSIZE else errors).append(size)
        time.sleep(0.01)
    s.settimeout(0.5); deadline = time.monotonic() + 10
    while len(got) < len(sent) - len(refused) - len(errors) and time.monotonic() < deadline:
        try:
            size, value = s.recv(200).decode().split()
        except (socket.timeout, ConnectionRefusedError):
            continue
        got[int(size)] = value
else:
    s = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_SCTP); s.settimeout(10)
    s.connect((address, int(sys.argv[5]) if len(sys.argv) > 5 else 80))
    route_mtu = s.getsockopt(level, MTU)
    for size in list(range(low, high + 1)) + [4000]:
        data = os.urandom(size); sent[size] = digest(data)
        try:
            s.sendall(data)
            size_back, value = s.recv(200).decode().split()
            got[int(size_back)] = value
        except OSError as exc:
            errors.append(size)
            break
print(json.dumps({"route_mtu": route_mtu, "sent": len(sent), "refused": refused, "errors": errors,
                  "lost": sorted(n for n in sent if n not in got and n not in refused and n not in errors),
                  "corrupt": sorted(n for n in sent if n in got and got[n] != sent[n])}))
"""


def calls(client, kinds, targets) -> dict:
    """Run SIZES_CLIENT per kind and target; a failed run is a result too (rc and stderr)."""
    results = {}
    for kind in kinds:
        for address, sizes, *port in targets:
            done = client.run(client.python_argv("-c", SIZES_CLIENT, kind, address, str(sizes.start),
                                                 str(sizes.stop - 1), *port), check=False, timeout=120)
            results[(kind, address)] = json.loads(done.stdout) if done.returncode == 0 else {
                "failed": done.returncode, "stderr": done.stderr.strip().splitlines()[-1:]}
    return results


def test_udp_and_sctp_near_the_mtu_through_the_cluster_ip_arrive_intact_as_esp(tmp_path, capsys):
    from ipsec_mesh.svcnat.mtu import esp_inner_mtu
    from ipsec_mesh.svcnat.routes import RT_PROTO

    with Topology() as topo:
        client, node, server = routed(topo)
        sidecars = start_client_and_server(client, server, tmp_path, services=(SERVICE,))
        routes = sidecars[0].status()["dataplane"]["services"]["routes"]
        sctp_checksum = sidecars[0].status()["dataplane"]["services"]["sctp_checksum"]
        offload = client.run(["ethtool", "-k", "eth0"]).stdout
        sctp = client.run(["sh", "-c", "modprobe sctp && echo yes"], check=False).stdout.strip() == "yes"
        echo = server.popen(server.python_argv("-c", DIGEST_SERVER), stdout=subprocess.PIPE, text=True)
        assert echo.stdout.readline().strip() == "up"
        targets = [(cluster_ip, sizes) for cluster_ip, sizes in SIZES.items()]
        # Side by side: first without the routes (as before issue 11's fix), then with them.
        kept = [line for v in ("-4", "-6")
                for line in client.run(["ip", v, "route", "show", "proto", str(RT_PROTO)]).stdout.splitlines()]
        for v in ("-4", "-6"):
            client.run(["ip", v, "route", "flush", "proto", str(RT_PROTO)])
        without = calls(client, ("udp", "udp-do"), targets)
        for line in kept:
            client.run(["ip", "route", "add", *line.split()])
        with Capture(Netns(client.name), "eth0", tmp_path / "wire.pcap") as capture:
            results = calls(client, ("udp", "udp-do"), targets)
            through_cluster_ip = calls(client, ("sctp",), targets) if sctp else {}
        packets = capture.packets()
        # The control: SCTP straight to the server pod's address through the same SA.
        direct = calls(client, ("sctp",), [(SERVER4, range(1400, 1473), "8080")]) if sctp else {}
        checksum_errors = server.run(["sh", "-c", "grep -i checksum /proc/net/sctp/snmp"], check=False).stdout.split()
        with capsys.disabled():  # the figures reach the VM's console log
            for label, measured in (("without routes", without), ("with routes", results),
                                    ("with routes", through_cluster_ip), ("direct to the pod", direct)):
                for (kind, address), result in measured.items():
                    print(f"\n[measure] {label}: {kind} to {address}: {result}")
            print(f"\n[measure] server SCTP checksum errors: {checksum_errors}")
            print(f"\n[measure] client sidecar sctp_checksum: {sctp_checksum}")
        assert sctp, "the VM kernel has no SCTP"
        # The sidecar turned SCTP's checksum offload off on the client pod's link, and says so from the kernel.
        assert sctp_checksum == {"devices": [{"dev": "eth0", "tx-checksum-sctp": "off", "wanted_off": True,
                                              "turned_off_by_sidecar": True}], "error": ""}, sctp_checksum
        assert "tx-checksum-sctp: off" in offload
        # SCTP through the ClusterIP: every message (1400..1472 and 4000 bytes; 1380..1452 over IPv6) intact.
        assert set(through_cluster_ip) == {("sctp", CLUSTER4), ("sctp", CLUSTER6)}, through_cluster_ip
        for (kind, cluster_ip), result in through_cluster_ip.items():
            assert "failed" not in result, (kind, cluster_ip, result)
            assert result["sent"] == len(SIZES[cluster_ip]) + 1, (cluster_ip, result)
            assert (result["lost"], result["corrupt"], result["errors"]) == ([], [], []), (cluster_ip, result)
        assert checksum_errors == ["SctpChecksumErrors", "0"], checksum_errors
        assert {(r["destination"], r["mtu"]) for r in routes} == {
            (f"{CLUSTER4}/32", esp_inner_mtu(1500, 4)), (f"{CLUSTER6}/128", esp_inner_mtu(1500, 6))}
        for (kind, cluster_ip), result in results.items():
            largest = esp_inner_mtu(1500, 6 if ":" in cluster_ip else 4) - (48 if ":" in cluster_ip else 28)
            assert "failed" not in result, (kind, cluster_ip, result)
            assert result["route_mtu"] == largest + (48 if ":" in cluster_ip else 28), (kind, cluster_ip)
            # Nothing is lost on the way: a datagram arrives intact, or (never fragment) its send is refused.
            assert (result["lost"], result["corrupt"], result["errors"]) == ([], [], []), (kind, cluster_ip, result)
            too_large = [n for n in SIZES[cluster_ip] if n > largest] if kind == "udp-do" else []
            assert result["refused"] == too_large, (kind, cluster_ip, result)
        # SCTP through the same SA, without the translation, fits its packets to the bundle's MTU.
        assert all("failed" not in r and r["lost"] == r["errors"] == r["corrupt"] == [] for r in direct.values()), direct
        for client_ip, server_ip in ((CLIENT4, SERVER4), (CLIENT6, SERVER6)):
            assert not plaintext_between(packets, client_ip, server_ip)
            assert any(p.is_esp for p in packets if {p.src, p.dst} == {client_ip, server_ip})
        assert not [p for p in packets if CLUSTER4 in (p.src, p.dst) or CLUSTER6 in (p.src, p.dst)]
