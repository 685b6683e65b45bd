"""kopf handlers as functions: kopf.Body in, kopf.Patch and events out, with an in-memory Kubernetes."""

import asyncio
import dataclasses
import os
import threading
import time

import kopf
import pytest
from kopf._core.engines import posting

from ipsec_mesh_operator import handlers
from ipsec_mesh_operator.controller.feeder import IndexFeeder
from ipsec_mesh_operator.controller.index import PodInfo
from ipsec_mesh_operator.controller.runtime import OperatorRuntime
from ipsec_mesh_operator.model.peering import parse_peering
from ipsec_mesh_operator.model.settings import OperatorConfig
from ipsec_mesh_operator.pki.ca import CertificateAuthority
from ipsec_mesh_operator.server.admission import sidecar_container
from tests.support.memory_kube import MemoryKube


@pytest.fixture
def runtime():
    settings = kopf.OperatorSettings()
    queue = asyncio.Queue()
    tokens = [posting.settings_var.set(settings), posting.event_queue_var.set(queue)]
    rt = OperatorRuntime(OperatorConfig(), MemoryKube())
    rt.ca = CertificateAuthority.create(time.time(), 86400, 86400 * 365)
    handlers.STATE.runtime = rt
    rt.events = queue
    yield rt
    handlers.STATE.runtime = None
    posting.event_queue_var.reset(tokens[1])
    posting.settings_var.reset(tokens[0])


async def started_loop_queue(rt):
    posting.event_queue_loop_var.set(asyncio.get_running_loop())


def body_of(name, spec, uid="uid-1", generation=3, status=None):
    return kopf.Body({
        "apiVersion": "ipsec-mesh.io/v1alpha1", "kind": "IPsecPeering",
        "metadata": {"name": name, "namespace": "prod", "uid": uid, "generation": generation},
        "spec": spec, "status": status or {},
    })


def events(rt):
    out = []
    while not rt.events.empty():
        event = rt.events.get_nowait()
        out.append((event.type, event.reason, event.message))
    return out


def conditions(patch):
    return {c["type"]: c for c in patch.status["conditions"]}


SPEC = {"selector": {"matchLabels": {"app": "web"}}, "peers": [{"podSelector": {"matchLabels": {"app": "db"}}}]}


async def test_create_reconciles_into_the_index_status_and_an_event(runtime):
    await started_loop_queue(runtime)
    runtime.index.upsert_pod(PodInfo("prod", "web-0", "u1", "default", {"app": "web"}, ("10.0.0.1",)))
    body, patch = body_of("p", SPEC), kopf.Patch()
    await handlers.reconcile_peering(name="p", namespace="prod", spec=body["spec"], body=body, patch=patch,
                                     reason="create")
    assert runtime.index.members(("prod", "p")) == {("prod", "web-0")}
    assert patch.status["observedGeneration"] == 3 and patch.status["members"] == 1
    found = conditions(patch)
    assert found["KeysIssued"]["status"] == "True" and found["KeysIssued"]["reason"] == "MeshCA"
    assert found["Ready"]["status"] == "True"
    assert events(runtime) == [("Normal", "Reconciled", "1 member pod(s), 0 peer pod(s), 0 remote(s)")]


async def test_psk_peering_creates_an_owned_secret_once(runtime):
    await started_loop_queue(runtime)
    spec = {**SPEC, "authentication": {"type": "psk"}}
    body = body_of("p", spec)
    await handlers.reconcile_peering(name="p", namespace="prod", spec=spec, body=body, patch=kopf.Patch(),
                                     reason="create")
    secret = runtime.kube.secrets[("prod", "p-psk")]
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    before = dict(secret["data"])
    runtime.psk.clear()  # as after an operator restart
    patch = kopf.Patch()
    await handlers.reconcile_peering(name="p", namespace="prod", spec=spec, body=body, patch=patch, reason="resume")
    assert runtime.kube.secrets[("prod", "p-psk")]["data"] == before
    assert conditions(patch)["KeysIssued"]["reason"] == "PskIssued"


