"""`explain`: every reason, from sidecar statuses of real agents and peer maps of the real MeshIndex."""

import asyncio
import dataclasses
import json

import pytest

from ipsec_mesh_operator.cli.diagnose import Reason, RemoteTarget, Traffic, explain, explain_remote, explain_service
from ipsec_mesh_operator.cli.facts import Facts, PeeringFacts, PeerMapView, PodFacts, ServiceFacts
from ipsec_mesh_operator.cli.overview import overview
from ipsec_mesh_operator.controller.index import MeshIndex, PodInfo
from ipsec_mesh_operator.model.peering import parse_peering
from tests.support import sidecar_statuses as scenarios

A, B = ("prod", "web-0"), ("prod", "db-0")
WEB_DB = {"selector": {"matchLabels": {"app": "web"}}, "peers": [{"podSelector": {"matchLabels": {"app": "db"}}}],
          "authentication": {"type": "psk"}}
READY_STATUS = {"members": 1, "peers": 1, "establishedSAs": 1, "conditions": [
    {"type": "Ready", "status": "True", "reason": "Ready", "message": "1 member pod(s), 1 peer pod(s)"},
    {"type": "KeysIssued", "status": "True", "reason": "PskIssued", "message": "key k1"}]}


@pytest.fixture(scope="module")
def statuses():
    return asyncio.run(scenarios.all_scenarios())


