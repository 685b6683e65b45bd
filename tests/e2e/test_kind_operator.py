"""End to end on kind: the chart, two injected workloads and a peering, ESP on the wire, consent, two clusters.

Needs Docker, kind, kubectl and helm on PATH and access to Docker Hub (busybox,
nicolaka/netshoot); skips otherwise. See tests/e2e/README.md for the command and
what each test asserts. Clusters are named with the pid and deleted afterwards.

What is asserted, given the consent model (docs/operator.md):
- web and db (namespace shop, peering web-db, require): their traffic is ESP on the
  wire and no plaintext TCP between them is seen (tcpdump in the kind node's network
  namespace), also when web calls db through a Service (`http://db.shop.svc.cluster.local`, port 80
  to db's 8080: web's sidecar translates the ClusterIP, which never reaches the wire),
  and plaintext spoofed with web's address is dropped by db's XFRM
  policy (XfrmInTmplMismatch rises in db's namespace) instead of reaching db.
- intruder (namespace outside, its own one-sided peering naming shop's db pods,
  require): db's sidecar does not accept it, so it cannot reach db at all: not over
  ESP (db refuses its IKE: shop never consented) and not in plaintext (its own
  require policy). Its peering reports AwaitingConsent naming shop. Under the old
  one-sided model db would have accepted it and the fetch would succeed.
  A pod without a sidecar and without any peering is outside ipsec-mesh's scope
  (network policy's), so nothing is asserted about it.
- a second cluster (west) with its own mesh CA, trust domain and pod CIDR, federated:
  each chart serves its bundle endpoint (a NodePort here), each side's peering names
  the other's endpoint and trust domain in `remote.federation` (a bootstrap bundle copied
  once, as an administrator would); both peerings report TrustBundlesFresh=True, and web
  (east) fetches from db-west with only ESP on the wire.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e import kind_helpers as kh

ROOT = Path(__file__).resolve().parents[2]
MISSING = [tool for tool in ("docker", "kind", "kubectl", "helm") if shutil.which(tool) is None]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(MISSING), reason=f"kind e2e needs {', '.join(MISSING)} on PATH (not installed here)"),
]

IMAGE = "ipsec-mesh:e2e"
SIDECAR_IMAGE = "ipsec-mesh-sidecar:e2e"
NETSHOOT = "nicolaka/netshoot:v0.13"
MESH_NS = "ipsec-mesh-system"
RELEASE = "mesh"


def run(*args, timeout=600, check=True, **kwargs):
    return subprocess.run(args, check=check, text=True, capture_output=True, timeout=timeout, **kwargs)


def wait_until(predicate, timeout=300, interval=2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


@dataclass
class Cluster:
    name: str
    env: dict
    node: str
    pod_subnet: str
    trust_domain: str

    def kubectl(self, *args, **kwargs):
        return run("kubectl", *args, env=self.env, **kwargs)

    def apply(self, *objects):
        return self.kubectl("apply", "-f", "-", input=kh.to_yaml(*objects))

    def get_json(self, *args) -> str:
        return self.kubectl("get", *args, "-o", "json").stdout

    def pod_ip(self, namespace, name) -> str:
        return kh.pod_ip(self.get_json("-n", namespace, "pod", name))

    def fetch(self, namespace, pod, url, timeout=5):
        """wget from inside a busybox pod; the CompletedProcess (returncode 0 on success)."""
        return self.kubectl("-n", namespace, "exec", pod, "-c", pod, "--", "wget", "-qO-", "-T", str(timeout), url,
                            check=False, timeout=timeout + 30)

    def peering_condition(self, namespace, name, kind):
        return kh.condition(self.get_json("-n", namespace, "ipsecpeering", name), kind)


def cluster_name(role: str) -> str:
    return f"ipsec-mesh-{role}-{os.getpid()}"


def create_cluster(tmp_path_factory, role: str, pod_subnet: str, service_subnet: str) -> Cluster:
    name = cluster_name(role)
    workdir = tmp_path_factory.mktemp(role)
    config = workdir / "kind.yaml"
    config.write_text(kh.kind_config(pod_subnet, service_subnet))
    kubeconfig = workdir / "kubeconfig"
    run("kind", "create", "cluster", "--name", name, "--config", str(config), "--kubeconfig", str(kubeconfig),
        "--wait", "180s")
    cluster = Cluster(name, {**os.environ, "KUBECONFIG": str(kubeconfig)}, f"{name}-control-plane", pod_subnet,
                      f"{role}.example")
    run("kind", "load", "docker-image", IMAGE, SIDECAR_IMAGE, "--name", name)
    run("helm", "install", RELEASE, str(ROOT / "charts" / "ipsec-mesh"), "-n", MESH_NS, "--create-namespace",
        "--set", "image.repository=ipsec-mesh", "--set", "image.tag=e2e", "--set", "image.pullPolicy=Never",
        "--set", "sidecar.image.repository=ipsec-mesh-sidecar", "--set", "sidecar.image.tag=e2e",
        "--set", f"trustDomain={cluster.trust_domain}", "--set", "bundleEndpoint.enabled=true",
        # Reachable from the other cluster's operator at this node's address (docker network "kind").
        "--set", "bundleEndpoint.service.type=NodePort", "--wait", "--timeout", "300s", env=cluster.env)

    def webhook_trusted():  # the operator patches the caBundle after it starts
        out = cluster.kubectl("get", "mutatingwebhookconfiguration", f"{RELEASE}-ipsec-mesh", "-o",
                              "jsonpath={.webhooks[0].clientConfig.caBundle}", check=False).stdout
        return bool(out.strip())

    assert wait_until(webhook_trusted, 120), "the operator never published the webhook CA bundle"
    return cluster


def delete_cluster(name: str) -> None:
    subprocess.run(["kind", "delete", "cluster", "--name", name], timeout=300, check=False)


@pytest.fixture(scope="module")
def image():
    run("docker", "build", "-t", IMAGE, str(ROOT), timeout=1800)
    run("docker", "build", "--target", "sidecar", "-t", SIDECAR_IMAGE, str(ROOT), timeout=1800)
    run("docker", "pull", NETSHOOT, timeout=600)  # captures must start listening quickly
    return IMAGE


def cluster_while_testing(tmp_path_factory, role: str, pod_subnet: str, service_subnet: str):
    """Yield a ready cluster; delete it afterwards, also when creating it failed half-way."""
    try:
        yield create_cluster(tmp_path_factory, role, pod_subnet, service_subnet)
    finally:
        delete_cluster(cluster_name(role))


@pytest.fixture(scope="module")
def east(image, tmp_path_factory):
    yield from cluster_while_testing(tmp_path_factory, "east", "10.244.0.0/16", "10.96.0.0/16")


@pytest.fixture(scope="module")
def west(image, tmp_path_factory):
    yield from cluster_while_testing(tmp_path_factory, "west", "10.245.0.0/16", "10.97.0.0/16")


def opt_in(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("label", "namespace", namespace, "ipsec-mesh.io/inject=enabled")


def start_pods(cluster: Cluster, namespace: str, *pods) -> None:
    cluster.apply(*pods)
    names = [f"pod/{pod['metadata']['name']}" for pod in pods]
    cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", *names, "--timeout=240s", timeout=300)


def wait_ready(cluster: Cluster, namespace: str, peering: str) -> None:
    def ready():
        found = cluster.peering_condition(namespace, peering, "Ready")
        return found is not None and found[0] == "True"

    assert wait_until(ready), cluster.kubectl("-n", namespace, "describe", "ipsecpeering", peering).stdout


@pytest.fixture(scope="module")
def shop(east):
    """web and db in namespace shop, both injected, peered by docs/examples/web-db.yaml."""
    opt_in(east, "shop")
    start_pods(east, "shop", kh.client_pod("web", "shop", "web"), kh.http_server_pod("db", "shop", "db"))
    east.kubectl("apply", "-f", str(ROOT / "docs" / "examples" / "web-db.yaml"))
    wait_ready(east, "shop", "web-db")
    return {"web": east.pod_ip("shop", "web"), "db": east.pod_ip("shop", "db")}


def capture(node: str, bpf: str, seconds: int) -> subprocess.Popen:
    """tcpdump in the kind node's network namespace (all pod veths), from a netshoot container."""
    return subprocess.Popen(
        ["docker", "run", "--rm", "--net", f"container:{node}", NETSHOOT,
         "timeout", str(seconds), "tcpdump", "-nli", "any", bpf],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def captured(process: subprocess.Popen, seconds: int) -> int:
    stdout, stderr = process.communicate(timeout=seconds + 120)
    return kh.packets_captured(stdout, stderr)


def fetch_while_capturing(cluster: Cluster, namespace: str, client: str, url: str, filters: list[str],
                          seconds: int = 25) -> tuple[list[int], list]:
    captures = [capture(cluster.node, bpf, seconds) for bpf in filters]
    time.sleep(8)  # the image is pulled and tcpdump listening before traffic starts
    fetches = [cluster.fetch(namespace, client, url) for _ in range(3)]
    return [captured(p, seconds) for p in captures], fetches


def test_chart_injects_two_workloads_and_the_peering_becomes_ready(east, shop):
    for name in ("web", "db"):
        sidecar = kh.first_init_container(east.get_json("-n", "shop", "pod", name))
        assert sidecar["name"] == "ipsec-mesh" and sidecar["restartPolicy"] == "Always"
        assert sidecar["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    status = json.loads(east.get_json("-n", "shop", "ipsecpeering", "web-db"))["status"]
    assert status["members"] == 1 and status["peers"] == 1


def test_traffic_between_peers_is_esp_on_the_wire(east, shop):
    web, db = shop["web"], shop["db"]
    (esp, plaintext), fetches = fetch_while_capturing(
        east, "shop", "web", f"http://{db}:8080/hostname", list(kh.wire_filters(web, db)))
    assert all(f.returncode == 0 and f.stdout.strip() == "db" for f in fetches), fetches
    assert esp >= 6, f"only {esp} ESP packets between web and db"  # 3 requests, both directions
    assert plaintext == 0, f"{plaintext} plaintext TCP packets between web and db"


def test_a_call_through_the_service_is_esp_on_the_wire(east, shop):
    """web calls db by its Service name, as applications do: web's sidecar translates the ClusterIP
    inside web (docs/services.md), so the call leaves addressed to db's pod IP and is encrypted;
    the node's tcpdump sees ESP between the pods and no TCP to the ClusterIP or between the pods."""
    web, db = shop["web"], shop["db"]
    east.apply(kh.service("db", "shop", "db", port=80, target_port=8080))
    cluster_ip = kh.cluster_ip(east.get_json("-n", "shop", "service", "db"))
    url = "http://db.shop.svc.cluster.local/hostname"
    # Until web's peer map lists the Service, the call goes to kube-proxy in plaintext and db's require
    # policy drops it; it answers once web's sidecar translates the ClusterIP.
    assert wait_until(lambda: east.fetch("shop", "web", url).returncode == 0, 120), \
        east.kubectl("-n", "shop", "logs", "web", "-c", "ipsec-mesh", "--tail=40", check=False).stdout
    (esp, plaintext), fetches = fetch_while_capturing(east, "shop", "web", url,
                                                      list(kh.wire_filters(web, db, cluster_ip)))
    assert all(f.returncode == 0 and f.stdout.strip() == "db" for f in fetches), fetches
    assert esp >= 6, f"only {esp} ESP packets between web and db"
    assert plaintext == 0, f"{plaintext} plaintext TCP packets between web and db or to {cluster_ip}"


def test_plaintext_spoofed_from_a_peer_is_dropped_by_the_policy(east, shop):
    def mismatches():
        text = east.kubectl("-n", "shop", "exec", "db", "-c", "db", "--", "cat", "/proc/net/xfrm_stat",
                            check=False).stdout
        return kh.xfrm_stat(text).get("XfrmInTmplMismatch")

    before = mismatches()
    if before is None:
        pytest.skip("the kind node's kernel has no /proc/net/xfrm_stat (CONFIG_XFRM_STATISTICS)")
    # From the node's network namespace, as web: db's inbound policy for web's address requires ESP.
    run("docker", "run", "--rm", "--net", f"container:{east.node}", "--cap-add", "NET_RAW", "--user", "0",
        "-v", f"{Path(__file__).parent}:/e2e:ro", "--entrypoint", "python3", IMAGE,
        "/e2e/kind_helpers.py", "spoof", shop["web"], shop["db"], "20")
    assert wait_until(lambda: (mismatches() or 0) >= before + 20, 30), (before, mismatches())


def test_a_pod_outside_the_peering_cannot_reach_the_members(east, shop):
    opt_in(east, "outside")
    start_pods(east, "outside", kh.client_pod("intruder", "outside", "intruder"))
    east.apply(kh.pod_peering("grab", "outside", "intruder", "db", peer_namespace="shop"))

    def awaiting_consent():
        found = east.peering_condition("outside", "grab", "Degraded")
        return found is not None and found[1] == "AwaitingConsent" and "shop" in found[2]

    assert wait_until(awaiting_consent, 120), east.kubectl("-n", "outside", "describe", "ipsecpeering", "grab").stdout
    attempt = east.fetch("outside", "intruder", f"http://{shop['db']}:8080/hostname", timeout=10)
    assert attempt.returncode != 0 and "db" not in attempt.stdout, attempt
    # The members are untouched: shop's peering stays Ready and web still reaches db.
    assert east.peering_condition("shop", "web-db", "Ready")[0] == "True"
    assert east.fetch("shop", "web", f"http://{shop['db']}:8080/hostname").stdout.strip() == "db"


def publish_trust_bundle(source: Cluster, target: Cluster, namespace: str, configmap: str, workdir: Path) -> None:
    """The source cluster's mesh CA bundle, as a ConfigMap in the target cluster: the bootstrap an admin copies
    once; every later bundle is fetched from the source's endpoint."""
    bundle = kh.secret_value(source.get_json("-n", MESH_NS, "secret", "ipsec-mesh-ca"), "trust-bundle.pem")
    path = workdir / f"{source.name}-ca.crt"
    path.write_bytes(bundle)
    target.kubectl("-n", namespace, "create", "configmap", configmap, f"--from-file=ca.crt={path}")


def bundle_endpoint(cluster: Cluster, node_ip: str) -> str:
    service = cluster.get_json("-n", MESH_NS, "service", f"{RELEASE}-ipsec-mesh-operator-bundle")
    return kh.bundle_url(node_ip, kh.node_port(service, "bundle"))


def test_cross_cluster_peering_with_federated_trust_bundles(east, west, shop, tmp_path):
    east_ip = kh.node_ip(run("docker", "inspect", east.node).stdout)
    west_ip = kh.node_ip(run("docker", "inspect", west.node).stdout)
    for here, there, there_ip in ((east, west, west_ip), (west, east, east_ip)):
        for command in kh.cross_cluster_route_commands(here.pod_subnet, there.pod_subnet, there_ip):
            run("docker", "exec", here.node, *command)
    opt_in(west, "shop")
    start_pods(west, "shop", kh.http_server_pod("db-west", "shop", "db"))
    publish_trust_bundle(west, east, "shop", "west-bootstrap", tmp_path)
    publish_trust_bundle(east, west, "shop", "east-bootstrap", tmp_path)
    east.apply(kh.remote_peering("web-to-west", "shop", "web", "west", [west.pod_subnet],
                                 [f"*.shop.pod.{west.trust_domain}"], bundle_endpoint(west, west_ip),
                                 west.trust_domain, "west-bootstrap"))
    west.apply(kh.remote_peering("db-from-east", "shop", "db", "east", [east.pod_subnet],
                                 [f"*.shop.pod.{east.trust_domain}"], bundle_endpoint(east, east_ip),
                                 east.trust_domain, "east-bootstrap"))
    wait_ready(east, "shop", "web-to-west")
    wait_ready(west, "shop", "db-from-east")
    for cluster, peering in ((east, "web-to-west"), (west, "db-from-east")):
        def fresh():
            return (cluster.peering_condition("shop", peering, "TrustBundlesFresh") or ("",))[0] == "True"

        assert wait_until(fresh, 120), cluster.peering_condition("shop", peering, "TrustBundlesFresh")
        [report] = json.loads(cluster.get_json("-n", "shop", "ipsecpeering", peering))["status"]["federation"]
        assert report["fresh"] and report["authorities"] >= 1 and report["fetchedAt"], report
    db_west = west.pod_ip("shop", "db-west")
    (esp, plaintext), fetches = fetch_while_capturing(
        east, "shop", "web", f"http://{db_west}:8080/hostname",
        list(kh.wire_filters(shop["web"], db_west)))
    assert all(f.returncode == 0 and f.stdout.strip() == "db-west" for f in fetches), fetches
    assert esp >= 6 and plaintext == 0, (esp, plaintext)
