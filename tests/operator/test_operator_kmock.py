"""The running operator (KopfRunner) against kmock: peerings, keys, pods, restarts, and the real HTTPS mesh API."""

import asyncio
import base64
import contextlib
import time
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kopf.testing import KopfRunner

from ipsec_mesh.meshapi import MeshApiClient, MeshApiRequestError, PeeringStatus, StatusReport
from ipsec_mesh_operator.metrics import REGISTRY
from ipsec_mesh_operator.model.settings import OperatorConfig
from ipsec_mesh_operator.server.admission import sidecar_container
from tests.support import fake_tokens
from tests.support.kube_harness import running_kube, wait_for

PEERINGS = "/apis/ipsec-mesh.io/v1alpha1/namespaces/prod/ipsecpeerings"
PODS = "/api/v1/namespaces/prod/pods"
SECRETS = "/api/v1/namespaces/{ns}/secrets/{name}"


def pod_body(name, ip, app, sa="web", uid=None):
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "prod", "uid": uid or f"uid-{name}", "labels": {"app": app},
                     "resourceVersion": "1",
                     "annotations": {"ipsec-mesh.io/injected": "true"}},
        "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "app"}],
                 "initContainers": [sidecar_container(OperatorConfig(), "")]},  # as the webhook injects it
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def peering_body(name, auth="certificate", uid=None):
    return {
        "apiVersion": "ipsec-mesh.io/v1alpha1", "kind": "IPsecPeering",
        "metadata": {"name": name, "namespace": "prod", "uid": uid or f"uid-{name}", "generation": 1,
                     "resourceVersion": "1"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "peers": [{"podSelector": {"matchLabels": {"app": "db"}}}],
            "authentication": {"type": auth},
        },
    }


def tokenreview_setup(emulator):
    emulator["post /apis/authentication.k8s.io/v1/tokenreviews"] << fake_tokens.review


@contextlib.contextmanager
def operator():
    from ipsec_mesh_operator import handlers

    runner = KopfRunner(["run", "-A", "--standalone", "--verbose", "-m", "ipsec_mesh_operator.handlers"], reraise=True)
    try:
        with runner:
            wait_for(lambda: handlers.STATE.servers is not None and handlers.STATE.servers.ports.get("api"),
                     what="operator startup")
            yield runner, handlers.STATE.servers.ports, handlers.STATE.runtime
    finally:
        # The operator's log is only complete once it stopped; keep it for a failing test's report.
        print(runner.output[-20000:])
    assert runner.exception is None


def status_of(kube, name):
    return (kube.get(f"{PEERINGS}/{name}") or {}).get("status") or {}


def condition(kube, name, kind):
    for entry in status_of(kube, name).get("conditions") or []:
        if entry["type"] == kind:
            return entry
    return None


def make_csr(identity):
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM), key


@pytest.fixture
def kube(tmp_path, monkeypatch):
    with running_kube(tokenreview_setup) as harness:
        monkeypatch.setenv("KUBECONFIG", str(harness.write_kubeconfig(tmp_path)))
        yield harness


WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/{kind}"


def test_peering_gets_keys_and_status_and_keys_survive_a_restart(kube):
    kube.create(PODS, pod_body("web-0", "10.0.0.1", "web"))
    kube.create(PODS, pod_body("db-0", "10.0.0.2", "db"))
    for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        kube.create(WEBHOOKS.format(kind=kind), {"metadata": {"name": "ipsec-mesh", "resourceVersion": "1"},
                                                 "webhooks": [{"name": "a.ipsec-mesh.io", "clientConfig": {}}]})
    with operator() as (runner, ports, runtime):
        # The operator put the mesh CA into its webhook configurations.
        bundle = base64.b64encode("".join(runtime.index.trust_bundle).encode()).decode()
        for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
            config = wait_for(lambda k=kind: kube.get(WEBHOOKS.format(kind=k) + "/ipsec-mesh"), what=kind)
            assert config["webhooks"][0]["clientConfig"]["caBundle"] == bundle
        kube.create(PEERINGS, peering_body("secure", auth="psk"))
        ready = wait_for(lambda: (condition(kube, "secure", "Ready") or {}).get("status") == "True",
                         what="Ready=True")
        assert ready
        status = status_of(kube, "secure")
        assert status["members"] == 1 and status["peers"] == 1 and status["observedGeneration"] == 1
        assert condition(kube, "secure", "KeysIssued")["reason"] == "PskIssued"
        secret = kube.get(SECRETS.format(ns="prod", name="secure-psk"))
        assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-secure"
        ca_secret = kube.get(SECRETS.format(ns="mesh-system", name="ipsec-mesh-ca"))
        assert ca_secret is not None and "ca.key" in ca_secret["data"]
        # A peering without members says so.
        kube.create(PEERINGS, {**peering_body("empty"), "spec": {
            "selector": {"matchLabels": {"app": "nobody"}}, "peers": [{"podSelector": {}}]}})
        wait_for(lambda: (condition(kube, "empty", "Ready") or {}).get("reason") == "NoMembers", what="NoMembers")
    with operator():
        # Same keys after the restart: nothing regenerated.
        wait_for(lambda: (condition(kube, "secure", "Ready") or {}).get("status") == "True", what="Ready again")
        assert kube.get(SECRETS.format(ns="prod", name="secure-psk"))["data"] == secret["data"]
        assert kube.get(SECRETS.format(ns="mesh-system", name="ipsec-mesh-ca"))["data"] == ca_secret["data"]