async def test_invalid_update_keeps_the_last_good_spec_and_reports_it(runtime):
    await started_loop_queue(runtime)
    body = body_of("p", SPEC)
    await handlers.reconcile_peering(name="p", namespace="prod", spec=SPEC, body=body, patch=kopf.Patch(),
                                     reason="create")
    events(runtime)
    bad = {**SPEC, "enforcement": "maybe"}
    patch = kopf.Patch()
    await handlers.reconcile_peering(name="p", namespace="prod", spec=bad, body=body_of("p", bad), patch=patch,
                                     reason="update")
    assert runtime.index.peering(("prod", "p")).enforcement.value == "require"
    assert conditions(patch)["Degraded"]["reason"] == "InvalidSpec"
    assert [e[:2] for e in events(runtime)] == [("Warning", "InvalidSpec")]


async def test_missing_remote_trust_bundle_is_a_reference_problem(runtime):
    await started_loop_queue(runtime)
    spec = {"selector": {}, "peers": [{"remote": {"name": "east", "cidrs": ["10.8.0.0/16"], "identities": ["*.e"],
                                                  "trustBundle": {"name": "east-ca"}}}]}
    patch = kopf.Patch()
    await handlers.reconcile_peering(name="r", namespace="prod", spec=spec, body=body_of("r", spec), patch=patch,
                                     reason="create")
    assert conditions(patch)["Degraded"]["reason"] == "ReferenceProblem"
    assert "east-ca" in conditions(patch)["Degraded"]["message"]
    runtime.kube.configmaps[("prod", "east-ca")] = {"ca.crt": runtime.ca.trust_bundle(time.time())[0]}
    patch = kopf.Patch()
    await handlers.reconcile_peering(name="r", namespace="prod", spec=spec, body=body_of("r", spec), patch=patch,
                                     reason="update")
    assert conditions(patch)["Degraded"]["status"] == "False"


async def test_unchanged_status_is_not_rewritten(runtime):
    await started_loop_queue(runtime)
    body = body_of("p", SPEC)
    first = kopf.Patch()
    await handlers.reconcile_peering(name="p", namespace="prod", spec=SPEC, body=body, patch=first, reason="create")
    again = kopf.Patch()
    settled = body_of("p", SPEC, status=dict(first.status))
    await handlers.maintain_peering(name="p", namespace="prod", spec=SPEC, body=settled, patch=again)
    assert not again.get("status")


async def test_pod_and_namespace_listings_feed_the_mesh_index(runtime):
    feeder = IndexFeeder(runtime)
    pod = pod_body("web-0", "web", "10.0.0.7")
    await feeder._apply_pod(("prod", "web-0"), dict(pod))
    assert runtime.index.pod(("prod", "web-0")).ips == ("10.0.0.7",)
    await feeder._remove_pod(("prod", "web-0"))
    assert runtime.index.pod(("prod", "web-0")) is None
    await feeder._apply_namespace(("", "prod"), {"metadata": {"name": "prod", "labels": {"team": "a"}}})
    assert runtime.index._labels_of_namespace("prod") == {"team": "a", "kubernetes.io/metadata.name": "prod"}


def pod_body(name, app, ip, namespace="prod", sidecar=True):
    spec = {"serviceAccountName": "default"}
    if sidecar:
        spec["initContainers"] = [sidecar_container(OperatorConfig(), "PEM")]
    return kopf.Body({"metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "labels": {"app": app},
                                   "annotations": {"ipsec-mesh.io/injected": "true"}},
                      "spec": spec, "status": {"podIPs": [{"ip": ip}]}})


