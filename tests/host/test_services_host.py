"""Pod-local Service translation on the host kernel (root): nftables DNAT before the XFRM lookup.

Three namespaces: a client pod, a "node" that routes and does kube-proxy-style DNAT of the
ClusterIP (as kube-proxy would), and a server pod with several endpoint addresses. The node
counts what arrives from the client's link, so a packet that leaves the pod in plaintext, or
addressed to the ClusterIP, is seen there. ESP itself needs the VM (tests/vm/test_services_vm.py).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ipsec_mesh.agent.config import IkeSettings, parse_agent_config
from ipsec_mesh.agent.dataplane import Acquire
from ipsec_mesh.agent.peers import PeerSet
from ipsec_mesh.agent.xfrm_dataplane import XfrmDataPlane
from ipsec_mesh.svcnat import ServiceTranslation
from ipsec_mesh_operator.netns import add_netns, add_veth, delete_netns, ip
from tests.support.netns import missing_prerequisite

CLUSTER4, CLUSTER6 = "10.96.0.10", "fd00:96::a"
CLIENT4, CLIENT6 = "10.98.1.2", "fd98:1::2"
SERVERS4 = ["10.98.2.2", "10.98.2.3", "10.98.2.4"]
SERVER6 = "fd98:2::2"
_counter = itertools.count()


def nft(netns: str, script: str) -> str:
    done = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=script, capture_output=True,
                          text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    return done.stdout


def nft_list(netns: str, *what: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "nft", *what], capture_output=True, text=True,
                          timeout=20).stdout


def counter(netns: str, table: str, name: str) -> int:
    text = nft_list(netns, "list", "counter", *table.split(), name)
    return int(text.split("packets ")[1].split()[0])


@dataclass
class Cluster:
    client: str
    node: str
    server: str

    def close(self) -> None:
        for name in (self.client, self.node, self.server):
            delete_netns(name)


def make_cluster() -> Cluster:
    n = next(_counter)
    tag = f"{os.getpid() % 100000}s{n}"
    c = Cluster(f"svcc{tag}", f"svcn{tag}", f"svcs{tag}")
    try:
        for name in (c.client, c.node, c.server):
            add_netns(name)
        add_veth(c.client, f"c{tag}", c.node, f"nc{tag}", up=False)  # up below, with the addresses
        add_veth(c.server, f"s{tag}", c.node, f"ns{tag}", up=False)
        links = ((c.client, f"c{tag}", [f"{CLIENT4}/24"], [f"{CLIENT6}/64"], "10.98.1.1", "fd98:1::1"),
                 (c.server, f"s{tag}", [f"{a}/24" for a in SERVERS4], [f"{SERVER6}/64"], "10.98.2.1", "fd98:2::1"),
                 (c.node, f"nc{tag}", ["10.98.1.1/24"], ["fd98:1::1/64"], None, None),
                 (c.node, f"ns{tag}", ["10.98.2.1/24"], ["fd98:2::1/64"], None, None))
        for name, dev, v4s, v6s, gw4, gw6 in links:
            ip("link", "set", dev, "up", netns=name)
            for address in v4s:
                ip("addr", "add", address, "dev", dev, netns=name)
            for address in v6s:
                ip("addr", "add", address, "dev", dev, "nodad", netns=name)
            if gw4:
                ip("route", "add", "default", "via", gw4, netns=name)
                ip("-6", "route", "add", "default", "via", gw6, netns=name)
        # Permanent neighbour entries: the kernel's ARP/ND tables are shared by all namespaces
        # (gc_thresh3, 1024 by default) and other test runs on the machine can fill them.
        macs = {(name, dev): json.loads(ip("-j", "link", "show", "dev", dev, netns=name))[0]["address"]
                for name, dev, *_ in links}
        for (name, dev), (peer, peer_dev), addresses in (
                ((c.client, f"c{tag}"), (c.node, f"nc{tag}"), ["10.98.1.1", "fd98:1::1"]),
                ((c.node, f"nc{tag}"), (c.client, f"c{tag}"), [CLIENT4, CLIENT6]),
                ((c.server, f"s{tag}"), (c.node, f"ns{tag}"), ["10.98.2.1", "fd98:2::1"]),
                ((c.node, f"ns{tag}"), (c.server, f"s{tag}"), [*SERVERS4, SERVER6])):
            for address in addresses:
                ip("neigh", "replace", address, "lladdr", macs[(peer, peer_dev)], "dev", dev, "nud", "permanent",
                   netns=name)
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            subprocess.run(["ip", "netns", "exec", c.node, "sysctl", "-qw", key], check=True, timeout=10)
        # kube-proxy's part on the node, and probes of what arrives from the client pod.
        nft(c.node, f"""
