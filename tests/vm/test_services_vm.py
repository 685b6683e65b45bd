"""Service calls through the mesh with real ESP (VM tier): the pod translates the ClusterIP.

client pod -- node (routes; kube-proxy-style DNAT of the ClusterIP) -- server pod, each pod with
a real sidecar (`ipsec-mesh-sidecar run`, XFRM data plane). The client's peer map lists the
Service; TCP and UDP calls to the ClusterIP, IPv4 and IPv6, must be answered, the answers must
reach the client's socket from the ClusterIP (the pod's conntrack undoes the DNAT after ESP
decapsulation), and the wire between the pods must carry only ESP (and IKE).
"""

from __future__ import annotations

import pytest

from tests.interop.harness.netns import Topology
from tests.interop.harness.sidecar import Sidecar
from tests.vm.netns_guest import Capture, Netns
from tests.vm.test_sidecar_vm import PSK, START, WAIT, plaintext_between

pytestmark = pytest.mark.vm

CLUSTER4, CLUSTER6 = "10.96.0.10", "fd00:96::a"
CLIENT4, CLIENT6 = "10.98.1.2", "fd98:1::2"
SERVER4, SERVER6 = "10.98.2.2", "fd98:2::2"
CLIENT_ID, SERVER_ID = "client.shop.pod.mesh.test", "server.shop.pod.mesh.test"