def pod_body(name, ip, app, *, injected=True, labels=None):
    containers = [{"name": "app", "image": "app"}]
    init = [{"name": "ipsec-mesh", "image": "mesh", "restartPolicy": "Always"}] if injected else []
    return {
        "metadata": {"name": name, "namespace": "prod", "labels": {"app": app, **(labels or {})},
                     "annotations": {"ipsec-mesh.io/injected": "true"} if injected else {}},
        "spec": {"initContainers": init, "containers": containers},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def facts(statuses=None, *, spec=WEB_DB, peering_status=READY_STATUS, pods=None, peer_maps=None,
          namespaces=None, collected_at=0.0):
    a_status, b_status = statuses or ({"ready": True}, {"ready": True})
    pods = pods or [PodFacts.from_pod(pod_body("web-0", scenarios.A_IP, "web"), a_status),
                    PodFacts.from_pod(pod_body("db-0", scenarios.B_IP, "db"), b_status)]
    peerings = (PeeringFacts("prod", "web-db", spec, peering_status),) if spec is not None else ()
    return Facts({p.key: p for p in pods}, peerings,
                 namespaces=namespaces or {"prod": {"ipsec-mesh.io/inject": "enabled"}}, peer_maps=peer_maps,
                 collected_at=collected_at)


def operator_peer_maps(*specs, applied=None):
    """Peer maps the real MeshIndex builds for web-0 and db-0 under the given peering specs.

    `applied` (the two sidecars' statuses): the maps carry the versions those sidecars report,
    as when they run the operator's current maps (the index numbers maps by the wall clock).
    """
    index = MeshIndex("mesh.test")
    index.upsert_pod(PodInfo("prod", "web-0", "u1", "default", {"app": "web"}, (scenarios.A_IP,)))
    index.upsert_pod(PodInfo("prod", "db-0", "u2", "default", {"app": "db"}, (scenarios.B_IP,)))
    for name, spec in specs:
        index.upsert_peering(parse_peering("prod", name, {**spec, "authentication": {"type": "certificate"}}))
    maps = {key: PeerMapView.from_peer_map(index.peer_map(key)) for key in (A, B)}
    for key, status in zip((A, B), applied or (), strict=False):
        maps[key] = dataclasses.replace(maps[key], version=status["peer_map_version"])
    return maps


def test_encrypted_with_algorithms_spis_and_age(statuses):
    a_status, b_status = statuses["established"]
    verdict = explain(facts((a_status, b_status), collected_at=1000.0), A, B)
    assert verdict.encrypted and verdict.reason is Reason.ENCRYPTED and verdict.traffic is Traffic.ENCRYPTED
    child = a_status["ike_sas"][0]["children"][0]
    by_a = [sa for sa in verdict.sas if sa.reported_by == "prod/web-0"][0]
    assert by_a.esp_algorithm == "aes256gcm16-esn" and by_a.ike_algorithm == a_status["ike_sas"][0]["algorithm"]
    assert (by_a.inbound_spi, by_a.outbound_spi) == (child["inbound_spi"], child["outbound_spi"])
    by_b = [sa for sa in verdict.sas if sa.reported_by == "prod/db-0"][0]
    assert by_b.inbound_spi == by_a.outbound_spi  # the two ends agree
    assert 0 <= by_a.age < 30 and by_a.since == pytest.approx(1000.0 - by_a.age)
    assert verdict.enforcement == "require" and verdict.peerings == ("prod/web-db",)
    # Asked the other way round, the same answer.
    assert explain(facts((a_status, b_status)), B, A).encrypted


def test_encrypted_seen_by_one_side_only_says_so(statuses):
    a_status, _ = statuses["established"]
    _, b_idle = statuses["idle"]
    verdict = explain(facts((a_status, b_idle)), A, B)
    assert verdict.encrypted and any("db-0's sidecar does not list" in d for d in verdict.details)


def test_pod_not_found_and_not_running():
    verdict = explain(facts(), A, ("prod", "ghost"))
    assert verdict.reason is Reason.POD_NOT_FOUND and "prod/ghost" in verdict.summary and not verdict.encrypted
    pending = pod_body("db-0", scenarios.B_IP, "db")
    pending["status"] = {"phase": "Pending"}
    pods = [PodFacts.from_pod(pod_body("web-0", scenarios.A_IP, "web"), {"ready": True}),
            PodFacts.from_pod(pending, None, "no IP")]
    assert explain(facts(pods=pods), A, B).reason is Reason.POD_NOT_RUNNING


@pytest.mark.parametrize("namespace_labels, pod_labels, annotated, expected", [
    ({}, {}, False, "is not opted in"),
    ({"ipsec-mesh.io/inject": "enabled"}, {"ipsec-mesh.io/inject": "false"}, False, "opts out"),
    ({"ipsec-mesh.io/inject": "enabled"}, {}, False, "created before its namespace opted in"),
    ({"ipsec-mesh.io/inject": "enabled"}, {}, True, "marked injected but has no ipsec-mesh container"),
])
def test_no_sidecar_names_the_cause_and_the_command(namespace_labels, pod_labels, annotated, expected):
    body = pod_body("db-0", scenarios.B_IP, "db", injected=False, labels=pod_labels)
    if annotated:
        body["metadata"]["annotations"] = {"ipsec-mesh.io/injected": "true"}
    pods = [PodFacts.from_pod(pod_body("web-0", scenarios.A_IP, "web"), {"ready": True}),
            PodFacts.from_pod(body, None, "no sidecar")]
    verdict = explain(facts(pods=pods, namespaces={"prod": namespace_labels}), A, B)
    assert verdict.reason is Reason.NO_SIDECAR and expected in verdict.summary
    assert verdict.traffic is Traffic.PLAINTEXT
    assert "kubectl" in verdict.action and "db-0" in verdict.action


def test_sidecar_not_ready_or_unreachable(statuses):
    a_status, _ = statuses["idle"]
    pods = [PodFacts.from_pod(pod_body("web-0", scenarios.A_IP, "web"), a_status),
            PodFacts.from_pod(pod_body("db-0", scenarios.B_IP, "db"), None, "HTTP 503: connection refused")]
    verdict = explain(facts(pods=pods), A, B)
    assert verdict.reason is Reason.SIDECAR_NOT_READY and "connection refused" in verdict.summary
    assert "logs" in verdict.action and "-c ipsec-mesh" in verdict.action
    not_ready = dict(a_status, ready=False)
    verdict = explain(facts((not_ready, a_status)), A, B)
    assert verdict.reason is Reason.SIDECAR_NOT_READY and "ready=false" in verdict.summary
    bootstrapping = {"ready": False, "phase": "bootstrapping"}  # the mesh-mode sidecar before its first map
    assert "phase bootstrapping" in explain(facts((a_status, bootstrapping)), A, B).summary


def test_no_peering_lists_what_selects_each_side(statuses):
    other = {"selector": {"matchLabels": {"app": "web"}}, "peers": [{"podSelector": {"matchLabels": {"app": "cache"}}}]}
    verdict = explain(facts(statuses["idle"], spec=other), A, B)
    assert verdict.reason is Reason.NO_PEERING and verdict.traffic is Traffic.PLAINTEXT
    assert "prod/web-0: member of prod/web-db" in verdict.details
    assert "prod/db-0: selected by no peering" in verdict.details
    assert explain(facts(statuses["idle"], spec=None), A, B).reason is Reason.NO_PEERING


def test_invalid_peering_is_reported_as_ignored(statuses):
    broken = dict(WEB_DB, proposals={"ike": ["aes128cbc-sha1-modp1024"]})
    verdict = explain(facts(statuses["idle"], spec=broken), A, B)
    assert verdict.reason is Reason.NO_PEERING
    assert any("invalid and ignored" in d and "aes128cbc" in d for d in verdict.details)


def test_cross_namespace_pairs_need_the_other_namespace_s_consent(statuses):
    a_status, b_status = statuses["established"]
    spec = {"selector": {"matchLabels": {"app": "web"}},
            "peers": [{"podSelector": {"matchLabels": {"app": "db"}},
                       "namespaceSelector": {"matchLabels": {"team": "data"}}}]}
    consent = {"selector": {"matchLabels": {"app": "db"}},
               "peers": [{"podSelector": {"matchLabels": {"app": "web"}},
                          "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "prod"}}}]}
    db = pod_body("db-0", scenarios.B_IP, "db")
    db["metadata"]["namespace"] = "data"
    pods = [PodFacts.from_pod(pod_body("web-0", scenarios.A_IP, "web"), a_status), PodFacts.from_pod(db, b_status)]
    labelled = {"prod": {"ipsec-mesh.io/inject": "enabled", "kubernetes.io/metadata.name": "prod"},
                "data": {"ipsec-mesh.io/inject": "enabled", "team": "data"}}
    one_side = facts(spec=spec, pods=pods, namespaces=labelled)
    verdict = explain(one_side, A, ("data", "db-0"))
    assert verdict.reason is Reason.ONE_SIDED and "nothing in namespace data consents" in verdict.summary
    assert "in namespace data, create an IPsecPeering" in verdict.action and verdict.traffic is Traffic.BLOCKED
    both = dataclasses.replace(one_side, peerings=one_side.peerings + (PeeringFacts("data", "db-web", consent),))
    verdict = explain(both, A, ("data", "db-0"))
    assert verdict.encrypted and verdict.peerings == ("data/db-web", "prod/web-db")  # equal strictness: by name
    # The prod side stops selecting data: now data's peering is the one-sided one.
    relabelled = dataclasses.replace(both, namespaces={**labelled, "data": {"ipsec-mesh.io/inject": "enabled"}})
    verdict = explain(relabelled, ("data", "db-0"), A)
    assert verdict.reason is Reason.ONE_SIDED and "nothing in namespace prod consents" in verdict.summary


def test_the_strictest_covering_peering_governs_enforcement(statuses):
    prefer = dict(WEB_DB, enforcement="prefer")
    require = dict(WEB_DB, authentication={"type": "certificate"})
    base = facts(statuses["idle"])
    both = dataclasses.replace(base, peerings=(PeeringFacts("prod", "a-prefer", prefer),
                                               PeeringFacts("prod", "z-require", require)))
    verdict = explain(both, A, B)
    assert verdict.enforcement == "require" and verdict.peerings == ("prod/z-require", "prod/a-prefer")
    assert verdict.reason is Reason.NO_SA_YET


def test_psk_peering_without_keys_is_not_ready(statuses):
    pending = {"conditions": [{"type": "KeysIssued", "status": "False", "reason": "KeysPending",
                               "message": "Secret not created yet"}]}
    verdict = explain(facts(statuses["idle"], peering_status=pending), A, B)
    assert verdict.reason is Reason.PEERING_NOT_READY and "Secret not created yet" in verdict.summary
    assert verdict.traffic is Traffic.BLOCKED


def test_one_sided_peer_maps_from_the_operator_index(statuses):
    maps = operator_peer_maps(("web-db", WEB_DB), applied=statuses["timed_out"])
    assert explain(facts(statuses["timed_out"], peer_maps=maps), A, B).reason is Reason.TIMEOUT
    # db-0's map lost web-0 (e.g. its namespace withdrew consent): the operator's index without the peering.
    maps[B] = operator_peer_maps(applied=statuses["timed_out"])[B]
    verdict = explain(facts(statuses["timed_out"], peer_maps=maps), A, B)
    assert verdict.reason is Reason.ONE_SIDED
    assert "prod/web-0's peer map lists prod/db-0, but prod/db-0's does not" in verdict.summary
    assert "consent" in verdict.action
    neither = operator_peer_maps()
    assert "neither" in explain(facts(statuses["idle"], peer_maps=neither), A, B).summary


def test_sidecar_behind_the_operator_map_is_one_sided(statuses):
    maps = operator_peer_maps(("web-db", WEB_DB))
    maps[B] = dataclasses.replace(maps[B], version=statuses["idle"][1]["peer_map_version"] + 5)
    verdict = explain(facts(statuses["idle"], peer_maps=maps), A, B)
    assert verdict.reason is Reason.ONE_SIDED and "runs peer map v3" in verdict.summary


def test_sidecar_that_refused_its_peer_map_says_why(statuses):
    a_status, b_status = statuses["idle"]
    refused = dict(b_status, mesh={"applied_version": 3, "refused": {"version": 4, "error": "peering prod/x: bad"}})
    verdict = explain(facts((a_status, refused)), A, B)
    assert verdict.reason is Reason.ONE_SIDED and "refused peer map v4: peering prod/x: bad" in verdict.summary


def test_auth_failure(statuses):
    verdict = explain(facts(statuses["auth_failed"]), A, B)
    assert verdict.reason is Reason.AUTH_FAILED and verdict.traffic is Traffic.BLOCKED
    assert any("PSK AUTH does not match" in d for d in verdict.details)
    assert "same key" in verdict.action and "peer_map_version" in verdict.action


def test_no_proposal_chosen_shows_the_proposals(statuses):
    verdict = explain(facts(statuses["no_proposal_chosen"]), A, B)
    assert verdict.reason is Reason.NO_PROPOSAL_CHOSEN
    assert any("esp ['aes256gcm16-esn']" in d for d in verdict.details)
    assert "proposals" in verdict.action


def test_timeout_mentions_refusals_of_the_silent_side(statuses):
    verdict = explain(facts(statuses["timed_out"]), A, B)
    assert verdict.reason is Reason.TIMEOUT and "no response to IKE_SA_INIT" in verdict.summary
    assert "prod/db-0's sidecar refused 1 IKE request(s)" in verdict.details[-1]
    # The same, asked from the other end: still the silent side's counter.
    assert "prod/db-0's sidecar refused" in explain(facts(statuses["timed_out"]), B, A).details[-1]
    assert "UDP 500 and 4500" in verdict.action


def test_other_failures_fall_back_to_negotiation_failed(statuses):
    a_status, b_status = statuses["idle"]
    record = {"reason": "ts_unacceptable", "message": "CHILD_SA prod/web-db refused: TS_UNACCEPTABLE", "at": 5,
              "count": 2}
    verdict = explain(facts((dict(a_status, last_failures={scenarios.B_IP: record}), b_status)), A, B)
    assert verdict.reason is Reason.NEGOTIATION_FAILED and "x2" in verdict.details[0]


def test_negotiating(statuses):
    assert explain(facts(statuses["connecting"]), A, B).reason is Reason.NEGOTIATING


def test_nothing_tried_yet_and_plaintext_fallback(statuses):
    verdict = explain(facts(statuses["idle"]), A, B)
    assert verdict.reason is Reason.NO_SA_YET and verdict.traffic is Traffic.BLOCKED
    assert f"ping -c1 {scenarios.B_IP}" in verdict.action
    prefer = dict(WEB_DB, enforcement="prefer")
    verdict = explain(facts(statuses["idle_prefer"], spec=prefer), A, B)
    assert verdict.reason is Reason.PLAINTEXT_FALLBACK and verdict.traffic is Traffic.PLAINTEXT
    assert verdict.enforcement == "prefer"
    # A failure under prefer: the reason is the failure, the traffic still plaintext.
    verdict = explain(facts(statuses["auth_failed"], spec=prefer), A, B)
    assert verdict.reason is Reason.AUTH_FAILED and verdict.traffic is Traffic.PLAINTEXT


def test_a_success_clears_the_failure_record(statuses):
    assert statuses["established"][0]["last_failures"] == {}
    assert statuses["auth_failed"][0]["last_failures"][scenarios.B_IP]["count"] == 1


def test_verdict_to_dict_is_json_ready(statuses):
    import json

    out = json.loads(json.dumps(explain(facts(statuses["established"]), A, B).to_dict()))
    assert out["encrypted"] is True and out["reason"] == "encrypted" and out["sas"][0]["esp_algorithm"]


def test_overview_lists_members_peers_and_uninjected_pods(statuses):
    lone = PodFacts.from_pod(pod_body("db-1", "10.9.9.9", "db", injected=False))
    base = facts(statuses["established"])
    result = overview(dataclasses.replace(base, pods={**base.pods, lone.key: lone}))
    (entry,) = result
    assert entry.ref == "prod/web-db" and entry.members == ("prod/web-0",) and entry.peers == ("prod/db-0",)
    assert entry.not_injected == ("prod/db-1",) and entry.ready == "True" and entry.established_sas == 1
    assert entry.to_dict()["conditions"][0]["type"] == "Ready"


def test_operator_lists_and_settings_stand_in_for_a_spec(statuses):
    """The standalone admin API gives members/peers/auth/enforcement and map versions, not specs."""
    listed = PeeringFacts("prod", "web-db", {}, {"establishedSAs": 0}, members=("prod/web-0",),
                          peers=("prod/db-0",), auth="psk", enforcement="prefer")
    base = facts(statuses["auth_failed"])
    verdict = explain(dataclasses.replace(base, peerings=(listed,)), A, B)
    assert verdict.reason is Reason.AUTH_FAILED and verdict.enforcement == "prefer" and "same key" in verdict.action
    unlisted = dataclasses.replace(listed, peers=())
    assert explain(dataclasses.replace(base, peerings=(unlisted,)), A, B).reason is Reason.NO_PEERING
    # Two listed peerings: the reported settings decide which governs (require before prefer).
    stricter = dataclasses.replace(listed, name="z-strict", enforcement="require")
    verdict = explain(dataclasses.replace(base, peerings=(listed, stricter)), A, B)
    assert verdict.peerings == ("prod/z-strict", "prod/web-db") and verdict.enforcement == "require"
    behind = dataclasses.replace(base, peerings=(listed,), map_versions={B: 9})
    assert "runs peer map v3; the operator has v9" in explain(behind, A, B).summary


# ---- a pod and a Service ---------------------------------------------------------------

SVC = ("prod", "db")


def db_service(endpoints, spec=None):
    service = {"metadata": {"name": "db", "namespace": "prod"},
               "spec": spec or {"clusterIP": "10.96.0.10", "ports": [{"name": "pg", "port": 5432}]}}
    slices = [{"addressType": "IPv4", "metadata": {"name": "db-1", "namespace": "prod",
                                                   "labels": {"kubernetes.io/service-name": "db"}},
               "ports": [{"name": "pg", "port": 5433}], "endpoints": endpoints}]
    return ServiceFacts.from_objects(service, slices)


# The sidecar scenarios run on loopback, which no EndpointSlice may list: the same documents, moved.
A_SVC_IP, B_SVC_IP = "10.1.0.1", "10.1.0.2"


def moved(pair):
    text = json.dumps(pair).replace(f'"{scenarios.A_IP}', f'"{A_SVC_IP}').replace(f'"{B_SVC_IP}', f'"{B_SVC_IP}')
    return tuple(json.loads(text))


def service_facts(pair=None, **kwargs):
    a_status, b_status = moved(pair) if pair else ({"ready": True}, {"ready": True})
    pods = [PodFacts.from_pod(pod_body("web-0", A_SVC_IP, "web"), a_status),
            PodFacts.from_pod(pod_body("db-0", B_SVC_IP, "db"), b_status)]
    return facts(pods=pods, **kwargs)


def with_service(base, service):
    return dataclasses.replace(base, services={SVC: service})


def test_service_whose_only_endpoint_is_an_encrypted_peer(statuses):
    verdict = explain_service(with_service(service_facts(statuses["established"]), db_service(
        [{"addresses": [B_SVC_IP]}])), A, SVC)
    assert verdict.encrypted and verdict.traffic is Traffic.ENCRYPTED
    [endpoint] = verdict.endpoints
    assert (endpoint.pod, endpoint.peer, endpoint.ports, endpoint.verdict.reason) == (
        "prod/db-0", True, ((5432, 5433),), Reason.ENCRYPTED)
    assert verdict.to_dict()["endpoints"][0]["encrypted"] is True


def test_service_with_an_endpoint_that_is_no_peer_is_partly_plaintext(statuses):
    base = service_facts(statuses["established"])
    other = PodFacts.from_pod(pod_body("other-0", "10.9.9.9", "other"), {"ready": True})
    base = dataclasses.replace(base, pods={**base.pods, other.key: other})
    verdict = explain_service(with_service(base, db_service(
        [{"addresses": [B_SVC_IP]}, {"addresses": ["10.9.9.9"]}, {"addresses": ["10.9.9.8"]}])), A, SVC)
    assert verdict.reason is Reason.ENDPOINTS_NOT_PEERS and verdict.traffic is Traffic.PLAINTEXT
    assert [(e.address, e.pod, e.peer) for e in verdict.endpoints] == [
        (B_SVC_IP, "prod/db-0", True), ("10.9.9.8", None, False), ("10.9.9.9", "prod/other-0", False)]
    assert "2 of 3 serving endpoint(s)" in verdict.summary
    # A not-serving stranger does not count: new connections never go there.
    verdict = explain_service(with_service(base, db_service(
        [{"addresses": [B_SVC_IP]}, {"addresses": ["10.9.9.9"], "conditions": {"ready": False}}])), A, SVC)
    assert verdict.encrypted


def test_service_without_peer_endpoints_is_not_in_the_map(statuses):
    verdict = explain_service(with_service(service_facts(statuses["established"], spec=None), db_service(
        [{"addresses": [B_SVC_IP]}])), A, SVC)
    assert verdict.reason is Reason.NO_PEER_ENDPOINTS and verdict.traffic is Traffic.PLAINTEXT
    assert verdict.endpoints[0].verdict.reason is Reason.NO_PEERING


def test_service_whose_peer_endpoint_is_not_encrypted_yet_says_why(statuses):
    verdict = explain_service(with_service(service_facts(), db_service([{"addresses": [B_SVC_IP]}])), A, SVC)
    assert verdict.reason is Reason.ENDPOINT_NOT_ENCRYPTED and "no SA between" in verdict.summary
    assert verdict.traffic is Traffic.BLOCKED and "send traffic" in verdict.action


@pytest.mark.parametrize("spec, reason, words", [
    ({"clusterIP": "None", "ports": [{"port": 80}]}, Reason.NOT_A_MESH_SERVICE, "headless"),
    ({"type": "ExternalName", "externalName": "x.example"}, Reason.NOT_A_MESH_SERVICE, "ExternalName"),
    ({"clusterIP": "10.96.0.10", "ports": [{"port": 0}]}, Reason.NOT_A_MESH_SERVICE, "cannot use it"),
])
def test_services_the_mesh_does_not_translate(spec, reason, words):
    verdict = explain_service(with_service(service_facts(), db_service([], spec)), A, SVC)
    assert verdict.reason is reason and words in verdict.summary and not verdict.encrypted


def test_missing_service_and_service_without_endpoints():
    assert explain_service(service_facts(), A, SVC).reason is Reason.SERVICE_NOT_FOUND
    assert explain_service(with_service(service_facts(), db_service([])), A, SVC).reason is Reason.NO_ENDPOINTS


def with_translation(base, per_service, last_error=""):
    """The client's (web-0's) sidecar status with the translation figures it reports under dataplane.services."""
    web = base.pods[A]
    status = {**(web.status or {}), "dataplane": {"services": {"last_error": last_error, "per_service": per_service}}}
    return dataclasses.replace(base, pods={**base.pods, A: dataclasses.replace(web, status=status)})


KERNEL_REFUSED = "Could not process rule: No such file or directory"


@pytest.mark.parametrize("per_service, last_error, traffic, words", [
    # The kernel refused the table: the map in force was never installed.
    ({"prod/db": {"translated": False, "current": False, "error": KERNEL_REFUSED}}, KERNEL_REFUSED,
     Traffic.UNKNOWN, KERNEL_REFUSED),
    # Installed, but an older version of it: the last update was refused.
    ({"prod/db": {"translated": True, "current": False, "error": KERNEL_REFUSED}}, KERNEL_REFUSED,
     Traffic.UNKNOWN, KERNEL_REFUSED),
    # The sidecar's map has it, with no usable endpoint: rejected in the pod.
    ({"prod/db": {"translated": False, "current": True, "error": "no ready or serving endpoint"}}, "",
     Traffic.BLOCKED, "no ready or serving endpoint"),
    # The sidecar's map does not list it (yet): its calls go to kube-proxy.
    ({"prod/other": {"translated": True, "current": True, "error": ""}}, "", Traffic.PLAINTEXT,
     "does not list the Service"),
])
def test_service_the_clients_sidecar_does_not_translate_says_so(statuses, per_service, last_error, traffic, words):
    base = with_service(service_facts(statuses["established"]), db_service([{"addresses": [B_SVC_IP]}]))
    verdict = explain_service(with_translation(base, per_service, last_error), A, SVC)
    assert verdict.reason is Reason.SERVICE_NOT_TRANSLATED and not verdict.encrypted
    assert words in verdict.summary and verdict.summary.startswith("the sidecar has not installed the translation: ")
    assert verdict.traffic is traffic and "dataplane.services" in verdict.action


def test_service_translated_by_the_clients_sidecar_and_older_sidecars_are_judged_as_before(statuses):
    base = with_service(service_facts(statuses["established"]), db_service([{"addresses": [B_SVC_IP]}]))
    translated = with_translation(base, {"prod/db": {"translated": True, "current": True, "error": ""}})
    assert explain_service(translated, A, SVC).reason is Reason.ENCRYPTED
    assert explain_service(base, A, SVC).reason is Reason.ENCRYPTED  # no per-Service figures: not judged
    # A hostile or broken status cannot make the verdict carry an unbounded text.
    huge = with_translation(base, {"prod/db": {"translated": False, "current": False, "error": "x" * 100000}})
    assert len(explain_service(huge, A, SVC).summary) < 400


# ---- a pod and a remote cluster's peer (explain_remote) --------------------------------

REMOTE_CIDR = scenarios.B_IP + "/32"  # db-0's address stands for a pod of cluster west
FEDERATION = {"endpoint": "https://192.0.2.10:8444", "trustDomain": "west.example",
              "bootstrapBundle": {"name": "west-bootstrap"}}
TO_WEST = {"selector": {"matchLabels": {"app": "web"}}, "authentication": {"type": "certificate"},
           "peers": [{"remote": {"name": "west", "cidrs": ["127.0.0.0/30", REMOTE_CIDR],
                                 "identities": ["*.prod.pod.west.example"], "federation": FEDERATION}}]}
WEST = ("prod/to-west", "west")


def federation_report(*, fetched_at=None, error=None):
    """status.federation as the operator writes it (RemoteState.to_status of the real Federation)."""
    from ipsec_mesh_operator.controller.federation import RemoteState
    from ipsec_mesh_operator.model.federation_spec import FederationSpec

    spec = FederationSpec(FEDERATION["endpoint"], "west.example", ("ConfigMap", "west-bootstrap", "ca.crt"))
    return [RemoteState(spec, ("pem",), ("pem", "pem2"), fetched_at=fetched_at, last_error=error,
                        failures=0 if error is None else 3).to_status("west")]


def remote_facts(status, *, spec=TO_WEST, report=None, peering_status=None, labels=("web",)):
    pods = [PodFacts.from_pod(pod_body("web-0", scenarios.A_IP, labels[0]), status)]
    status_doc = dict(peering_status or READY_STATUS, federation=report if report is not None
                      else federation_report(fetched_at=990))
    peerings = (PeeringFacts("prod", "to-west", spec, status_doc),)
    return Facts({p.key: p for p in pods}, peerings, namespaces={"prod": {"ipsec-mesh.io/inject": "enabled"}},
                 collected_at=1000.0)


def explain_west(facts_, address=scenarios.B_IP, named=True):
    target = RemoteTarget(*WEST, address) if named else RemoteTarget(address=address)
    return explain_remote(facts_, A, target)


def test_remote_encrypted_names_the_peering_the_peer_identity_and_a_fresh_bundle(statuses):
    a_status, _ = statuses["established"]
    for named in (True, False):
        verdict = explain_west(remote_facts(a_status), named=named)
        assert verdict.encrypted and verdict.peerings == ("prod/to-west",) and verdict.enforcement == "require"
        assert verdict.sas[0].remote_id == a_status["ike_sas"][0]["remote_id"]
        assert verdict.sas[0].remote_id in verdict.summary
        assert any("bundle of west.example" in d and "fresh, fetched 10s ago (2 CA(s))" in d for d in verdict.details)
    assert verdict.b == scenarios.B_IP
    assert explain_west(remote_facts(a_status)).b == f"remote/prod/to-west/west/{scenarios.B_IP}"
    # The whole remote: any SA with an address in its CIDRs.
    assert explain_remote(remote_facts(a_status), A, RemoteTarget(*WEST)).encrypted
    # Another address of the remote: this SA is not with it.
    verdict = explain_west(remote_facts(a_status), address=scenarios.NOBODY_IP)
    assert verdict.reason is Reason.NO_SA_YET and "ping -c1 127.0.0.3" in verdict.action


def test_remote_auth_failure_with_a_stale_bundle_points_at_the_bundle_endpoint(statuses):
    a_status, _ = statuses["auth_failed"]
    stale = federation_report(fetched_at=400, error="unreachable: cannot connect: Connection refused")
    verdict = explain_west(remote_facts(a_status, report=stale))
    assert verdict.reason is Reason.AUTH_FAILED and verdict.traffic is Traffic.BLOCKED
    assert "bundle of remote west is not current" in verdict.action and "TrustBundlesFresh" in verdict.action
    assert any("stale, fetched 600s ago; 3 failed attempt(s), last: unreachable" in d for d in verdict.details)
    never = federation_report(error="untrusted: TLS with the endpoint failed")
    verdict = explain_west(remote_facts(a_status, report=never))
    assert any("never fetched, the members use the bootstrap bundle" in d for d in verdict.details)
    # With a fresh bundle, the hint is the peer's identity and the other side's peering.
    verdict = explain_west(remote_facts(a_status))
    assert verdict.reason is Reason.AUTH_FAILED and "fetched bundle is fresh" in verdict.action
    assert "*.prod.pod.west.example" in verdict.action and "ask ipsec-mesh explain there" in verdict.action


def test_remote_timeout_connecting_idle_and_prefer(statuses):
    verdict = explain_west(remote_facts(statuses["timed_out"][0]))
    assert verdict.reason is Reason.TIMEOUT and "routes and firewalls between the clusters" in verdict.action
    assert explain_west(remote_facts(statuses["connecting"][0])).reason is Reason.NEGOTIATING
    idle = explain_west(remote_facts(statuses["idle"][0]))
    assert idle.reason is Reason.NO_SA_YET and idle.traffic is Traffic.BLOCKED
    prefer = dict(TO_WEST, enforcement="prefer")
    verdict = explain_west(remote_facts(statuses["idle_prefer"][0], spec=prefer))
    assert verdict.reason is Reason.PLAINTEXT_FALLBACK and verdict.traffic is Traffic.PLAINTEXT


def test_remote_not_governed_not_a_member_or_not_usable(statuses):
    a_status, _ = statuses["established"]
    facts_ = remote_facts(a_status)
    missing = explain_remote(facts_, A, RemoteTarget("prod/nope", "west", None))
    assert missing.reason is Reason.REMOTE_NOT_FOUND and "does not exist" in missing.summary
    wrong = explain_remote(facts_, A, RemoteTarget("prod/to-west", "east", None))
    assert wrong.reason is Reason.REMOTE_NOT_FOUND and "its remotes: west" in wrong.summary
    outside = explain_west(facts_, address="10.9.9.9")
    assert outside.reason is Reason.REMOTE_NOT_FOUND and "outside remote west's CIDRs" in outside.summary
    nobody = explain_west(facts_, address="10.9.9.9", named=False)
    assert nobody.reason is Reason.NO_PEERING and nobody.traffic is Traffic.PLAINTEXT
    # The SA is there, but the pod is not a member: the verdict says so before reading SAs.
    outsider = explain_west(remote_facts(a_status, labels=("batch",)), named=False)
    assert outsider.reason is Reason.NO_PEERING and "not a member of prod/to-west" in outsider.summary
    unusable = dict(READY_STATUS, conditions=[{"type": "KeysIssued", "status": "False", "reason": "NoCA",
                                               "message": "mesh CA not loaded"}])
    verdict = explain_west(remote_facts(a_status, peering_status=unusable))
    assert verdict.reason is Reason.PEERING_NOT_READY and "mesh CA not loaded" in verdict.summary
    not_ready = explain_west(remote_facts(dict(a_status, ready=False)))
    assert not_ready.reason is Reason.SIDECAR_NOT_READY


def test_remote_copied_bundle_and_psk_say_what_nobody_can_check(statuses):
    a_status, _ = statuses["auth_failed"]
    copied = {**TO_WEST, "peers": [{"remote": {"name": "west", "cidrs": [REMOTE_CIDR],
                                               "identities": ["*.prod.pod.west.example"],
                                               "trustBundle": {"name": "west-ca"}}}]}
    verdict = explain_west(remote_facts(a_status, spec=copied, report=[]))
    assert verdict.reason is Reason.AUTH_FAILED and "copied trust bundle must be current" in verdict.action
    assert any("copied by hand" in d for d in verdict.details)
    psk = {**TO_WEST, "authentication": {"type": "psk"},
           "peers": [{"remote": {"name": "west", "cidrs": [REMOTE_CIDR], "pskSecretRef": {"name": "west-psk"}}}]}
    verdict = explain_west(remote_facts(a_status, spec=psk, report=[]))
    assert verdict.reason is Reason.AUTH_FAILED and "pskSecretRef" in verdict.action