table inet kubeproxy {{
  counter dnat4 {{ }}
  counter dnat6 {{ }}
  chain pre {{ type nat hook prerouting priority -100;
    ip daddr {CLUSTER4} meta l4proto {{ tcp, udp }} th dport 80 counter name dnat4 dnat ip to {SERVERS4[0]}:8080
    ip6 daddr {CLUSTER6} meta l4proto {{ tcp, udp }} th dport 80 counter name dnat6 dnat ip6 to [{SERVER6}]:8080
  }}
}}
table inet probe {{
  counter plaintext {{ }}
  counter to_cluster_ip {{ }}
  counter to_endpoint {{ }}
  chain pre {{ type filter hook prerouting priority -300;
    iifname "nc{tag}" meta l4proto {{ tcp, udp, sctp }} counter name plaintext
    iifname "nc{tag}" ip daddr {CLUSTER4} counter name to_cluster_ip
    iifname "nc{tag}" ip6 daddr {CLUSTER6} counter name to_cluster_ip
    iifname "nc{tag}" ip daddr {{ {", ".join(SERVERS4)} }} udp dport 8080 counter name to_endpoint
  }}
}}
""")
    except Exception:
        c.close()
        raise
    return c


@pytest.fixture
def cluster():
    reason = missing_prerequisite()
    if reason:
        pytest.skip(reason)
    c = make_cluster()
    yield c
    c.close()


def service_doc(endpoints: list[str], *, peer: bool, affinity: str = "None", v6: bool = True) -> dict:
    eps = [{"address": a, "port": 8080, "peer": peer} for a in endpoints]
    if v6:
        eps.append({"address": SERVER6, "port": 8080, "peer": peer})
    return {"namespace": "shop", "name": "db", "clusterIPs": [CLUSTER4, CLUSTER6] if v6 else [CLUSTER4],
            "sessionAffinity": affinity, "sessionAffinityTimeoutSeconds": 600,
            "ports": [{"name": "tcp", "protocol": "TCP", "port": 80, "endpoints": eps},
                      {"name": "udp", "protocol": "UDP", "port": 80, "endpoints": eps}]}


def peer_set(services: list[dict]) -> PeerSet:
    return PeerSet(parse_agent_config(peer_document(services), Path(".")).peer_map, IkeSettings())


def peer_document(services: list[dict]) -> dict:
    """The client's `run` configuration with these Services in its peer map."""
    return {
        "peerMap": {
            "local": {"identity": "client.shop.pod.mesh.test", "addresses": [CLIENT4, CLIENT6]},
            "peerings": [{"name": "p", "authentication": "psk", "psk": [{"id": "k", "value": "cA" * 22}],
                          "peers": [{"name": "server", "addresses": [SERVERS4[0], SERVER6],
                                     "identities": ["server.mesh.test"]}]}],
            "services": services,
        },
        "dataplane": "xfrm",
    }


def run_in(netns: str, code: str, *args: str, timeout: float = 60) -> str:
    done = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


CONNECT = """
import socket, sys
for address in sys.argv[1:]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect((address, 80))
    except OSError:
        pass
    s.close()
"""


def acquires(plane, seconds: float = 5.0) -> set[str]:
    deadline, seen = time.monotonic() + seconds, set()
    while time.monotonic() < deadline and len(seen) < 2:
        seen |= {e.remote for e in plane.read_events() if isinstance(e, Acquire)}
        time.sleep(0.05)
    return seen