async def test_concurrent_pod_and_namespace_events_change_the_index_on_the_loop_thread_only(runtime):
    """The index and the watchers' asyncio.Events belong to the event loop's thread alone
    (kopf ran plain `def` index handlers in worker threads): however many events arrive at
    once, the feeder applies them there."""
    await started_loop_queue(runtime)
    spec = {"selector": {"matchLabels": {"app": "web"}},
            "peers": [{"podSelector": {"matchLabels": {"app": "db"}}, "namespaceSelector": {"matchLabels": {"t": "x"}}}]}
    await handlers.reconcile_peering(name="p", namespace="prod", spec=spec, body=body_of("p", spec),
                                     patch=kopf.Patch(), reason="create")
    feeder = IndexFeeder(runtime)
    await feeder._apply_pod(("prod", "web-w"), dict(pod_body("web-w", "web", "10.1.0.1")))
    loop_thread, threads = threading.get_ident(), set()
    runtime.index.listeners.append(lambda pods: threads.add(threading.get_ident()))
    watched = ("prod", "web-w")
    watcher = asyncio.create_task(runtime.wait_for_peer_map(watched, runtime.index.version(watched), 30))
    await asyncio.sleep(0)
    count = 60
    calls = [feeder._apply_namespace(("", f"db{i}"), {"metadata": {"name": f"db{i}", "labels": {"t": "x"}}})
             for i in range(count)]
    calls += [feeder._apply_pod((f"db{i}", f"db-{i}"), dict(pod_body(f"db-{i}", "db", f"10.2.{i}.1", f"db{i}")))
              for i in range(count)]
    calls += [feeder._remove_pod((f"db{i}", f"db-{i}")) for i in range(0, count, 2)]
    await asyncio.gather(*calls)
    assert threads == {loop_thread}
    assert runtime.index.peer_pods(("prod", "p")) == {(f"db{i}", f"db-{i}") for i in range(1, count, 2)}
    changed = await asyncio.wait_for(watcher, 5)
    assert changed is not None and changed.version > 0
def _service(ports, name="db"):
    return kopf.Body({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "prod"},
                      "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ports": ports}})


def test_service_and_endpoint_slice_events_feed_the_peer_maps_and_bad_objects_are_logged_once(runtime, caplog):
    for name, app, ip in (("web-0", "web", "10.0.0.1"), ("db-0", "db", "10.0.0.2")):
        runtime.index.upsert_pod(PodInfo("prod", name, f"u-{name}", "default", {"app": app}, (ip,)))
    runtime.index.upsert_peering(parse_peering("prod", "p", SPEC))
    slice_ = kopf.Body({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                        "metadata": {"name": "db-x1", "namespace": "prod",
                                     "labels": {"kubernetes.io/service-name": "db"}},
                        "ports": [{"name": "pg", "port": 5433, "protocol": "TCP"}],
                        "endpoints": [{"addresses": ["10.0.0.2"], "conditions": {"ready": True}}]})
    runtime.apply_service_event("Service", None, _service([{"name": "pg", "port": 5432, "targetPort": "pg"}]))
    runtime.apply_service_event("EndpointSlice", "ADDED", slice_)

    def listed():
        return [(s.key, [(str(e.address), e.port, e.peer) for p in s.ports for e in p.endpoints])
                for s in runtime.index.peer_map(("prod", "web-0")).services]

    assert listed() == [("prod/db", [("10.0.0.2", 5433, True)])]
    # A malformed edit: left out (and the earlier version with it), one warning however often it is seen.
    bad = _service([{"name": "pg", "port": 70000}])
    with caplog.at_level("WARNING", logger="ipsec_mesh_operator"):
        for _ in range(3):
            runtime.apply_service_event("Service", "MODIFIED", bad)
    assert listed() == []
    assert [r.getMessage() for r in caplog.records if "left out" in r.getMessage()] == [
        "Service prod/db left out of the peer maps: spec.ports[0].port: must be within 1..65535"]
    runtime.apply_service_event("Service", "MODIFIED", _service([{"name": "pg", "port": 5432}]))
    assert listed() == [("prod/db", [("10.0.0.2", 5433, True)])]
    runtime.apply_service_event("EndpointSlice", "DELETED", slice_)
    assert listed() == []
    runtime.apply_service_event("Service", "DELETED", _service([]))
    assert runtime.index.services.service(("prod", "db")) is None