def test_invalid_peering_is_degraded_with_an_actionable_reason(kube):
    with operator():
        body = peering_body("broken")
        body["spec"]["proposals"] = {"ike": ["aes128cbc-sha1-modp1024"]}
        kube.create(PEERINGS, body)
        degraded = wait_for(lambda: condition(kube, "broken", "Degraded"), what="Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == "InvalidSpec"
        assert "aes128cbc" in degraded["message"]
        assert condition(kube, "broken", "Ready")["status"] == "False"


def test_sidecar_gets_a_certificate_and_follows_its_peer_map_over_https(kube):
    kube.create(PODS, pod_body("web-0", "10.0.0.1", "web"))
    kube.create(PODS, pod_body("db-0", "10.0.0.2", "db", sa="db"))
    with operator() as (runner, ports, runtime):
        kube.create(PEERINGS, peering_body("web-db"))
        wait_for(lambda: (condition(kube, "web-db", "Ready") or {}).get("status") == "True", what="Ready")
        bundle = "".join(runtime.index.trust_bundle)
        url = f"https://localhost:{ports['api']}"
        token = fake_tokens.issue("prod", "web", "web-0", "uid-web-0")
        issued_before = REGISTRY.get_sample_value("ipsec_mesh_certificates_issued_total")

        async def sidecar():
            async with MeshApiClient(url, ca_bundle=bundle, token=lambda: token) as client:
                csr, key = make_csr("web-0.prod.pod.cluster.local")
                issued = await client.sign_csr(csr)
                first = await client.fetch_peer_map()
                # A new db pod appears: the long-poll returns the next version.
                waiter = asyncio.ensure_future(client.fetch_peer_map(first.version, wait=20))
                await asyncio.sleep(0.3)
                await asyncio.to_thread(kube.create, PODS, pod_body("db-1", "10.0.0.3", "db", sa="db"))
                second = await waiter
                unchanged = await client.fetch_peer_map(second.version, wait=0.2)
                await client.post_status(StatusReport(second.version, (PeeringStatus("prod/web-db", 2),)))
                return issued, key, first, second, unchanged

        issued, key, first, second, unchanged = asyncio.run(sidecar())
        cert = x509.load_pem_x509_certificate(issued.certificate.encode())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == ["web-0.prod.pod.cluster.local"]
        assert names.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local/ns/prod/sa/web"]
        assert cert.public_key().public_numbers() == key.public_key().public_numbers()
        ca = x509.load_pem_x509_certificate(issued.trust_bundle[0].encode())
        cert.verify_directly_issued_by(ca)
        assert [p.name for p in first.policies[0].peers] == ["prod/db-0"]
        assert second.version > first.version
        assert [p.name for p in second.policies[0].peers] == ["prod/db-0", "prod/db-1"]
        assert unchanged is None
        # The report shows up in the peering's status.
        wait_for(lambda: status_of(kube, "web-db").get("establishedSAs") == 2, what="establishedSAs")

        # The pod goes away: the map follows.
        kube.delete(f"{PODS}/db-1")
        wait_for(lambda: [p.name for p in runtime.index.peer_map(("prod", "web-0")).policies[0].peers] == ["prod/db-0"],
                 what="db-1 removed from the map")

        async def refused(bad_token, path_call):
            async with MeshApiClient(url, ca_bundle=bundle, token=lambda: bad_token) as client:
                with pytest.raises(MeshApiRequestError) as error:
                    await path_call(client)
                return error.value.status

        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        assert asyncio.run(refused(forged, lambda c: c.fetch_peer_map())) == 401
        wrong_audience = fake_tokens.issue("prod", "web", "web-0", "uid-web-0", audience="vault")
        assert asyncio.run(refused(wrong_audience, lambda c: c.sign_csr(make_csr("web-0.prod.pod.cluster.local")[0]))) == 401
        # A valid token cannot get a certificate naming another pod.
        assert asyncio.run(refused(token, lambda c: c.sign_csr(make_csr("db-0.prod.pod.cluster.local")[0]))) == 400
        # A token for a previous pod of the same name (other uid) is refused.
        stale = fake_tokens.issue("prod", "web", "web-0", "uid-old")
        assert asyncio.run(refused(stale, lambda c: c.fetch_peer_map())) == 403
        # Metrics count what happened (the registry is per process: compare with the count before).
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5).read().decode()
        assert f"ipsec_mesh_certificates_issued_total {issued_before + 1}" in metrics
        assert 'ipsec_mesh_api_requests_refused_total{reason="unauthenticated"}' in metrics