def test_a_cluster_ip_call_becomes_an_acquire_for_the_endpoint_and_never_plaintext(cluster):
    plane = XfrmDataPlane(netns=cluster.client)
    without = peer_set([])
    plane.start(without)
    try:
        # As before this change: the call leaves the pod in plaintext, to the ClusterIP, and the
        # node's kube-proxy DNAT takes it to the server (the leak this feature closes).
        run_in(cluster.client, CONNECT, CLUSTER4, CLUSTER6)
        leaked = counter(cluster.node, "inet probe", "plaintext")
        assert leaked > 0 and counter(cluster.node, "inet probe", "to_cluster_ip") > 0
        assert counter(cluster.node, "inet kubeproxy", "dnat4") > 0
        plane.read_events()

        with_services = peer_set([service_doc([SERVERS4[0]], peer=True)])
        plane.update_peers(without, with_services)
        assert plane.not_ready_reason() is None
        assert plane.status()["services"]["services"] == 1
        run_in(cluster.client, CONNECT, CLUSTER4, CLUSTER6)
        # The kernel asks for an SA with the endpoint's pod IP, in both families ...
        assert acquires(plane) == {SERVERS4[0], SERVER6}
        # ... and not one more packet left the pod unencrypted.
        assert counter(cluster.node, "inet probe", "plaintext") == leaked
        assert counter(cluster.client, "inet ipsec_mesh_svc", "untranslated") == 0
    finally:
        plane.stop()
    # Stopping keeps the translation (fail closed, like the policies).
    assert "svc4" in nft_list(cluster.client, "list", "table", "inet", "ipsec_mesh_svc")


HAMMER = """
import socket, sys, time
count, deadline, sent = int(sys.argv[1]), time.monotonic() + float(sys.argv[2]), 0
for i in range(count):
    if time.monotonic() > deadline:
        break
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a new source port: a new conntrack entry
    sent += 1  # an attempt: one rejected in the pod fails with an error
    try:
        s.sendto(b"x", ("%s", 80))
    except OSError:
        pass
    s.close()
print(sent)
""" % CLUSTER4

#: New flows pushed through endpoint changes: the earlier layout rejected about 1 in 50000.
FLOWS, FLOW_SECONDS = 100_000, 120


@pytest.mark.parametrize("affinity", ["None", "ClientIP"])
def test_endpoint_changes_swap_atomically_while_new_connections_keep_coming(cluster, affinity):
    # Between these states every service port has two or three endpoints, so each update replaces
    # a random choice among several (the case that rejected a new flow now and then).
    states = [SERVERS4[:2], SERVERS4[:3], SERVERS4[1:], SERVERS4[::2], SERVERS4[:1]]
    # Source ports are not reused while their conntrack entry lives: every datagram is a new flow.
    for key in ("net.ipv4.ip_local_port_range=1024 65535", "net.netfilter.nf_conntrack_udp_timeout=1"):
        subprocess.run(["ip", "netns", "exec", cluster.client, "sysctl", "-qw", key], check=True, timeout=10)
    translation = ServiceTranslation(netns=cluster.client)
    # With ClientIP every flow comes from the pod's one address: each removal empties the port's
    # affinity map while the flows keep coming (they then stick to the endpoint picked next).
    doc = lambda state: service_doc(state, peer=False, affinity=affinity)  # noqa: E731
    assert translation.apply(tuple(peer_set([doc(states[0])]).peer_map.services))
    hammer = subprocess.Popen(["ip", "netns", "exec", cluster.client, sys.executable, "-c", HAMMER, str(FLOWS),
                               str(FLOW_SECONDS)], stdout=subprocess.PIPE, text=True)
    updates = 0
    try:
        while hammer.poll() is None and updates < 5000:
            if updates % 10 == 9:  # now and then a restarted sidecar: a new instance takes over the table
                translation.close()
                translation = ServiceTranslation(netns=cluster.client)
            services = peer_set([doc(states[updates % len(states)])]).peer_map.services
            assert translation.apply(tuple(services)), translation.last_error
            updates += 1
        sent = int(hammer.communicate(timeout=FLOW_SECONDS + 30)[0])
    finally:
        if hammer.poll() is None:
            hammer.kill()
        translation.close()
    assert updates >= 20 and sent > FLOWS // 2
    # No datagram reached the node addressed to the ClusterIP, and none was rejected in the pod:
    # every new flow found a DNAT, whatever the commit it met.
    assert counter(cluster.node, "inet probe", "to_cluster_ip") == 0
    rejected = counter(cluster.client, "inet ipsec_mesh_svc", "untranslated")
    print(f"{sent} new flows, {updates} updates, {rejected} rejected")
    assert (rejected, counter(cluster.node, "inet probe", "to_endpoint")) == (0, sent)
    assert counter(cluster.node, "inet kubeproxy", "dnat4") == 0
    # The last state is in force (restarts left no endpoint of an earlier state behind).
    table = nft_list(cluster.client, "list", "table", "inet", "ipsec_mesh_svc")
    last = states[(updates - 1) % len(states)]
    assert all(a in table for a in last)
    if affinity == "ClientIP":  # the client's entry, if any, leads to an endpoint in force
        maps = [block.split("\n\t}")[0] for block in table.split("\tmap aff_")[1:]]
        recorded = {a for a in SERVERS4 for block in maps if f": {a} . 8080" in block}
        assert recorded <= set(last), (recorded, last)