def test_replicas_with_kopf_peering_draw_distinct_priorities_and_standalone_keeps_zero():
    drawn = set()
    for _ in range(20):
        settings = kopf.OperatorSettings()
        settings.peering.mandatory = True  # what `kopf run --peering=NAME` sets
        handlers.draw_peering_priority(settings)
        drawn.add(settings.peering.priority)
    assert len(drawn) == 20 and min(drawn) > 0
    settings = kopf.OperatorSettings()
    settings.peering.mandatory, settings.peering.priority = True, 7  # an explicit --priority wins
    handlers.draw_peering_priority(settings)
    assert settings.peering.priority == 7
    settings = kopf.OperatorSettings()
    handlers.draw_peering_priority(settings)
    assert settings.peering.priority == 0


async def test_only_pods_with_the_injected_sidecar_are_counted_as_meshed(runtime):
    import jsonpatch

    from ipsec_mesh_operator.server.admission import injection_patch
    feeder = IndexFeeder(runtime)
    forged = pod_body("fake-0", "web", "10.3.0.1", sidecar=False)  # the annotation, but no sidecar
    await feeder._apply_pod(("prod", "fake-0"), dict(forged))
    assert runtime.index.pod(("prod", "fake-0")) is None
    lookalike = dict(pod_body("fake-1", "web", "10.3.0.2"))
    lookalike["spec"] = dict(lookalike["spec"])
    lookalike["spec"]["initContainers"] = [{"name": "ipsec-mesh", "image": "busybox", "command": ["sleep", "inf"],
                                            "restartPolicy": "Always"}]
    await feeder._apply_pod(("prod", "fake-1"), lookalike)
    assert runtime.index.pod(("prod", "fake-1")) is None
    plain = {"metadata": {"name": "web-1", "namespace": "prod", "uid": "u1", "labels": {"app": "web"}},
             "spec": {"containers": [{"name": "app", "image": "app"}]},
             "status": {"podIPs": [{"ip": "10.3.0.3"}]}}
    injected = jsonpatch.apply_patch(plain, injection_patch(plain, runtime.config, "PEM"))
    await feeder._apply_pod(("prod", "web-1"), injected)
    assert runtime.index.pod(("prod", "web-1")) is not None


async def test_a_remote_secret_reference_reaches_only_secrets_that_opted_in(runtime):
    """The confused deputy: a peering naming any Secret of its namespace must not get it served as a PSK."""
    from ipsec_mesh_operator.controller.kube import encode_secret_data
    await started_loop_queue(runtime)
    runtime.index.upsert_pod(PodInfo("prod", "web-0", "u1", "default", {"app": "web"}, ("10.0.0.1",)))
    password = b"hunter2-hunter2-hunter2-hunter2-hunter2"
    runtime.kube.secrets[("prod", "db-credentials")] = {
        "metadata": {"name": "db-credentials", "namespace": "prod", "labels": {}},
        "data": encode_secret_data({"password": password})}
    spec = {"selector": {}, "authentication": {"type": "psk"},
            "peers": [{"remote": {"name": "east", "cidrs": ["10.8.0.0/16"],
                                  "pskSecretRef": {"name": "db-credentials", "key": "password"}}}]}
    patch = kopf.Patch()
    await handlers.reconcile_peering(name="east", namespace="prod", spec=spec, body=body_of("east", spec),
                                     patch=patch, reason="create")
    peer_map = runtime.index.peer_map(("prod", "web-0"))
    assert all(key.secret != password for policy in peer_map.policies for key in policy.psk_keys)
    degraded = conditions(patch)["Degraded"]
    assert degraded["reason"] == "ReferenceProblem" and "ipsec-mesh.io/remote-credentials" in degraded["message"]
    runtime.kube.secrets[("prod", "db-credentials")]["metadata"]["labels"]["ipsec-mesh.io/remote-credentials"] = "true"
    await handlers.reconcile_peering(name="east", namespace="prod", spec=spec, body=body_of("east", spec),
                                     patch=kopf.Patch(), reason="update")
    peer_map = runtime.index.peer_map(("prod", "web-0"))
    assert [key.secret for policy in peer_map.policies for key in policy.psk_keys] == [password]
