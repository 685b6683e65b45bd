"""Two clusters on one machine, federated, with real ESP.

"east" and "west" are two standalone operators, each with its own mesh CA and trust
domain, each in its node namespace with a bridge for its pod network; a router
namespace joins the node namespaces and routes the pod CIDRs (no NAT). Each operator
serves its SPIFFE bundle endpoint, and each side's peering names the other as a
`remote` with `federation`: the only trust copied by hand is the bootstrap bundle.

Checked: east's pod and west's worker talk, the capture on the router (between the
clusters) shows only ESP and IKE between them, the IKE identities are qualified by
their trust domains, a west pod outside east's `remote.identities` is refused, each
operator reports the remote bundle as fetched.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from ipsec_mesh_operator.controller.index import PodInfo
from ipsec_mesh_operator.demo.processes import Sidecar, StandaloneOperatorProcess
from ipsec_mesh_operator.netns import in_netns, run
from tests.vm.netns_guest import Capture, Netns

pytestmark = pytest.mark.vm

BUNDLE_PORT = 8444
IKE_PORTS = {500, 4500}
CLUSTERS = {
    # name: (trust domain, pod CIDR, node address, router-side link, pods: name -> (address, labels))
    "east": ("east.example", "10.61.0.0/24", "10.61.0.1", ("10.60.1.1", "10.60.1.2"),
             {"api": ("10.61.0.10", {"app": "api"})}),
    "west": ("west.example", "10.62.0.0/24", "10.62.0.1", ("10.60.2.1", "10.60.2.2"),
             {"worker": ("10.62.0.10", {"app": "worker"}), "worker2": ("10.62.0.12", {"app": "worker"}),
              "rogue": ("10.62.0.11", {"app": "rogue"})}),
}


def _pod(name: str, address: str, labels: dict) -> PodInfo:
    return PodInfo.from_body({"metadata": {"namespace": "batch", "name": name, "uid": "", "labels": labels},
                              "spec": {"serviceAccountName": name},
                              "status": {"phase": "Running", "podIPs": [{"ip": address}]}})


def _document(cluster: str, other_bootstrap: str | None) -> dict:
    domain, _, _, _, pods = CLUSTERS[cluster]
    other = "west" if cluster == "east" else "east"
    other_domain, other_cidr, other_node = CLUSTERS[other][:3]
    doc = {"trustDomain": domain, "bundleEndpoint": {"port": BUNDLE_PORT},
           "pods": [{"name": name, "namespace": "batch", "serviceAccount": name, "labels": labels, "ips": [address]}
                    for name, (address, labels) in pods.items()],
           "peerings": []}
    if other_bootstrap is None:
        return doc
    # East accepts west's workers only; west's peering covers all its batch pods (the rogue too).
    identities = ["worker.batch.pod.west.example", "worker2.batch.pod.west.example"] if cluster == "east" \
        else [f"*.batch.pod.{other_domain}"]
    doc["configMaps"] = [{"name": f"{other}-bootstrap", "namespace": "batch", "data": {"ca.crt": other_bootstrap}}]
    doc["peerings"] = [{"name": f"to-{other}", "namespace": "batch", "spec": {
        "selector": {},
        "peers": [{"remote": {
            "name": other, "cidrs": [other_cidr], "identities": identities,
            "federation": {"endpoint": f"https://{other_node}:{BUNDLE_PORT}/spiffe/v1/bundle",
                           "trustDomain": other_domain, "bootstrapBundle": {"name": f"{other}-bootstrap"},
                           "refreshInterval": "5s"}}}],
        "lifetimes": {"ike": "1h", "child": "10m"}}}]
    return doc


class TwoClusters:
    def __init__(self, workdir: Path):
        self.prefix = f"fed{os.getpid() % 100000}"
        self.workdir = workdir
        self.namespaces: list[str] = []
        self.operators: dict[str, StandaloneOperatorProcess] = {}
        self.sidecars: dict[str, Sidecar] = {}
        self.pods: dict[str, PodInfo] = {}

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def _add_ns(self, name: str) -> str:
        run("ip", "netns", "add", self.ns(name))
        self.namespaces.append(self.ns(name))
        run("ip", "-n", self.ns(name), "link", "set", "lo", "up")
        return self.ns(name)

    def build(self) -> None:
        router = self._add_ns("rt")
        run("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for index, (cluster, (_, cidr, node_address, (router_side, node_side), pods)) in enumerate(CLUSTERS.items()):
            node = self._add_ns(cluster)
            run("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            link = f"rt{index}"
            run("ip", "-n", router, "link", "add", link, "type", "veth", "peer", "name", "uplink", "netns", node)
            run("ip", "-n", router, "addr", "add", f"{router_side}/30", "dev", link)
            run("ip", "-n", router, "link", "set", link, "up")
            run("ip", "-n", router, "route", "add", cidr, "via", node_side)
            run("ip", "-n", node, "addr", "add", f"{node_side}/30", "dev", "uplink")
            run("ip", "-n", node, "link", "set", "uplink", "up")
            run("ip", "-n", node, "route", "add", "default", "via", router_side)
            run("ip", "-n", node, "link", "add", "br0", "type", "bridge")
            run("ip", "-n", node, "addr", "add", f"{node_address}/24", "dev", "br0")
            run("ip", "-n", node, "link", "set", "br0", "up")
            for number, (name, (address, labels)) in enumerate(pods.items()):
                pod_ns = self._add_ns(name)
                run("ip", "-n", node, "link", "add", f"p{number}", "type", "veth", "peer", "name", "eth0",
                    "netns", pod_ns)
                run("ip", "-n", node, "link", "set", f"p{number}", "master", "br0", "up")
                run("ip", "-n", pod_ns, "link", "set", "eth0", "up")
                run("ip", "-n", pod_ns, "addr", "add", f"{address}/24", "dev", "eth0")
                run("ip", "-n", pod_ns, "route", "add", "default", "via", node_address)
                self.pods[name] = _pod(name, address, labels)

    def start_operators(self) -> None:
        for cluster in CLUSTERS:
            directory = self.workdir / cluster
            directory.mkdir()
            config = directory / "mesh.yaml"
            config.write_text(yaml.safe_dump(_document(cluster, None)))
            operator = StandaloneOperatorProcess(self.ns(cluster), CLUSTERS[cluster][2], config, directory / "state")
            operator.start()
            self.operators[cluster] = operator
        for operator in self.operators.values():
            operator.wait_serving()
        # The one thing exchanged by hand: each side's bootstrap bundle (here, the other's CA as it is now).
        for cluster, operator in self.operators.items():
            other = self.operators["west" if cluster == "east" else "east"]
            operator.config_path.write_text(yaml.safe_dump(_document(cluster, other.ca_bundle)))
            operator.process.send_signal(signal.SIGHUP)  # reload

    def start_sidecars(self) -> None:
        for cluster, operator in self.operators.items():
            for name in CLUSTERS[cluster][4]:
                sidecar = Sidecar(self.pods[name], self.ns(name), self.workdir / "pods" / name)
                sidecar.start(operator)
                self.sidecars[name] = sidecar
        deadline = time.monotonic() + 600
        for name, sidecar in self.sidecars.items():
            while not (sidecar.status() or {}).get("ready"):
                assert time.monotonic() < deadline, f"{name} not ready:\n{sidecar.log()[-3000:]}"
                time.sleep(0.5)

    def federation(self, cluster: str) -> dict:
        """The operator's view of its federated remote (nothing fetched while the reload is under way)."""
        peerings = [p for p in self.operators[cluster].overview()["peerings"] if p["name"].startswith("to-")]
        if not peerings or not peerings[0]["federation"]:
            return {"fresh": False, "authorities": 0}
        return peerings[0]["federation"][0]

    def ping(self, source: str, destination: str, count: int = 3, deadline: int = 90) -> bool:
        """`count` answers within `deadline` s (the first IKE exchanges with ML-KEM take long under emulation)."""
        result = run("ip", "netns", "exec", self.ns(source), "ping", "-c", str(count), "-w", str(deadline),
                     "-i", "0.3", self.pods[destination].ips[0], check=False, timeout=deadline + 10)
        return result.returncode == 0

    def admin(self, cluster: str, method: str, path: str) -> dict:
        """The standalone admin endpoint of `cluster`, called from its node namespace."""
        operator = self.operators[cluster]
        source = operator.source()

        def call() -> dict:
            request = urllib.request.Request(source.url + path, method=method,
                                             headers={"Authorization": f"Bearer {source.token}"})
            with urllib.request.urlopen(request, timeout=30, context=source.context) as response:
                return json.loads(response.read())

        return in_netns(self.ns(cluster), call)

    def issuer_of(self, cluster: str, pod: str) -> str:
        [entry] = [p for p in self.admin(cluster, "GET", "/v1/admin/overview")["pods"] if p["name"] == pod]
        return (entry.get("certificate") or {}).get("issuer", "")

    def close(self) -> None:
        for process in [*self.sidecars.values(), *self.operators.values()]:
            process.stop()
        for name in reversed(self.namespaces):
            run("ip", "netns", "del", name, check=False)


