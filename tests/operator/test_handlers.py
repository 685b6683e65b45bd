"""kopf handlers as functions: kopf.Body in, kopf.Patch and events out, with an in-memory Kubernetes."""

import asyncio
import os
import time

import kopf
import pytest
from kopf._core.engines import posting

from ipsec_mesh_operator import handlers
from ipsec_mesh_operator.ca import CertificateAuthority
from ipsec_mesh_operator.config import OperatorConfig
from ipsec_mesh_operator.index import PodInfo
from memory_kube import MemoryKube
from ipsec_mesh_operator.runtime import OperatorRuntime


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


def test_pod_index_and_deletion_events_feed_the_mesh_index(runtime):
    pod = kopf.Body({"metadata": {"name": "web-0", "namespace": "prod", "uid": "u", "labels": {"app": "web"}},
                     "spec": {"serviceAccountName": "web"}, "status": {"podIPs": [{"ip": "10.0.0.7"}]}})
    indexed = handlers.injected_pods(body=pod, namespace="prod", name="web-0")
    assert indexed[("prod", "web-0")].ips == ("10.0.0.7",)
    assert runtime.index.pod(("prod", "web-0")).service_account == "web"
    handlers.pod_event(type="DELETED", namespace="prod", name="web-0")
    assert runtime.index.pod(("prod", "web-0")) is None
    handlers.namespace_event(type="ADDED", name="prod", labels={"team": "a"})
    assert runtime.index._labels_of_namespace("prod") == {"team": "a", "kubernetes.io/metadata.name": "prod"}


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