class SteppedClock:
    """The operator's clock, moved only by the test: what is due depends on the steps, not on how fast
    the operator's timer comes round (its 1 s ticks are late under load)."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_psk_rotates_on_schedule_with_an_overlap(kube):
    kube.create(PODS, pod_body("web-0", "10.0.0.1", "web"))
    kube.create(PODS, pod_body("db-0", "10.0.0.2", "db"))
    body = peering_body("fast", auth="psk")
    # The new key is accepted at once, initiated with 1 s later (half the overlap), and the old one
    # retires 2 s after that.
    body["spec"]["authentication"].update(pskRotationInterval="4s", pskOverlap="2s")

    def map_keys(pod):
        keys = runtime.index.peer_map(("prod", pod)).policies[0].psk_keys
        return {k.id for k in keys}, {k.id for k in keys if k.initiate}

    def stored_keys():
        return {k[len("psk-"):] for k in kube.get(SECRETS.format(ns="prod", name="fast-psk"))["data"]
                if k.startswith("psk-")}

    with operator() as (runner, ports, runtime):
        clock = runtime.clock = SteppedClock(time.time())
        start = clock.now
        kube.create(PEERINGS, body)
        first = wait_for(lambda: status_of(kube, "fast").get("pskKeyId"), what="first key")
        assert map_keys("web-0") == ({first}, {first})

        # Due: the next key is generated and accepted by both ends, the first still initiates.
        clock.now = start + 4
        accepted = wait_for(lambda: len(map_keys("web-0")[0]) == 2 and map_keys("web-0"), timeout=60,
                            what="two keys accepted")
        (second,) = accepted[0] - {first}
        assert accepted == ({first, second}, {first})
        assert map_keys("db-0") == ({first, second}, {first})
        assert stored_keys() == {first, second}
        assert status_of(kube, "fast")["pskKeyId"] == first

        # Activated: the second initiates, the first is still accepted (the overlap).
        clock.now = start + 5.5
        wait_for(lambda: status_of(kube, "fast").get("pskKeyId") == second, timeout=60, what="rotation")
        wait_for(lambda: map_keys("web-0")[1] == {second}, timeout=60, what="web-0 initiates with the new key")
        wait_for(lambda: map_keys("db-0")[1] == {second}, timeout=60, what="db-0 initiates with the new key")
        for pod in ("web-0", "db-0"):
            assert map_keys(pod) == ({first, second}, {second})
        assert stored_keys() == {first, second}

        # The overlap is over (before the next rotation is due at +8): the first key is gone everywhere.
        clock.now = start + 7.5
        wait_for(lambda: map_keys("web-0")[0] == {second} and map_keys("db-0")[0] == {second}, timeout=60,
                 what="old key retired from the maps")
        wait_for(lambda: stored_keys() == {second}, timeout=60, what="old key pruned from the Secret")
        assert map_keys("web-0") == map_keys("db-0") == ({second}, {second})
        assert status_of(kube, "fast")["pskKeyId"] == second


def test_services_and_endpoint_slices_reach_the_peer_maps(kube):
    kube.create(PODS, pod_body("web-0", "10.0.0.1", "web"))
    kube.create(PODS, pod_body("db-0", "10.0.0.2", "db"))
    kube.create(PEERINGS, peering_body("web-db"))
    kube.create("/api/v1/namespaces/prod/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "prod", "resourceVersion": "1"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "ports": [{"name": "pg", "port": 5432, "protocol": "TCP", "targetPort": "pg"}]}})
    slices = "/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices"
    kube.create(slices, {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "db-abc", "namespace": "prod", "resourceVersion": "1",
                     "labels": {"kubernetes.io/service-name": "db"}},
        "ports": [{"name": "pg", "port": 5433, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.0.0.2"], "conditions": {"ready": True}}]})
    with operator() as (_, _, runtime):
        def listed():
            peer_map = runtime.index.peer_map(("prod", "web-0"))
            return [] if peer_map is None else [
                (s.key, [(str(e.address), e.port, e.ready, e.peer) for p in s.ports for e in p.endpoints])
                for s in peer_map.services]

        wait_for(lambda: listed() == [("prod/db", [("10.0.0.2", 5433, True, True)])], what="db Service in the map")
        kube.delete(f"{slices}/db-abc")
        wait_for(lambda: listed() == [], what="the slice's endpoints gone from the map")