def _start(clusters: TwoClusters) -> None:
    clusters.build()
    clusters.start_operators()
    # Each operator fetched the other's bundle from its endpoint, across the router.
    for cluster in CLUSTERS:
        state = _wait(lambda c=cluster: (lambda f: f if f["fresh"] else None)(clusters.federation(c)), 120,
                      f"{cluster} never fetched the remote bundle: {clusters.federation(cluster)}")
        assert state["authorities"] == 1 and state["lastError"] is None and state["failures"] == 0
    clusters.start_sidecars()


class UdpStream:
    """Numbered datagrams from one pod to another at a steady rate, bounded in count; what arrived."""

    MAX = 20000

    def __init__(self, clusters: TwoClusters, source: str, destination: str, port: int):
        self.address = (clusters.pods[destination].ips[0], port)
        self.receiver = Netns(clusters.ns(destination)).call(self._bind)
        self.sender = Netns(clusters.ns(source)).call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        self.sent = 0
        self.send_errors = 0
        self.received: set[int] = set()
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._receive, daemon=True)]

    def _bind(self) -> socket.socket:
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(self.address)
        receiver.settimeout(0.5)
        return receiver

    def _send(self) -> None:
        while not self.stop_event.is_set() and self.sent < self.MAX:
            try:
                self.sender.sendto(struct.pack("!I", self.sent) + b"x" * 60, self.address)
            except OSError:
                self.send_errors += 1  # counted as sent: a datagram the kernel refused is lost too
            self.sent += 1
            time.sleep(0.02)

    def _receive(self) -> None:
        deadline = None
        while True:
            if self.stop_event.is_set():
                deadline = deadline or time.monotonic() + 5  # the stragglers in flight
                if time.monotonic() > deadline or len(self.received) >= self.sent:
                    return
            try:
                data = self.receiver.recv(2048)
            except socket.timeout:
                continue
            if len(data) >= 4:
                self.received.add(struct.unpack("!I", data[:4])[0])

    def __enter__(self) -> UdpStream:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(30)
        self.sender.close()
        self.receiver.close()

    @property
    def lost(self) -> int:
        return self.sent - len(self.received & set(range(self.sent)))


