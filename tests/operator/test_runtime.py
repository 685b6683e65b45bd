"""The operator runtime: CA creation and rotation through Secrets, token caching, status aggregation."""

import time

import pytest
from cryptography import x509

from ipsec_mesh.meshapi.status import PeeringStatus, StatusReport
from ipsec_mesh_operator.controller.index import PodInfo
from ipsec_mesh_operator.controller.runtime import OperatorRuntime
from ipsec_mesh_operator.controller.token_review import TokenAuthenticator, Unauthenticated
from ipsec_mesh_operator.model.peering import parse_peering
from ipsec_mesh_operator.model.peering_status import desired_status
from ipsec_mesh_operator.model.settings import OperatorConfig
from ipsec_mesh_operator.pki.tls import ServingCertificate
from tests.operator.test_keys import IDENTITY, make_csr
from tests.support.fake_tokens import issue, review
from tests.support.memory_kube import MemoryKube


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


CONFIG = OperatorConfig(ca_rotation_interval=1000, ca_propagation=10, max_cert_lifetime=50)


async def test_ca_is_created_once_and_rotation_reaches_peer_maps_before_signing():
    kube, clock = MemoryKube(), Clock(time.time())
    runtime = OperatorRuntime(CONFIG, kube, clock)
    await runtime.load_or_create_ca()
    stored = dict(kube.secrets[(CONFIG.namespace, CONFIG.ca_secret)]["data"])
    again = OperatorRuntime(CONFIG, kube, clock)
    await again.load_or_create_ca()
    assert kube.secrets[(CONFIG.namespace, CONFIG.ca_secret)]["data"] == stored  # restart: same CA
    runtime.index.upsert_pod(PodInfo("prod", "web-0", "u", "web", {"app": "web"}, ("10.0.0.1",)))
    old_ca = runtime.ca.active_certificate(clock.now)
    version = runtime.index.version(("prod", "web-0"))
    tls = ServingCertificate(("localhost",))
    runtime.ca_listeners.append(lambda: tls.refresh(runtime.ca, clock.now))

    clock.now += 1000
    assert await runtime.rotate_ca_if_due()
    assert len(runtime.peer_map(("prod", "web-0")).trust_bundle) == 2
    assert runtime.index.version(("prod", "web-0")) > version
    assert kube.secrets[(CONFIG.namespace, CONFIG.ca_secret)]["data"] != stored
    assert runtime.ca.sign_csr(make_csr()[0], IDENTITY, 50, clock.now).issuer == old_ca.subject
    clock.now += 10
    new_ca = runtime.ca.active_certificate(clock.now)
    assert new_ca != old_ca
    assert runtime.ca.sign_csr(make_csr()[0], IDENTITY, 50, clock.now).issuer == new_ca.subject
    assert tls._issuer_id != runtime.ca.ring.active(clock.now).id
    await runtime.rotate_ca_if_due()  # the listener re-issues the serving certificate from the new CA
    assert tls._issuer_id == runtime.ca.ring.active(clock.now).id
    clock.now += 50
    await runtime.rotate_ca_if_due()
    bundle = runtime.peer_map(("prod", "web-0")).trust_bundle
    assert [x509.load_pem_x509_certificate(p.encode()) for p in bundle] == [new_ca]


async def test_token_reviews_are_cached_and_refusals_briefly():
    calls = []

    class Request:
        def __init__(self, data):
            self.data = data

    async def counting_review(body):
        calls.append(body)
        return review(Request(body))

    clock = Clock(0.0)
    authenticator = TokenAuthenticator(counting_review, "ipsec-mesh", clock)
    token = issue("prod", "web", "web-0", "u")
    for _ in range(3):
        caller = await authenticator.authenticate(f"Bearer {token}")
    assert caller.pod == "web-0" and caller.service_account == "web" and len(calls) == 1
    forged = token + "x"
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            await authenticator.authenticate(f"Bearer {forged}")
    assert len(calls) == 2
    clock.now += 61
    await authenticator.authenticate(f"Bearer {token}")
    assert len(calls) == 3
    for header in (None, "Basic abc", "Bearer ", "Bearer " + "a" * 20000):
        with pytest.raises(Unauthenticated):
            await authenticator.authenticate(header)


async def test_sidecar_reports_roll_up_into_counts_and_degraded():
    clock = Clock(1000.0)
    runtime = OperatorRuntime(OperatorConfig(status_ttl=60), MemoryKube(), clock)
    for name, app in (("web-0", "web"), ("web-1", "web"), ("db-0", "db")):
        runtime.index.upsert_pod(PodInfo("prod", name, "u", "default", {"app": app}, ("10.0.0.1",)))
    runtime.index.upsert_peering(parse_peering("prod", "p", {
        "selector": {"matchLabels": {"app": "web"}}, "peers": [{"podSelector": {"matchLabels": {"app": "db"}}}]}))
    runtime.record_status(("prod", "web-0"), StatusReport(1, (PeeringStatus("prod/p", 1),)))
    runtime.record_status(("prod", "web-1"), StatusReport(1, (PeeringStatus("prod/p", 0, 1, "AUTHENTICATION_FAILED"),)))
    runtime.record_status(("prod", "db-0"), StatusReport(1, (PeeringStatus("prod/other", 7),)))
    health = runtime.health(("prod", "p"))
    assert (health.members, health.peers, health.established_sas, health.reporting) == (2, 1, 1, 3)
    status = desired_status(None, 4, health, [], (True, "MeshCA", "ok"), [])
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Degraded"]["reason"] == "SidecarErrors"
    assert "prod/web-1: AUTHENTICATION_FAILED" in conditions["Degraded"]["message"]
    assert conditions["Ready"]["status"] == "False"
    clock.now += 61  # reports go stale
    health = runtime.health(("prod", "p"))
    assert health.reporting == 0 and health.errors == ()
    status = desired_status(status, 4, health, [], (True, "MeshCA", "ok"), [])
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True", "KeysIssued": "True", "Degraded": "False"}