def _no_passwd_entry():
    raise KeyError("getpwuid(): uid not found: 65532")


def test_a_uid_without_passwd_entry_still_gives_kopf_an_identity(monkeypatch):
    from kopf._core.engines import peering

    monkeypatch.delenv("POD_ID", raising=False)
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):  # getpass reads these before the passwd file
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("getpass.getuser", _no_passwd_entry)
    with pytest.raises(KeyError):
        peering.detect_own_id(manual=False)  # what `kopf run` does after importing the handlers
    handlers.ensure_peering_identity()
    identity = peering.detect_own_id(manual=False)
    assert identity.startswith("uid-") and str(os.getpid()) in identity


def test_pod_id_set_by_the_chart_is_kept(monkeypatch):
    monkeypatch.setenv("POD_ID", "ipsec-mesh-operator-5d9c7b-x7k2p")
    monkeypatch.setattr("getpass.getuser", _no_passwd_entry)
    handlers.ensure_peering_identity()
    assert os.environ["POD_ID"] == "ipsec-mesh-operator-5d9c7b-x7k2p"


async def test_a_federated_remote_reports_its_bundle_and_staleness_in_the_status(runtime):
    from ipsec_mesh_operator.controller.federation import Bundle, BundleError

    await started_loop_queue(runtime)
    bootstrap = runtime.ca.trust_bundle(time.time())
    fetched = CertificateAuthority.create(time.time(), 86400, 86400 * 365).trust_bundle(time.time())
    answers = [Bundle(fetched, 4, None), BundleError("unreachable", "cannot connect: refused")]
    trusted_by_call = []

    async def fetch(url, trusted, trust_domain, now, timeout):
        trusted_by_call.append(trusted)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    runtime.federation.fetch = fetch
    runtime.kube.configmaps[("prod", "east-bootstrap")] = {"ca.crt": bootstrap[0]}
    spec = {"selector": {}, "peers": [{"remote": {
        "name": "east", "cidrs": ["10.8.0.0/16"], "identities": ["*.east.example"],
        "federation": {"endpoint": "https://192.0.2.1:8444/spiffe/v1/bundle", "trustDomain": "east.example",
                       "bootstrapBundle": {"name": "east-bootstrap"}, "refreshInterval": "5s"}}}]}
    patch = kopf.Patch()
    await handlers.reconcile_peering(name="r", namespace="prod", spec=spec, body=body_of("r", spec), patch=patch,
                                     reason="create")
    assert conditions(patch)["TrustBundlesFresh"]["status"] == "True"
    [state] = patch.status["federation"]
    assert state["fresh"] and state["sequence"] == 4 and state["authorities"] == 1
    assert runtime.index._remote_bundles[(("prod", "r"), "east")] == fetched
    key = (("prod", "r"), "east")
    runtime.federation.states[key] = dataclasses.replace(runtime.federation.states[key], next_attempt=0.0)
    patch = kopf.Patch()
    await handlers.reconcile_peering(name="r", namespace="prod", spec=spec, body=body_of("r", spec), patch=patch,
                                     reason="update")
    assert conditions(patch)["TrustBundlesFresh"]["reason"] == "Stale"
    assert patch.status["federation"][0]["lastError"].startswith("unreachable")
    assert runtime.index._remote_bundles[(("prod", "r"), "east")] == fetched  # the last good bundle stays
    assert conditions(patch)["Degraded"]["status"] == "False"
    # The first fetch was authenticated by the bootstrap, the next by the bundle fetched before it.
    assert trusted_by_call == [bootstrap, fetched]