def routed(topo: Topology):
    client, node, server = (topo.namespace(role) for role in ("client", "node", "server"))
    topo.link(client, "eth0", node, "toclient")
    topo.link(node, "toserver", server, "eth0")
    for ns, dev, cidrs in ((client, "eth0", (f"{CLIENT4}/24", f"{CLIENT6}/64")),
                           (node, "toclient", ("10.98.1.1/24", "fd98:1::1/64")),
                           (node, "toserver", ("10.98.2.1/24", "fd98:2::1/64")),
                           (server, "eth0", (f"{SERVER4}/24", f"{SERVER6}/64"))):
        for cidr in cidrs:
            topo.address(ns, dev, cidr)
    for ns, gw4, gw6 in ((client, "10.98.1.1", "fd98:1::1"), (server, "10.98.2.1", "fd98:2::1")):
        ns.run(["ip", "route", "add", "default", "via", gw4])
        ns.run(["ip", "-6", "route", "add", "default", "via", gw6])
    node.run(["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
    node.run(["nft", "-f", "-"], input=f"""
table inet kubeproxy {{
  counter kp_dnat {{ }}
  chain pre {{ type nat hook prerouting priority -100;
    ip daddr {CLUSTER4} meta l4proto {{ tcp, udp }} th dport 80 counter name kp_dnat dnat ip to {SERVER4}:8080
    ip6 daddr {CLUSTER6} meta l4proto {{ tcp, udp }} th dport 80 counter name kp_dnat dnat ip6 to [{SERVER6}]:8080
  }}
}}
""")
    return client, node, server


SERVICE = {
    "namespace": "shop", "name": "echo", "clusterIPs": [CLUSTER4, CLUSTER6],
    "ports": [{"name": proto.lower(), "protocol": proto, "port": 80,
               "endpoints": [{"address": SERVER4, "port": 8080, "peer": True},
                             {"address": SERVER6, "port": 8080, "peer": True}]}
              for proto in ("TCP", "UDP")],
}

ECHO = """
import socket, threading, time
def tcp(family, address):
    s = socket.socket(family, socket.SOCK_STREAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, 8080)); s.listen(16)
    while True:
        c, peer = s.accept(); data = c.recv(100); c.sendall(data + f" via {address} from {peer[0]}".encode()); c.close()
def udp(family, address):
    s = socket.socket(family, socket.SOCK_DGRAM); s.bind((address, 8080))
    while True:
        data, peer = s.recvfrom(100); s.sendto(data + f" via {address} from {peer[0]}".encode(), peer)
for family, address in ((socket.AF_INET, "%s"), (socket.AF_INET6, "%s")):
    for serve in (tcp, udp):
        threading.Thread(target=serve, args=(family, address), daemon=True).start()
print("up", flush=True)
time.sleep(900)
""" % (SERVER4, SERVER6)

CALL = """
import socket, sys
kind, address = sys.argv[1], sys.argv[2]
family = socket.AF_INET6 if ":" in address else socket.AF_INET
if kind == "tcp":
    s = socket.create_connection((address, 80), timeout=60)
    s.sendall(b"hello"); answer = s.recv(200); peer = s.getpeername()[0]
else:
    s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout(3)
    for attempt in range(20):  # the first datagrams wait for IKE (held, or dropped while larval)
        s.sendto(b"hello", (address, 80))
        try:
            answer, source = s.recvfrom(200); peer = source[0]; break
        except socket.timeout:
            continue
    else:
        raise SystemExit("no UDP answer")
print(peer, answer.decode())
"""


def start_client_and_server(client, server, tmp_path, services: tuple[dict, ...] = (SERVICE,)) -> list[Sidecar]:
    """A ready sidecar in the client pod (its map lists `services`) and one in the server pod."""
    sidecars = [
        Sidecar(client, tmp_path, address=CLIENT4, addresses=(CLIENT6,), identity=CLIENT_ID,
                peer_address=f"{SERVER4}/32,{SERVER6}/128", peer_identity=SERVER_ID, psk=PSK,
                dataplane="xfrm", name="client", services=services),
        Sidecar(server, tmp_path, address=SERVER4, addresses=(SERVER6,), identity=SERVER_ID,
                peer_address=f"{CLIENT4}/32,{CLIENT6}/128", peer_identity=CLIENT_ID, psk=PSK,
                dataplane="xfrm", name="server"),
    ]
    for sidecar in sidecars:
        sidecar.launch()
    for sidecar in sidecars:
        sidecar.wait_ready(START)
    return sidecars


SINK = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((%r, 8080)); s.listen(1)
print("up", flush=True)
c, _ = s.accept(); c.settimeout(60); n = 0
while chunk := c.recv(65536):
    n += len(chunk)
print(n, flush=True)
""" % SERVER4

UPLOAD = """
import socket, sys
with socket.create_connection((sys.argv[1], 80), timeout=30) as s:
    s.sendall(b"x" * 262144)
"""


def test_a_large_upload_through_the_cluster_ip_arrives(tmp_path):
    with Topology() as topo:
        client, node, server = routed(topo)
        start_client_and_server(client, server, tmp_path)
        sink = server.popen(server.python_argv("-c", SINK), stdout=__import__("subprocess").PIPE, text=True)
        assert sink.stdout.readline().strip() == "up"
        upload = client.run(client.python_argv("-c", UPLOAD, CLUSTER4), check=False, timeout=120)
        assert upload.returncode == 0, upload.stderr[-500:]
        assert sink.stdout.readline().strip() == "262144"


def test_service_calls_through_the_cluster_ip_are_answered_and_only_esp_crosses(tmp_path):
    with Topology() as topo:
        client, node, server = routed(topo)
        sidecars = start_client_and_server(client, server, tmp_path)
        assert sidecars[0].status()["dataplane"]["services"]["services"] == 1
        echo = server.popen(server.python_argv("-c", ECHO), stdout=__import__("subprocess").PIPE, text=True)
        assert echo.stdout.readline().strip() == "up"
        answers = {}
        with Capture(Netns(client.name), "eth0", tmp_path / "wire.pcap") as capture:
            for kind in ("tcp", "udp"):
                for cluster_ip in (CLUSTER4, CLUSTER6):
                    done = client.run(client.python_argv("-c", CALL, kind, cluster_ip), timeout=240)
                    answers[(kind, cluster_ip)] = done.stdout.split()
        packets = capture.packets()
        for (kind, cluster_ip), words in answers.items():
            server_ip, client_ip = (SERVER4, CLIENT4) if ":" not in cluster_ip else (SERVER6, CLIENT6)
            # The answer reached the socket from the ClusterIP it called; the server saw the pod's address.
            assert words == [cluster_ip, "hello", "via", server_ip, "from", client_ip], (kind, words)
        for client_ip, server_ip in ((CLIENT4, SERVER4), (CLIENT6, SERVER6)):
            assert not plaintext_between(packets, client_ip, server_ip)
            assert any(p.is_esp for p in packets if {p.src, p.dst} == {client_ip, server_ip})
        assert not [p for p in packets if p.dst in (CLUSTER4, CLUSTER6) or p.src in (CLUSTER4, CLUSTER6)]
        dnat = node.run(["nft", "list", "counter", "inet", "kubeproxy", "kp_dnat"]).stdout
        assert "packets 0 " in dnat  # kube-proxy's rule never saw a ClusterIP: the pod translated all
        untranslated = client.run(["nft", "list", "counter", "inet", "ipsec_mesh_svc", "untranslated"]).stdout
        assert "packets 0 " in untranslated


# Endpoint scaling and a CHILD_SA rekey under a stream of Service calls. Three server pods (each its
# own sidecar and link to the node), all peers of the client. The sidecars run from their standalone
# config, which a running sidecar does not re-read; so the test drives the client pod's translation
# itself, with the sidecar's own class (svcnat.ServiceTranslation), as the data plane does on each
# new peer map. IKE, the policies and the SAs are the real sidecars' (ESP in the VM's kernel).
SERVERS4 = [SERVER4, "10.98.3.2", "10.98.4.2"]

PERSISTENT_ECHO = """
import socket, sys, threading, time
address = sys.argv[1]
def conversation(c):
    with c:
        while True:
            data = c.recv(100)
            if not data:
                return
            c.sendall(data + f" via {address}".encode())
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((address, 8080)); s.listen(64)
print("up", flush=True)
deadline = time.monotonic() + 900
while time.monotonic() < deadline:
    c, _ = s.accept()
    threading.Thread(target=conversation, args=(c,), daemon=True).start()
"""

STREAM = """
import socket, sys, time
count, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
ok, failed, served = 0, [], set()
for n in range(count):
    if time.monotonic() > deadline:
        break
    try:  # a new connection each time: a new translation
        with socket.create_connection((%r, 80), timeout=60) as s:
            s.sendall(b"call%%d" %% n)
            words = s.recv(200).decode().split()
        assert words[0] == "call%%d" %% n, words
        ok += 1
        served.add(words[-1])
    except (OSError, AssertionError) as exc:
        failed.append(f"{n}: {exc!r}")
    time.sleep(0.05)
print(ok, len(failed), ",".join(sorted(served)), "|", "; ".join(failed[:5]), flush=True)
""" % CLUSTER4

HELD = """
import socket, sys
s = socket.create_connection((%r, 80), timeout=120)
s.sendall(b"first"); print(s.recv(200).decode(), flush=True)
line = sys.stdin.readline().strip()
s.sendall(line.encode()); print(s.recv(200).decode(), flush=True)
s.close()
""" % CLUSTER4


def service_entries(addresses: list[str]):
    """The client's peer map entry for the Service with these endpoints."""
    import ipaddress

    from ipsec_mesh.meshapi.model import ServiceEndpoint, ServiceEntry, ServicePort, ServiceProtocol

    endpoints = tuple(ServiceEndpoint(ipaddress.ip_address(a), 8080, peer=True) for a in addresses)
    return (ServiceEntry("shop", "echo", (ipaddress.ip_address(CLUSTER4),),
                         (ServicePort("tcp", ServiceProtocol.TCP, 80, endpoints),)),)


def test_endpoint_scaling_and_a_child_sa_rekey_lose_no_service_call_and_leak_nothing(tmp_path, capsys):
    import subprocess
    import time

    from ipsec_mesh.svcnat import ServiceTranslation
    from tests.vm.test_sidecar_vm import metric

    with Topology() as topo:
        client, node, first = routed(topo)
        servers = [first]
        for n, address in enumerate(SERVERS4[1:], start=3):
            server = topo.namespace(f"server{n}")
            topo.link(node, f"toserver{n}", server, "eth0")
            topo.address(node, f"toserver{n}", f"10.98.{n}.1/24")
            topo.address(server, "eth0", f"{address}/24")
            server.run(["ip", "route", "add", "default", "via", f"10.98.{n}.1"])
            servers.append(server)
        lifetimes = {"child": "20s"}
        sidecars = [Sidecar(client, tmp_path, address=CLIENT4, identity=CLIENT_ID,
                            peer_address=",".join(f"{a}/32" for a in SERVERS4), peer_identity=SERVER_ID, psk=PSK,
                            dataplane="xfrm", name="client", lifetimes=lifetimes)]
        sidecars += [Sidecar(server, tmp_path, address=address, identity=SERVER_ID, peer_address=f"{CLIENT4}/32",
                             peer_identity=CLIENT_ID, psk=PSK, dataplane="xfrm", name=f"server-{address}",
                             lifetimes=lifetimes)
                     for server, address in zip(servers, SERVERS4, strict=True)]
        for sidecar in sidecars:
            sidecar.launch()
        for sidecar in sidecars:
            sidecar.wait_ready(START)
        echoes = [server.popen(server.python_argv("-c", PERSISTENT_ECHO, address), stdout=subprocess.PIPE, text=True)
                  for server, address in zip(servers, SERVERS4, strict=True)]
        for echo in echoes:
            assert echo.stdout.readline().strip() == "up"
        translation = ServiceTranslation(netns=client.name)
        try:
            with Capture(Netns(client.name), "eth0", tmp_path / "scale.pcap") as capture:
                # A long-lived connection through the ClusterIP, opened before any rekey ...
                assert translation.apply(service_entries(SERVERS4[:1])), translation.last_error
                held = client.popen(client.python_argv("-c", HELD), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True)
                assert held.stdout.readline().split()[:2] == ["first", "via"]
                rekeys = metric(sidecars[0], "ipsec_mesh_child_sa_rekeys_total")
                # ... then new connections while the Service scales 2 -> 1 -> 3 endpoints, again and again.
                stream = client.popen(client.python_argv("-c", STREAM, "400", "240"), stdout=subprocess.PIPE,
                                      text=True)
                states, updates = [SERVERS4[:2], SERVERS4[:1], SERVERS4], 0
                while stream.poll() is None and updates < 600:
                    assert translation.apply(service_entries(states[updates % 3])), translation.last_error
                    updates += 1
                    time.sleep(0.3)
                ok, failed, served, _, errors = (stream.communicate(timeout=300)[0].split(" ", 4) + [""])[:5]
                # ... and the connection opened before the rekeys still answers.
                deadline = time.monotonic() + WAIT
                while metric(sidecars[0], "ipsec_mesh_child_sa_rekeys_total") <= rekeys:
                    assert time.monotonic() < deadline, "no CHILD_SA rekey"
                    time.sleep(2)
                child_rekeys = metric(sidecars[0], "ipsec_mesh_child_sa_rekeys_total") - rekeys
                held.stdin.write("second\n")
                held.stdin.flush()
                after_rekey = held.stdout.readline().split()
                held.stdin.close()
                held.wait(timeout=60)
                packets = capture.packets()
        finally:
            translation.close()
            for echo in echoes:
                echo.kill()
        with capsys.disabled():  # the figures reach the VM's console log
            print(f"\n[measure] {ok} calls answered, {failed} failed during {updates} translation updates; "
                  f"served by {served}; {child_rekeys:.0f} CHILD_SA rekeys at the client while the held connection lived")
        assert int(ok) > 0 and int(failed) == 0, errors
        assert set(served.split(",")) == set(SERVERS4)  # every endpoint took calls
        assert updates >= 9
        assert after_rekey[:2] == ["second", "via"], after_rekey
        for server_ip in SERVERS4:
            assert not plaintext_between(packets, CLIENT4, server_ip), server_ip
            assert any(p.is_esp for p in packets if {p.src, p.dst} == {CLIENT4, server_ip}), server_ip
        assert not [p for p in packets if CLUSTER4 in (p.src, p.dst)]
        assert "packets 0 " in node.run(["nft", "list", "counter", "inet", "kubeproxy", "kp_dnat"]).stdout
        untranslated = client.run(["nft", "list", "counter", "inet", "ipsec_mesh_svc", "untranslated"]).stdout
        assert "packets 0 " in untranslated