SERVE = """
import socket, sys, time, threading
deadline = time.monotonic() + float(sys.argv[1])
def serve(endpoint):
    address, _, port = endpoint.partition(",")  # "address" (port 8080) or "address,port"
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, int(port or 8080))); s.listen(64); s.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            c, peer = s.accept()
        except OSError:
            continue
        c.sendall(f"{endpoint} {peer[0]}".encode()); c.close()
for a in sys.argv[2:]:
    threading.Thread(target=serve, args=(a,), daemon=True).start()
print("up", flush=True)
time.sleep(max(0.0, deadline - time.monotonic()))
"""

CALLS = """
import socket, sys
for address in sys.argv[2:]:
    for _ in range(int(sys.argv[1])):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        s = socket.create_connection((address, 80), timeout=5)
        answer = s.recv(200).decode()
        print(s.getpeername()[0], answer)
        s.close()
"""


def test_replies_come_from_the_cluster_ip_and_client_ip_affinity_sticks(cluster):
    server = subprocess.Popen(["ip", "netns", "exec", cluster.server, sys.executable, "-c", SERVE, "60",
                               *SERVERS4, SERVER6], stdout=subprocess.PIPE, text=True)
    translation = ServiceTranslation(netns=cluster.client)
    try:
        assert server.stdout.readline().strip() == "up"
        for affinity in ("None", "ClientIP"):
            services = peer_set([service_doc(SERVERS4, peer=False, affinity=affinity)]).peer_map.services
            assert translation.apply(tuple(services))
            lines = run_in(cluster.client, CALLS, "30", CLUSTER4, CLUSTER6).split()
            rows = list(zip(lines[0::3], lines[1::3], lines[2::3], strict=True))
            assert len(rows) == 60
            # The socket talks to the ClusterIP; the server saw the pod's own address (no SNAT anywhere).
            assert {peer for peer, _, _ in rows} == {CLUSTER4, CLUSTER6}
            assert {client for _, _, client in rows} == {CLIENT4, CLIENT6}
            served4 = {endpoint for peer, endpoint, _ in rows if peer == CLUSTER4}
            assert served4 <= set(SERVERS4)
            if affinity == "ClientIP":
                assert len(served4) == 1  # 30 calls, one endpoint
            else:
                assert len(served4) >= 2  # all 30 on one of three: probability 3**-29
        # kube-proxy's DNAT on the node never saw a ClusterIP: the pod translated every call.
        assert counter(cluster.node, "inet kubeproxy", "dnat4") == 0
        assert counter(cluster.node, "inet kubeproxy", "dnat6") == 0
    finally:
        translation.close()
        server.kill()
        server.wait()