def _remote_ids(status: dict) -> set[str]:
    """The peer identities (ID type and name) of a sidecar's established IKE SAs."""
    return {sa["remote_id"] for sa in status["ike_sas"] if sa.get("state") == "established"}


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def test_two_federated_clusters_talk_over_esp_and_refuse_an_identity_outside_the_peering(tmp_path, monkeypatch):
    # Maintenance rounds (and so federation refreshes) every 2 s rather than every minute.
    monkeypatch.setenv("IPSEC_MESH_KEY_CHECK_INTERVAL", "2s")
    clusters = TwoClusters(tmp_path)
    try:
        _start(clusters)
        router = Netns(clusters.ns("rt"))
        with Capture(router, "rt1", tmp_path / "between.pcap") as capture:
            assert clusters.ping("worker", "api"), clusters.sidecars["worker"].log()[-3000:]
            assert not clusters.ping("rogue", "api", count=2, deadline=15)
        worker, api = clusters.pods["worker"].ips[0], clusters.pods["api"].ips[0]
        rogue = clusters.pods["rogue"].ips[0]
        packets = capture.packets()
        between = [p for p in packets if {p.src, p.dst} == {worker, api}]
        esp = [p for p in between if p.is_esp]
        ike = [p for p in between if not p.is_esp and p.protocol == 17 and {p.sport, p.dport} & IKE_PORTS]
        plain = [p for p in between if p not in esp and p not in ike]
        print(f"worker<->api between the clusters: {len(esp)} ESP, {len(ike)} IKE, {len(plain)} other packets")
        assert len(esp) >= 6 and ike, (len(esp), len(ike))
        assert plain == []
        # The rogue's traffic to east never went out in plaintext either (IKE only, then refused).
        rogue_plain = [p for p in packets if {p.src, p.dst} == {rogue, api} and not p.is_esp
                       and not (p.protocol == 17 and {p.sport, p.dport} & IKE_PORTS)]
        assert rogue_plain == []
        assert not [p for p in packets if {p.src, p.dst} == {rogue, api} and p.is_esp]
        # Identities are qualified by their trust domains, each checked against the other's fetched bundle.
        worker_status = clusters.sidecars["worker"].status()
        api_status = clusters.sidecars["api"].status()
        assert worker_status["identity"] == "fqdn:worker.batch.pod.west.example"
        assert _remote_ids(worker_status) == {"fqdn:api.batch.pod.east.example"}
        assert "fqdn:worker.batch.pod.west.example" in _remote_ids(api_status)
        assert "fqdn:rogue.batch.pod.west.example" not in _remote_ids(api_status)
        failures = {**clusters.sidecars["rogue"].status()["last_failures"], **api_status["last_failures"]}
        assert failures.get(api, {}).get("reason") == "authentication_failed" or \
            failures.get(rogue, {}).get("reason") == "authentication_failed", failures
    finally:
        clusters.close()
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert clusters.prefix not in leftovers