def test_one_sided_cross_namespace_peering_is_degraded_awaiting_consent_and_sets_no_certificate_lifetime():
    runtime = OperatorRuntime(OperatorConfig(max_cert_lifetime=86400), MemoryKube())
    runtime.index.set_namespace_labels("team-b", {"team": "b"})
    runtime.index.upsert_pod(PodInfo("prod", "web-0", "u", "default", {"app": "web"}, ("10.0.0.1",)))
    runtime.index.upsert_pod(PodInfo("team-b", "api-0", "u", "default", {"app": "api"}, ("10.1.0.1",)))
    runtime.index.upsert_peering(parse_peering("prod", "p", {
        "selector": {"matchLabels": {"app": "web"}}, "authentication": {"certificateLifetime": "10m"},
        "peers": [{"podSelector": {"matchLabels": {"app": "api"}},
                   "namespaceSelector": {"matchLabels": {"team": "b"}}}]}))
    health = runtime.health(("prod", "p"))
    assert health.awaiting_consent == ("team-b",)
    conditions = {c["type"]: c for c in desired_status(None, 1, health, [], (True, "MeshCA", "ok"), [])["conditions"]}
    assert conditions["Degraded"]["reason"] == "AwaitingConsent" and "team-b" in conditions["Degraded"]["message"]
    assert conditions["Ready"]["status"] == "False"
    # prod cannot shorten team-b's certificates either; its own pod follows its peering.
    assert runtime.certificate_lifetime(("team-b", "api-0")) == 86400
    assert runtime.certificate_lifetime(("prod", "web-0")) == 600


def _cross_namespace_runtime():
    runtime = OperatorRuntime(OperatorConfig(), MemoryKube())
    runtime.index.set_namespace_labels("team-b", {"team": "b"})
    runtime.index.upsert_pod(PodInfo("prod", "web-0", "u", "default", {"app": "web"}, ("10.0.0.1",)))
    runtime.index.upsert_pod(PodInfo("prod", "db-0", "u", "default", {"app": "db"}, ("10.0.0.2",)))
    runtime.index.upsert_pod(PodInfo("team-b", "api-0", "u", "default", {"app": "api"}, ("10.1.0.1",)))
    runtime.index.upsert_peering(parse_peering("prod", "p", {
        "selector": {"matchLabels": {"app": "web"}},
        "peers": [{"podSelector": {"matchLabels": {"app": "db"}}},
                  {"podSelector": {"matchLabels": {"app": "api"}}, "namespaceSelector": {"matchLabels": {"team": "b"}}}]}))
    return runtime


def test_a_pod_reports_only_on_peerings_that_govern_it():
    runtime = _cross_namespace_runtime()
    # team-b never consented: prod/p does not govern api-0, so what it says about prod/p is not heard.
    runtime.record_status(("team-b", "api-0"), StatusReport.from_dict({"appliedVersion": 1, "peerings": [
        {"name": "prod/p", "establishedSAs": 5, "failedPeers": 1, "lastError": "forged outage"}]}))
    runtime.record_status(("prod", "db-0"), StatusReport.from_dict({"appliedVersion": 1, "peerings": [
        {"name": "prod/p", "failedPeers": 1, "lastError": "real trouble"},
        {"name": "prod/elsewhere", "failedPeers": 1, "lastError": "not its peering"}]}))
    health = runtime.health(("prod", "p"))
    assert health.errors == ("prod/db-0: real trouble",)
    assert health.reporting == 1
    assert [s.name for s in runtime.reports[("prod", "db-0")][1].peerings] == ["prod/p"]


def test_reported_sa_counts_are_bounded_by_the_pods_peers():
    runtime = _cross_namespace_runtime()
    runtime.record_status(("prod", "web-0"), StatusReport.from_dict({"appliedVersion": 1, "peerings": [
        {"name": "prod/p", "establishedSAs": 1_000_000}]}))
    health = runtime.health(("prod", "p"))
    # web-0 lists one peer (db-0; api-0 has not consented): a handful of CHILD_SAs at most, never a million.
    assert 1 <= health.established_sas <= 16


def test_reported_errors_reach_status_without_control_characters():
    runtime = _cross_namespace_runtime()
    runtime.record_status(("prod", "db-0"), StatusReport.from_dict({"appliedVersion": 1, "peerings": [
        {"name": "prod/p", "failedPeers": 1, "lastError": "bad\n\x1b[2J\rReady=True\u202e\x00"}]}))
    (error,) = runtime.health(("prod", "p")).errors
    assert error.isprintable() and "\x1b" not in error and "\n" not in error
    assert error.startswith("prod/db-0: bad") and "Ready=True" in error


def test_the_peerings_listing_escapes_what_the_cluster_wrote():
    from ipsec_mesh_operator.cli.overview import PeeringOverview
    from ipsec_mesh_operator.cli.render import overview_text
    entry = PeeringOverview(
        ref="prod/p", members=("prod/web-0",), peers=(), not_injected=(), remotes=(), established_sas=1,
        ready="True", conditions=(("Degraded", "True", "SidecarErrors", "x\x1b]0;owned\x07\nReady=True ok"),),
        errors=("prod/web-0: \x1b[31mred\x1b[0m\r\nforged line",))
    text = overview_text([entry])
    assert all(line.isprintable() for line in text.split("\n"))
    assert not any(line.startswith(("Ready=True", "forged")) for line in text.split("\n"))