def test_a_restarted_sidecar_reads_back_the_lookup_elements_and_leaves_them_alone(cluster):
    from ipsec_mesh.svcnat import Nft, changes, render

    services = tuple(peer_set([service_doc(SERVERS4[:2], peer=False)]).peer_map.services)
    first = ServiceTranslation(netns=cluster.client)
    assert first.apply(services)
    first.close()
    nft = Nft(cluster.client)
    try:
        kernel = nft.objects()
    finally:
        nft.close()
    want = render(services, kernel)
    # Both families, both protocols, as the kernel lists them: equal to what the translation wrote ...
    filled = {name: items for name, items in kernel.elements.items() if items}
    assert filled == {name: items for name, items in want.elements.items() if items}
    assert len(kernel.elements["svc4"]) == len(kernel.elements["svc6"]) == 2 and len(kernel.elements["ep4tcp"]) == 2
    assert kernel.chains == frozenset(want.chains)
    # ... so the next instance's first batch rewrites only the base chains' rules: no element, no other chain.
    (script,) = changes(want, kernel)
    assert "element" not in script and "flush table" not in script and "chain pick_" not in script


def test_client_ip_affinity_survives_additions_and_never_returns_to_a_removed_endpoint(cluster):
    server = subprocess.Popen(["ip", "netns", "exec", cluster.server, sys.executable, "-c", SERVE, "120",
                               *SERVERS4], stdout=subprocess.PIPE, text=True)
    translation = ServiceTranslation(netns=cluster.client)

    def served(endpoints: list[str], calls: int, timeout: int = 600) -> list[str]:
        doc = service_doc(endpoints, peer=False, affinity="ClientIP", v6=False)
        doc["sessionAffinityTimeoutSeconds"] = timeout
        assert translation.apply(tuple(peer_set([doc]).peer_map.services)), translation.last_error
        return run_in(cluster.client, CALLS, str(calls), CLUSTER4).split()[1::3]

    try:
        assert server.stdout.readline().strip() == "up"
        (first,) = set(served(SERVERS4, 30))  # 30 new connections, one endpoint
        rest = [a for a in SERVERS4 if a != first]
        # Its endpoint removed: the pod picks again among the others, never the removed one, and sticks.
        (second,) = set(served(rest, 30))
        assert second != first
        # An endpoint added (the removed one back): the clients stay where they are.
        assert set(served(SERVERS4, 30)) == {second}
        # The affinity map holds one entry (this pod's address), to the endpoint in force.
        table = nft_list(cluster.client, "list", "table", "inet", "ipsec_mesh_svc")
        assert f"{CLIENT4} expires" in table and f": {second} . 8080" in table
        # After the timeout passes without a new connection the choice is random again: one call
        # per round, 1.5 s apart, over three endpoints (all rounds on one endpoint: 3**-7).
        chosen = set()
        for _ in range(8):
            chosen |= set(served(SERVERS4, 1, timeout=1))
            time.sleep(1.5)
        assert len(chosen) >= 2
    finally:
        translation.close()
        server.kill()
        server.wait()


def test_ipv6_client_ip_affinity_sticks_across_endpoints_on_different_ports(cluster):
    """IPv6 endpoints listening on different ports: affinity holds, and a removed endpoint is not chosen again."""
    tag = cluster.node.removeprefix("svcn")
    servers = [SERVER6, "fd98:2::3", "fd98:2::4"]
    mac = json.loads(ip("-j", "link", "show", "dev", f"s{tag}", netns=cluster.server))[0]["address"]
    for address in servers[1:]:
        ip("addr", "add", f"{address}/64", "dev", f"s{tag}", "nodad", netns=cluster.server)
        ip("neigh", "replace", address, "lladdr", mac, "dev", f"ns{tag}", "nud", "permanent", netns=cluster.node)
    endpoints = [f"{address},{8080 + n}" for n, address in enumerate(servers)]
    server = subprocess.Popen(["ip", "netns", "exec", cluster.server, sys.executable, "-c", SERVE, "120", *endpoints],
                              stdout=subprocess.PIPE, text=True)
    translation = ServiceTranslation(netns=cluster.client)

    def served(chosen: list[str], calls: int, timeout: int = 600) -> list[str]:
        eps = [{"address": e.split(",")[0], "port": int(e.split(",")[1]), "peer": False} for e in chosen]
        doc = {"namespace": "shop", "name": "db", "clusterIPs": [CLUSTER6], "sessionAffinity": "ClientIP",
               "sessionAffinityTimeoutSeconds": timeout,
               "ports": [{"name": "tcp", "protocol": "TCP", "port": 80, "endpoints": eps}]}
        assert translation.apply(tuple(peer_set([doc]).peer_map.services)), translation.last_error
        assert "note" not in translation.status()["per_service"]["shop/db"]  # affinity applied, nothing to say
        return run_in(cluster.client, CALLS, str(calls), CLUSTER6).split()[1::3]

    try:
        assert server.stdout.readline().strip() == "up"
        (first,) = set(served(endpoints, 30))  # 30 new connections, one endpoint (address and its port)
        rest = [e for e in endpoints if e != first]
        (second,) = set(served(rest, 30))  # its endpoint removed: picked again, never the removed one
        assert second != first
        assert set(served(endpoints, 30)) == {second}  # the removed one back: the client stays
        chosen = set()
        for _ in range(8):  # after the timeout passes without a new connection the choice is random again
            chosen |= set(served(endpoints, 1, timeout=1))
            time.sleep(1.5)
        assert len(chosen) >= 2 and chosen <= set(endpoints)
        assert counter(cluster.node, "inet kubeproxy", "dnat6") == 0
    finally:
        translation.close()
        server.kill()
        server.wait()