def test_east_rotates_its_ca_mid_stream_west_follows_through_the_endpoint_and_new_sas_use_the_new_chain(
        tmp_path, monkeypatch):
    monkeypatch.setenv("IPSEC_MESH_KEY_CHECK_INTERVAL", "2s")
    # The successor CA signs 40 s after it is published; pods' certificates last 60 s and are
    # renewed at 2/3 of that, so east's pod moves onto the new CA within ~40 s of its activation.
    monkeypatch.setenv("IPSEC_MESH_CA_PROPAGATION", "40s")
    monkeypatch.setenv("IPSEC_MESH_MAX_CERT_LIFETIME", "60s")
    clusters = TwoClusters(tmp_path)
    try:
        _start(clusters)
        assert clusters.ping("worker", "api")  # the IKE SA between them, made with the old chain
        old_issuer = clusters.issuer_of("east", "api")
        router = Netns(clusters.ns("rt"))
        port = 20000 + os.getpid() % 20000
        with Capture(router, "rt1", tmp_path / "rotation.pcap", snaplen=96) as capture:
            with UdpStream(clusters, "api", "worker", port) as stream:
                _wait(lambda: len(stream.received) >= 20, 60, "the stream does not arrive")
                ca = clusters.admin("east", "POST", "/v1/admin/rotate-ca")
                new_id = ca["generations"][0]["id"]
                assert new_id != ca["active"] and ca["trustBundleSize"] == 2
                # West learns the successor through the bundle endpoint, before it signs anything.
                signs_from = ca["generations"][0]["activateAt"]
                west_view = _wait(lambda: (lambda f: f if f["authorities"] == 2 else None)(clusters.federation("west")),
                                  signs_from - time.time(), "west did not learn east's new CA before it signed")
                assert west_view["fresh"]
                print(f"west held east's new CA {signs_from - time.time():.1f} s before it signed")
                # East's pod renews onto the new CA once it signs.
                _wait(lambda: new_id in clusters.issuer_of("east", "api"), 240,
                      "east's pod was never issued a certificate by the new CA")
                # A new IKE SA (west's second worker, never talked to api before): east's pod proves
                # itself with the new chain, which west only knows from the endpoint.
                assert clusters.ping("worker2", "api"), clusters.sidecars["worker2"].log()[-3000:]
                time.sleep(2)
        api, worker = clusters.pods["api"].ips[0], clusters.pods["worker"].ips[0]
        between = [p for p in capture.packets() if {p.src, p.dst} == {api, worker}]
        plain = [p for p in between if not p.is_esp and not (p.protocol == 17 and {p.sport, p.dport} & IKE_PORTS)]
        print(f"rotation stream: {stream.sent} datagrams sent, {len(stream.received)} received, {stream.lost} lost, "
              f"{stream.send_errors} send errors; {sum(p.is_esp for p in between)} ESP and {len(plain)} plaintext "
              "packets between api and worker")
        assert new_id not in old_issuer
        assert stream.sent > 100
        assert stream.lost == 0, (stream.sent, len(stream.received), stream.send_errors)
        assert plain == [] and sum(p.is_esp for p in between) >= stream.sent
        api_status = clusters.sidecars["api"].status()
        assert "fqdn:worker2.batch.pod.west.example" in _remote_ids(api_status)
        # The stream's SA survived the rotation: east's pod still has the one with worker.
        assert "fqdn:worker.batch.pod.west.example" in _remote_ids(api_status)
    finally:
        clusters.close()
