"""Several replicas (kopf peering) and the chart's switches, on the running operator against kmock.

A paused replica (another replica of higher priority is the writer) must still serve the mesh
API from a current index; readiness says when a replica can serve; a disabled webhook means the
operator never touches webhook configurations (the chart then grants no permission to).
"""

import contextlib
import datetime
import http.client

import kmock
import pytest
from kopf.testing import KopfRunner

from ipsec_mesh_operator.controller.kube import encode_secret_data
from ipsec_mesh_operator.pki.psk import PskRing
from tests.operator.test_operator_kmock import (
    PEERINGS,
    PODS,
    peering_body,
    pod_body,
    status_of,
    tokenreview_setup,
)
from tests.support.kube_harness import running_kube, wait_for

PEERING_OBJECTS = "kopf.dev/v1/clusterkopfpeerings"
WEBHOOK_PATHS = ("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
                 "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations")


def http_get(port, path):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def policies(runtime, pod):
    peer_map = runtime.index.peer_map(pod)
    return peer_map.policies if peer_map is not None else ()


@contextlib.contextmanager
def operator(*args):
    from ipsec_mesh_operator import handlers

    runner = KopfRunner(["run", "-A", "--verbose", *args, "-m", "ipsec_mesh_operator.handlers"], reraise=True)
    try:
        with runner:
            wait_for(lambda: handlers.STATE.servers is not None and handlers.STATE.servers.ports.get("api"),
                     what="operator startup")
            yield handlers.STATE.servers, handlers.STATE.runtime
    finally:
        print(runner.output[-20000:])
    assert runner.exception is None


def peering_objects_setup(emulator):
    tokenreview_setup(emulator)
    emulator.resources[PEERING_OBJECTS] = kmock.ResourceInfo(
        kind="ClusterKopfPeering", singular="clusterkopfpeering", verbs={"get", "list", "watch", "patch", "create"},
        namespaced=False)


@pytest.fixture
def kube(tmp_path, monkeypatch):
    with running_kube(peering_objects_setup) as harness:
        monkeypatch.setenv("KUBECONFIG", str(harness.write_kubeconfig(tmp_path)))
        monkeypatch.setenv("IPSEC_MESH_NAMESPACE", "mesh-system")
        yield harness


def test_paused_replica_serves_the_mesh_api_from_a_current_index(kube):
    # Another replica, of a priority no drawn one reaches, holds the writer's role.
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None).isoformat()
    kube.create("/apis/kopf.dev/v1/clusterkopfpeerings", {
        "apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "mesh"},
        "status": {"writer-replica": {"priority": 2**31, "lifetime": 3600, "lastseen": now}}})
    # The writer created the PSK; this replica must adopt it, never make its own.
    ring = PskRing.create(0)
    kube.create("/api/v1/namespaces/prod/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "secure-psk", "namespace": "prod"},
        "data": encode_secret_data(ring.to_secret_data())})
    with operator("--peering=mesh") as (servers, runtime):
        # Created after start: only watches that run on a paused replica can see them.
        kube.create(PODS, pod_body("web-0", "10.0.0.1", "web"))
        kube.create(PODS, pod_body("db-0", "10.0.0.2", "db"))
        kube.create(PEERINGS, peering_body("secure", auth="psk"))
        [policy] = wait_for(lambda: policies(runtime, ("prod", "web-0")),
                            what="a policy in the peer map of the paused replica")
        assert len(policy.peers) == 1
        assert {k.id for k in policy.psk_keys} == {ring.active_id(0)}
        # Gone pods leave the index on this replica too.
        kube.delete(f"{PODS}/db-0")
        wait_for(lambda: not any(p.peers for p in policies(runtime, ("prod", "web-0"))), what="peer gone")
        # The writers stayed paused: nothing wrote the peering's status.
        assert status_of(kube, "secure") == {}
        assert http_get(servers.ports["metrics"], "/readyz")[0] == 200


def test_readiness_waits_for_listening_servers_and_the_first_listing(kube):
    with operator("--standalone") as (servers, runtime):
        assert http_get(servers.ports["metrics"], "/readyz") == (200, "ready\n")
        servers.readiness.unsynced.add("pods")  # as before the first listing of pods completed
        status, text = http_get(servers.ports["metrics"], "/readyz")
        assert status == 503 and "pods not listed yet" in text
        servers.readiness.unsynced.clear()
        servers.readiness.listening.discard("webhook")
        status, text = http_get(servers.ports["metrics"], "/readyz")
        assert status == 503 and "webhook server not listening" in text
        servers.readiness.listening.add("webhook")


def webhook_spy_setup(calls, status):
    def setup(emulator):
        tokenreview_setup(emulator)
        for path in WEBHOOK_PATHS:
            def spy(request, path=path):
                calls.append(path)
                return kmock.Response(status=status)
            emulator[f"get {path}/ipsec-mesh"] << spy
            emulator[f"patch {path}/ipsec-mesh"] << spy
    return setup


@pytest.mark.parametrize("enabled", [True, False])
def test_disabled_webhook_is_never_served_nor_its_configuration_read(tmp_path, monkeypatch, enabled):
    calls = []
    # Enabled: the configurations are not there yet (404). Disabled: the chart's ClusterRole has no
    # rule for them (403), which used to fail the operator's startup every 60 s.
    with running_kube(webhook_spy_setup(calls, 404 if enabled else 403)) as kube:
        monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path)))
        monkeypatch.setenv("IPSEC_MESH_WEBHOOK_ENABLED", str(enabled).lower())
        with operator("--standalone") as (servers, runtime):
            assert ("webhook" in servers.ports) is enabled
            assert http_get(servers.ports["metrics"], "/readyz")[0] == 200
        assert bool(calls) is enabled