MAXSEG = """
import socket, sys
for address, port in zip(sys.argv[1::2], sys.argv[2::2]):
    s = socket.create_connection((address, int(port)), timeout=5)
    s.recv(200)
    print(address, s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG))
    s.close()
"""


def test_the_client_socket_of_a_translated_connection_leaves_room_for_esp(cluster):
    """The SYN-ACK's MSS option is rewritten in the pod: the socket's segments fit the ESP packet."""
    from ipsec_mesh.svcnat.mtu import mss_clamp

    server = subprocess.Popen(["ip", "netns", "exec", cluster.server, sys.executable, "-c", SERVE, "30",
                               SERVERS4[0], SERVER6], stdout=subprocess.PIPE, text=True)
    translation = ServiceTranslation(netns=cluster.client)
    try:
        assert server.stdout.readline().strip() == "up"
        services = peer_set([service_doc(SERVERS4[:1], peer=False)]).peer_map.services
        assert translation.apply(tuple(services))
        seen = dict(line.split() for line in run_in(cluster.client, MAXSEG, CLUSTER4, "80", CLUSTER6, "80",
                                                    SERVERS4[0], "8080", SERVER6, "8080").splitlines())
        # The veths' MTU is 1500; timestamps take 12 bytes of each segment's MSS.
        assert int(seen[SERVERS4[0]]) == 1500 - 40 - 12 and int(seen[SERVER6]) == 1500 - 60 - 12  # untouched
        assert int(seen[CLUSTER4]) == mss_clamp(1500, 4) - 12 == 1406
        assert int(seen[CLUSTER6]) == mss_clamp(1500, 6) - 12 == 1386
        assert translation.status()["mss_clamp"] == {"ipv4": 1418, "ipv6": 1398}
    finally:
        translation.close()
        server.kill()
        server.wait()


def test_route_mtus_are_read_again_only_for_new_addresses_or_after_a_route_change(cluster, monkeypatch):
    """The MSS clamp's route MTU reads do not grow with unchanged endpoints, and follow a link's MTU."""
    from ipsec_mesh.svcnat import nft as nft_module
    from ipsec_mesh.svcnat.mtu import mss_clamp, route_mtus

    reads = []

    def counted(addresses):
        asked = list(addresses)
        reads.extend(asked)
        return route_mtus(asked)

    monkeypatch.setattr(nft_module, "route_mtus", counted)
    translation = ServiceTranslation(netns=cluster.client)
    try:
        apply = lambda endpoints: translation.apply(tuple(peer_set([service_doc(endpoints, peer=False)]).peer_map.services))
        # Endpoints only (2 + 1): the ClusterIPs' routes are the translation's own, and adding
        # them is no route change that could alter an endpoint's path.
        assert apply(SERVERS4[:2]) and len(reads) == 3
        assert apply(SERVERS4[1:]) and reads[3:] == [ipaddress.ip_address(SERVERS4[2])]  # only the new one
        assert apply(SERVERS4[1:]) and len(reads) == 4
        ip("link", "set", "dev", f"c{cluster.client[4:]}", "mtu", "1400", netns=cluster.client)
        assert apply(SERVERS4[1:]) and len(reads) == 7  # the link changed: all read again
        assert translation.status()["mss_clamp"]["ipv4"] == mss_clamp(1400, 4)
    finally:
        translation.close()