async def test_a_new_psk_changes_the_peering_status_so_other_replicas_adopt_it_before_it_is_used(runtime):
    """Other replicas read a PSK Secret on each change of its peering (they may not watch Secrets
    cluster-wide). A new key used to change nothing in the peering until it became the one to
    initiate with: replicas listed it up to a key check late, after sidecars may have used it."""
    await started_loop_queue(runtime)
    now = [1_000_000.0]
    runtime.clock = lambda: now[0]
    spec = {**SPEC, "authentication": {"type": "psk", "pskRotationInterval": "2h", "pskOverlap": "1h"}}
    first = kopf.Patch()
    await handlers.reconcile_peering(name="p", namespace="prod", spec=spec, body=body_of("p", spec), patch=first,
                                     reason="create")
    [old] = first.status["pskKeys"]
    assert first.status["pskKeyId"] == old
    follower = OperatorRuntime(OperatorConfig(), runtime.kube, clock=runtime.clock)  # the same API server
    follower.index.upsert_pod(PodInfo("prod", "web-0", "u1", "default", {"app": "web"}, ("10.0.0.1",)))
    follower.index.upsert_pod(PodInfo("prod", "db-0", "u2", "default", {"app": "db"}, ("10.0.0.2",)))
    feeder = IndexFeeder(follower)
    await feeder._apply_peering(("prod", "p"), body_of("p", spec, status=dict(first.status)))

    def follower_keys():
        return {(k.id, k.initiate) for p in follower.index.peer_map(("prod", "web-0")).policies for k in p.psk_keys}

    assert follower_keys() == {(old, True)}
    now[0] += 2 * 3600 + 1  # the writer's next round generates a key, accepted before it is initiated with
    second = kopf.Patch()
    await handlers.maintain_peering(name="p", namespace="prod", spec=spec, patch=second,
                                    body=body_of("p", spec, status=dict(first.status)))
    assert "pskKeyId" not in second.status  # unchanged: not used yet...
    new = next(k for k in second.status["pskKeys"] if k != old)
    assert second.status["pskKeys"] == [new, old]  # ...but the peering changed: its watch fires everywhere
    await feeder._apply_peering(("prod", "p"), body_of("p", spec, status={**first.status, **second.status}))
    assert follower_keys() == {(new, False), (old, True)}


async def test_peerings_outside_the_granted_secret_namespaces_are_told_why_and_no_secret_is_touched(runtime):
    """Chart value rbac.secretNamespaces: the operator may use Secrets only there. A PSK peering or a
    Secret reference elsewhere gets a status that says so, and no API call that RBAC would refuse."""
    await started_loop_queue(runtime)
    runtime.config = dataclasses.replace(runtime.config, secret_namespaces=("shop",))
    reads = []
    read = runtime.kube.read_secret

    async def counted_read(namespace, name):
        reads.append(namespace)
        return await read(namespace, name)
    runtime.kube.read_secret = counted_read
    spec = {"selector": {}, "authentication": {"type": "psk"},
            "peers": [{"remote": {"name": "east", "cidrs": ["10.8.0.0/16"],
                                  "pskSecretRef": {"name": "east-psk", "key": "psk"}}}]}
    patch = kopf.Patch()
    await handlers.reconcile_peering(name="east", namespace="prod", spec=spec, body=body_of("east", spec),
                                     patch=patch, reason="create")
    assert reads == [] and runtime.kube.secrets == {}  # nothing asked of the API server in "prod"
    found = conditions(patch)
    assert found["KeysIssued"]["status"] == "False" and found["KeysIssued"]["reason"] == "SecretsNotGranted"
    assert "rbac.secretNamespaces" in found["KeysIssued"]["message"]
    assert found["Degraded"]["reason"] == "ReferenceProblem" and "not granted" in found["Degraded"]["message"]
    assert found["Ready"]["status"] == "False"
    body = body_of("p", {**SPEC, "authentication": {"type": "psk"}})
    body["metadata"]["namespace"] = "shop"
    patch = kopf.Patch()
    await handlers.reconcile_peering(name="p", namespace="shop", spec=body["spec"], body=body, patch=patch,
                                     reason="create")
    assert ("shop", "p-psk") in runtime.kube.secrets and conditions(patch)["KeysIssued"]["reason"] == "PskIssued"