def test_per_service_status_is_read_back_from_the_kernel(cluster):
    translation = ServiceTranslation(netns=cluster.client)
    try:
        assert translation.apply(tuple(peer_set([service_doc(SERVERS4[:2], peer=False)]).peer_map.services))
        assert translation.status()["per_service"]["shop/db"] == {"translated": True, "current": True, "error": ""}
        # Behind the sidecar's back: the Service's lookup elements go; its status says so.
        nft(cluster.client, "flush map inet ipsec_mesh_svc svc4\nflush map inet ipsec_mesh_svc svc6\n")
        status = translation.status()
        assert status["services"] == 0 and not status["per_service"]["shop/db"]["translated"]
    finally:
        translation.close()


def test_a_table_of_the_earlier_layout_is_taken_over_and_cleared(cluster):
    """An upgraded sidecar finds the per-endpoint chains and affinity sets of the earlier layout."""
    nft(cluster.client, f"""
table inet ipsec_mesh_svc {{
  map svc4 {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
  set aff_0123456789abcdef {{ type ipv4_addr; size 65535; flags dynamic,timeout; timeout 600s; }}
  chain ep_0123456789abcdef {{
    update @aff_0123456789abcdef {{ ip saddr }}
    meta l4proto tcp dnat ip to {SERVERS4[0]}:8080
  }}
  chain svc_0123456789abcdef {{
    ip saddr @aff_0123456789abcdef goto ep_0123456789abcdef
    numgen random mod 1 vmap {{ 0 : goto ep_0123456789abcdef }}
  }}
  chain nat_output {{ type nat hook output priority -100; policy accept; ip daddr . meta l4proto . th dport vmap @svc4; }}
}}
add element inet ipsec_mesh_svc svc4 {{ {CLUSTER4} . tcp . 80 : goto svc_0123456789abcdef }}
""")
    translation = ServiceTranslation(netns=cluster.client)
    try:
        for endpoints in (SERVERS4[1:], SERVERS4[:1]):  # the first batch takes over, the next clears
            doc = service_doc(endpoints, peer=False, affinity="ClientIP")
            assert translation.apply(tuple(peer_set([doc]).peer_map.services)), translation.last_error
    finally:
        translation.close()
    table = nft_list(cluster.client, "list", "table", "inet", "ipsec_mesh_svc")
    assert "0123456789abcdef" not in table and f"{CLUSTER4} . tcp . 80 : goto pick_" in table


def test_route_mtus_read_every_address_with_one_socket_per_family_and_a_fresh_one_after_no_route(cluster):
    """Routed and unrouted addresses of both families mixed: each gets its own route's MTU, or None."""
    ip("link", "set", "dev", f"nc{cluster.client[4:]}", "mtu", "1400", netns=cluster.node)
    asked = ["10.98.1.7", "203.0.113.7", "10.98.2.7", "fd98:1::7", "2001:db8::7", "fd98:2::7", "10.98.1.8"]
    script = ("import ipaddress, json, sys\nfrom ipsec_mesh.svcnat.mtu import route_mtu, route_mtus\n"
              "addresses = [ipaddress.ip_address(a) for a in sys.argv[1:]]\n"
              "print(json.dumps([[str(a), m] for a, m in route_mtus(addresses).items()]"
              " + [[str(a), route_mtu(a)] for a in addresses]))\n")
    out = subprocess.run(["ip", "netns", "exec", cluster.node, sys.executable, "-c", script, *asked],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    together, one_by_one = json.loads(out)[:len(asked)], json.loads(out)[len(asked):]
    expected = {"10.98.1.7": 1400, "203.0.113.7": None, "10.98.2.7": 1500, "fd98:1::7": 1400,
                "2001:db8::7": None, "fd98:2::7": 1500, "10.98.1.8": 1400}
    assert dict(together) == expected and dict(one_by_one) == expected


# A sidecar in its own namespace (a fresh interpreter: the test process has loaded svcnat long ago): started
# with no Service, then given one. What it loaded at each step, its status, and what it wrote.
ON_DEMAND = """
import json, sys
from pathlib import Path
from ipsec_mesh.agent.config import IkeSettings, parse_agent_config
from ipsec_mesh.agent.peers import PeerSet
from ipsec_mesh.agent.xfrm_dataplane import XfrmDataPlane

def peers(document):
    return PeerSet(parse_agent_config(json.loads(document), Path(".")).peer_map, IkeSettings())

def translation_modules():
    return sorted(m for m in sys.modules if m in ("ipsec_mesh.svcnat.translation", "ipsec_mesh.svcnat.nft",
                                                  "ipsec_mesh.svcnat.ruleset", "nftables", "ctypes"))

without, with_service = peers(sys.argv[1]), peers(sys.argv[2])
plane = XfrmDataPlane()
plane.start(without)
report = {"started": translation_modules(), "idle": plane.status()["services"],
          "ready": plane.not_ready_reason()}
import subprocess  # after the modules were read: the sidecar itself never imports it
report["tables"] = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
plane.update_peers(without, with_service)
report.update(updated=translation_modules(), status=plane.status()["services"], ready_after=plane.not_ready_reason())
plane.stop()
print(json.dumps(report))
"""


def test_a_pod_without_services_loads_no_translation_until_a_service_arrives_which_is_then_translated(cluster):
    from ipsec_mesh.svcnat.ondemand import idle_status

    service = service_doc([SERVERS4[0]], peer=True)
    report = json.loads(run_in(cluster.client, ON_DEMAND, json.dumps(peer_document([])),
                               json.dumps(peer_document([service]))))
    assert report["started"] == [] and report["ready"] is None
    assert report["idle"] == idle_status()
    assert report["tables"] == ""  # it wrote nothing either
    assert report["updated"] == ["ctypes", "ipsec_mesh.svcnat.nft", "ipsec_mesh.svcnat.ruleset",
                                 "ipsec_mesh.svcnat.translation", "nftables"]
    assert report["status"]["services"] == 1 and report["ready_after"] is None
    # The table the kernel holds translates the ClusterIP (both families) to the endpoint, as before.
    run_in(cluster.client, CONNECT, CLUSTER4, CLUSTER6)
    assert counter(cluster.client, "inet ipsec_mesh_svc", "untranslated") == 0
    assert counter(cluster.node, "inet probe", "to_cluster_ip") == 0


def test_the_idle_status_is_what_the_translation_reports_for_a_namespace_without_any(cluster):
    from ipsec_mesh.svcnat.ondemand import idle_status

    translation = ServiceTranslation(netns=cluster.server)
    try:
        assert translation.apply(())
        assert translation.status() == idle_status()
    finally:
        translation.close()


@pytest.mark.parametrize("left", ["table", "route"])
def test_what_an_earlier_instance_left_is_cleared_at_start_even_with_no_service_in_the_map(cluster, left):
    """The translation loads at start when the kernel holds its table or a ClusterIP route, and clears them."""
    from ipsec_mesh.svcnat.presence import RT_PROTO

    if left == "table":
        earlier = ServiceTranslation(netns=cluster.client)
        assert earlier.apply(tuple(peer_set([service_doc([SERVERS4[0]], peer=True)]).peer_map.services))
        earlier.close()
        listed_before = nft_list(cluster.client, "list", "map", "inet", "ipsec_mesh_svc", "svc4")
        assert "elements" in listed_before
    else:
        ip("route", "add", "10.96.0.99/32", "via", "10.98.1.1", "proto", str(RT_PROTO), netns=cluster.client)
    plane = XfrmDataPlane(netns=cluster.client)
    plane.start(peer_set([]))
    try:
        assert plane.services.translation is not None
        assert plane.status()["services"]["services"] == 0
    finally:
        plane.stop()
    assert ip("route", "show", "proto", str(RT_PROTO), netns=cluster.client).strip() == ""
    # Nothing is translated any more: the lookup maps are empty (endpoint indexes retire a batch later).
    for lookup in ("svc4", "svc6"):
        assert "elements" not in nft_list(cluster.client, "list", "map", "inet", "ipsec_mesh_svc", lookup)
