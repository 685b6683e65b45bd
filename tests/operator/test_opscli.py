"""`ipsec-mesh explain` / `peerings` against kmock (kubeconfig source) and a standalone operator's overview."""

import asyncio
import contextlib
import json
import os
import threading

import pytest

from ipsec_mesh.meshapi.ports import STATUS_HOST, STATUS_PORT
from ipsec_mesh_operator import main as cli
from ipsec_mesh_operator.cli.diagnose import Reason, explain, explain_service
from ipsec_mesh_operator.cli.overview import overview
from ipsec_mesh_operator.cli.sources import (
    STATUS_COMMAND,
    ClusterSource,
    facts_from_overview,
    service_facts_from_overview,
)
from tests.support import sidecar_statuses as scenarios
from tests.support.kube_harness import running_kube
from tests.support.netns import A4, B4, make_pair, missing_prerequisite

PODS = "/api/v1/namespaces/prod/pods"
PEERINGS = "/apis/ipsec-mesh.io/v1alpha1/namespaces/prod/ipsecpeerings"


@pytest.fixture(scope="module")
def established():
    return asyncio.run(scenarios.established())


def pod(name, ip, app, injected=True):
    body = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "prod", "labels": {"app": app}, "annotations": {}},
            "spec": {"containers": [{"name": "app", "image": "app"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
    if injected:
        body["metadata"]["annotations"]["ipsec-mesh.io/injected"] = "true"
        body["spec"]["initContainers"] = [{"name": "ipsec-mesh", "image": "mesh", "restartPolicy": "Always"}]
    return body


PEERING = {
    "apiVersion": "ipsec-mesh.io/v1alpha1", "kind": "IPsecPeering",
    "metadata": {"name": "web-db", "namespace": "prod"},
    "spec": {"selector": {"matchLabels": {"app": "web"}}, "peers": [{"podSelector": {"matchLabels": {"app": "db"}}}]},
    "status": {"members": 1, "peers": 1, "establishedSAs": 1, "conditions": [
        {"type": "Ready", "status": "True", "reason": "Ready", "message": "1 member pod(s), 1 peer pod(s)"}]},
}


def serve_statuses(monkeypatch, statuses):
    """ClusterSource's exec in a sidecar answers from `statuses` (by pod); returns the pods asked."""
    asked = []

    def exec_in_sidecar(self, namespace, name, command):
        """What the API server's exec would run: the sidecar's own status command, locally."""
        assert command == STATUS_COMMAND
        asked.append((namespace, name))
        document = statuses.get((namespace, name))
        if document is None:
            return b"", "exit 1: cannot reach the sidecar at http://127.0.0.1:9741"
        return json.dumps(document).encode(), ""

    monkeypatch.setattr(ClusterSource, "exec_in_sidecar", exec_in_sidecar)
    return asked


def prod_namespace(emulator):
    emulator["get /api/v1/namespaces/prod"] << {
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "prod", "labels": {"ipsec-mesh.io/inject": "enabled"}}}


def moved(established, addresses):
    """The established pair's status documents with their loopback addresses replaced (an EndpointSlice
    may not list loopback), in the order of `established`."""
    out = []
    for status in established:
        text = json.dumps(status)
        for before, after in addresses.items():
            text = text.replace(f'"{before}', f'"{after}')
        out.append(json.loads(text))
    return out


@pytest.fixture
def kubeconfig(tmp_path, established, monkeypatch):
    a_status, b_status = established
    serve_statuses(monkeypatch, {("prod", "web-0"): a_status, ("prod", "db-0"): b_status})
    with running_kube(prod_namespace) as kube:
        kube.create(PODS, pod("web-0", scenarios.A_IP, "web"))
        kube.create(PODS, pod("db-0", scenarios.B_IP, "db"))
        kube.create(PODS, pod("db-1", "10.1.1.1", "db"))  # no status endpoint answers for it
        kube.create(PODS, pod("legacy-0", "10.1.1.2", "db", injected=False))
        kube.create(PEERINGS, PEERING)
        yield str(kube.write_kubeconfig(tmp_path))


def run(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_explain_encrypted_pair_through_exec_in_the_sidecar(kubeconfig, capsys, established):
    code, out, _ = run(capsys, "explain", "prod/web-0", "prod/db-0", "--kubeconfig", kubeconfig)
    assert code == 0, out
    assert out.startswith("prod/web-0 <-> prod/db-0: ENCRYPTED")
    assert "ESP aes256gcm16-esn" in out and "traffic now: encrypted (enforcement require)" in out
    spi = established[0]["ike_sas"][0]["children"][0]["inbound_spi"]
    assert spi in out and "since 20" in out
    code, out, _ = run(capsys, "explain", "prod/web-0", "prod/db-0", "--kubeconfig", kubeconfig, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["encrypted"] and doc["sas"][0]["inbound_spi"] == spi


@pytest.mark.parametrize("other, reason, words", [
    ("prod/legacy-0", "no-sidecar", "created before its namespace opted in"),
    ("prod/db-1", "sidecar-not-ready", "ipsec-mesh-sidecar status: exit 1: cannot reach the sidecar"),
    ("prod/ghost", "pod-not-found", "does not exist"),
])
def test_explain_not_encrypted_exits_1_with_the_reason(kubeconfig, capsys, other, reason, words):
    code, out, _ = run(capsys, "explain", "prod/web-0", other, "--kubeconfig", kubeconfig)
    assert code == 1
    assert f"NOT ENCRYPTED ({reason})" in out and words in out and "what to do: " in out


def test_peerings_lists_members_peers_and_conditions(kubeconfig, capsys):
    code, out, _ = run(capsys, "peerings", "-n", "prod", "--kubeconfig", kubeconfig)
    assert code == 0
    assert "prod/web-db" in out and "members: prod/web-0" in out and "peers:   prod/db-0, prod/db-1" in out
    assert "without sidecar (not in the mesh): prod/legacy-0" in out and "Ready=True Ready" in out
    assert " SA " not in out  # the sidecars were not asked
    code, out, _ = run(capsys, "peerings", "-A", "--kubeconfig", kubeconfig, "--json")
    (entry,) = json.loads(out)
    assert code == 0 and entry["members"] == ["prod/web-0"] and entry["established_sas"] == 1


def test_peerings_with_sas_asks_the_members_sidecars(kubeconfig, capsys, established):
    code, out, _ = run(capsys, "peerings", "-n", "prod", "--sas", "--kubeconfig", kubeconfig)
    child = established[0]["ike_sas"][0]["children"][0]
    assert code == 0
    assert (f"  SA prod/web-0 <-> {scenarios.B_IP}: ESP aes256gcm16-esn in {child['inbound_spi']} "
            f"out {child['outbound_spi']}") in out


@pytest.mark.parametrize("argv", [
    ["explain", "web-0", "prod/db-0"],
    ["explain", "prod/web-0"],
    ["peerings", "-n", "prod", "-A"],
    ["frobnicate"],
    [],
])
def test_usage_errors_exit_2(capsys, argv):
    assert cli.main(argv) == 2


def test_unreachable_sources_exit_3(tmp_path, capsys):
    code, _, err = run(capsys, "explain", "a/b", "c/d", "--standalone", str(tmp_path))
    assert code == 3 and "state directory" in err
    config = tmp_path / "kubeconfig"
    config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "u"}}]}))
    code, _, err = run(capsys, "peerings", "--kubeconfig", str(config))
    assert code == 3 and "cannot reach the API server" in err


def test_standalone_overview_feeds_the_diagnosis(established):
    """A document shaped as the standalone operator's GET /v1/admin/overview."""
    document = {
        "trustDomain": "mesh.test", "ca": None,
        "pods": [
            {"namespace": "prod", "name": "web-0", "serviceAccount": "default", "identity": "x", "ips": [scenarios.A_IP],
             "peerMapVersion": 3, "peerings": ["prod/web-db"], "certificate": None, "lastReport": None,
             "netns": "ns-web"},
            {"namespace": "prod", "name": "db-0", "serviceAccount": "default", "identity": "y", "ips": [scenarios.B_IP],
             "peerMapVersion": 3, "peerings": ["prod/web-db"], "certificate": None, "lastReport": None,
             "netns": "ns-db"},
        ],
        "peerings": [{"namespace": "prod", "name": "web-db", "auth": "psk", "enforcement": "require",
                      "members": ["prod/web-0"], "peers": ["prod/db-0"], "pskKeyId": "k1",
                      "health": {"members": 1, "peers": 1, "established_sas": 1, "reporting": 2, "errors": []}}],
    }
    statuses = {"ns-web": established[0], "ns-db": established[1]}
    asked = []

    def read_status(netns):
        asked.append(netns)
        return statuses[netns], ""

    a, b = ("prod", "web-0"), ("prod", "db-0")
    facts = facts_from_overview(document, {a, b}, None, False, read_status)
    assert explain(facts, a, b).encrypted and sorted(asked) == ["ns-db", "ns-web"]
    document["peerings"][0]["peers"] = []
    assert explain(facts_from_overview(document, {a, b}, None, False, read_status), a, b).reason is Reason.NO_PEERING


@contextlib.contextmanager
def mesh_sidecar_listeners(netns: str, agent, pod_ip: str):
    """A mesh-mode sidecar's two listeners inside `netns`, on a loop of their own: everything on
    127.0.0.1:9741, and only the pod-network routes on the pod address's 15021."""
    from pyroute2 import netns as pyroute2_netns

    from ipsec_mesh.agent.mesh_mode import POD_NETWORK_ROUTES
    from ipsec_mesh.agent.status_server import StatusServer, agent_routes

    started, stop, failed = threading.Event(), threading.Event(), []

    async def serve():
        routes = agent_routes(agent, ready_path="/ready")
        servers = [StatusServer(None, STATUS_HOST, STATUS_PORT, routes=routes),
                   StatusServer(None, pod_ip, 15021, routes={p: routes[p] for p in POD_NETWORK_ROUTES if p in routes})]
        for server in servers:
            await server.start()
        started.set()
        await asyncio.to_thread(stop.wait, 60)
        for server in servers:
            await server.stop()

    def run():
        try:
            pyroute2_netns.setns(netns, flags=0)
            asyncio.run(serve())
        except BaseException as exc:
            failed.append(exc)
            started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(30)
    try:
        assert not failed, failed
        yield
    finally:
        stop.set()
        thread.join(30)


@pytest.mark.skipif(missing_prerequisite() is not None, reason=str(missing_prerequisite()))
async def test_standalone_source_reads_status_inside_the_pods_netns_never_over_the_pod_network(tmp_path):
    """The admin overview over real HTTPS (mesh-CA certificate, bearer token); each sidecar's /status from
    127.0.0.1:9741 inside the network namespace the overview names, as exec does in a cluster."""
    import time

    from aiohttp import web

    from ipsec_mesh.agent.status_server import StatusServer
    from ipsec_mesh_operator.cli.sources import SourceError, StandaloneSource
    from ipsec_mesh_operator.pki.ca import CertificateAuthority
    from ipsec_mesh_operator.pki.tls import ServingCertificate

    now = time.time()
    ca = CertificateAuthority.create(now, 86400, 3 * 86400)
    tls = ServingCertificate(("127.0.0.1",))
    tls.refresh(ca, now)
    pair = make_pair("imsrc")
    ips = (A4, B4)
    # cache-0 serves its full /status on its pod address, as sidecars did before: never asked there.
    cache_ip = f"127.77.{os.getpid() % 200}.3"
    document = {"pods": [{"namespace": "prod", "name": name, "ips": [ip], "peerMapVersion": 7, "netns": netns}
                         for name, ip, netns in (("web-0", A4, pair.a), ("db-0", B4, pair.b), ("cache-0", cache_ip, None),
                                                 ("evil-0", "10.99.0.9", "../../proc/1/ns/net"))],
                "peerings": [{"namespace": "prod", "name": "web-db", "auth": "certificate", "enforcement": "require",
                              "members": ["prod/web-0"], "peers": ["prod/db-0"], "health": {}}]}

    async def handle(request):
        if request.headers.get("Authorization") != "Bearer admin-secret":
            return web.json_response({"error": "no"}, status=401)
        return web.json_response(document)

    app = web.Application()
    app.router.add_get("/v1/admin/overview", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    agents = [scenarios.make_agent(ip, remote) for ip, remote in zip(ips, reversed(ips), strict=True)]
    for agent in agents:
        agent.policies_ready = True  # its status as served once started; no IKE needed here
    cache = StatusServer(scenarios.make_agent(cache_ip, A4), cache_ip, 15021)
    await cache.start()
    try:
        with mesh_sidecar_listeners(pair.a, agents[0], A4), mesh_sidecar_listeners(pair.b, agents[1], B4):
            (tmp_path / "api-url").write_text(f"https://127.0.0.1:{port}\n")
            (tmp_path / "admin-token").write_text("admin-secret\n")
            (tmp_path / "ca-bundle.pem").write_text("".join(ca.trust_bundle(now)))
            source = StandaloneSource(tmp_path)
            keys = [("prod", name) for name in ("web-0", "db-0", "cache-0", "evil-0")]
            facts = await asyncio.to_thread(source.facts, keys)
            assert facts.map_versions[("prod", "web-0")] == 7
            assert facts.pods[("prod", "web-0")].status["addresses"] == [A4]
            assert facts.pods[("prod", "db-0")].status["addresses"] == [B4]
            verdict = explain(facts, ("prod", "web-0"), ("prod", "db-0"))
            (entry,) = overview(facts)
            assert (entry.ref, entry.members, entry.peers) == ("prod/web-db", ("prod/web-0",), ("prod/db-0",))
            # The sidecars run map v3 where the operator has v7: the most specific reason.
            assert verdict.reason is Reason.ONE_SIDED and "runs peer map v3; the operator has v7" in verdict.summary
            cache_facts = facts.pods[("prod", "cache-0")]
            assert cache_facts.status is None and "no network namespace known" in cache_facts.status_error
            evil = facts.pods[("prod", "evil-0")]
            assert evil.status is None and "not a network namespace name" in evil.status_error
            verdict = explain(facts, ("prod", "web-0"), ("prod", "cache-0"))
            assert verdict.reason is Reason.SIDECAR_NOT_READY and "no network namespace known" in verdict.summary
        # A namespace that is gone (or not on this node) is named in the reason.
        pair.close()
        facts = await asyncio.to_thread(source.facts, keys[:1])
        assert "cannot enter network namespace" in facts.pods[("prod", "web-0")].status_error
        (tmp_path / "admin-token").write_text("wrong\n")
        with pytest.raises(SourceError, match="answered 401"):
            await asyncio.to_thread(StandaloneSource(tmp_path).overview)
    finally:
        pair.close()
        await cache.stop()
        await runner.cleanup()


MOVED = {scenarios.A_IP: "10.1.0.1", scenarios.B_IP: "10.1.0.2"}
SERVICES = "/api/v1/namespaces/prod/services"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices"


def endpoint_slice(name, service, *addresses):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": "prod", "labels": {"kubernetes.io/service-name": service}},
            "ports": [{"name": "pg", "port": 5433, "protocol": "TCP"}],
            "endpoints": [{"addresses": [address]} for address in addresses]}


def test_cluster_source_reads_a_service_its_slices_and_the_pods_behind_it(tmp_path, established, monkeypatch):
    """ClusterSource.service_facts against kmock: the Service, its EndpointSlices by the service-name label
    (DiscoveryV1Api), and the client and the pods behind the Service asked for their sidecars' status."""
    a_status, b_status = moved(established, MOVED)
    asked = serve_statuses(monkeypatch, {("prod", "web-0"): a_status, ("prod", "db-0"): b_status})
    with running_kube(prod_namespace) as kube:
        for name, ip, app in (("web-0", "10.1.0.1", "web"), ("db-0", "10.1.0.2", "db"), ("cache-0", "10.1.0.3", "cache")):
            kube.create(PODS, pod(name, ip, app))
        kube.create(PEERINGS, PEERING)
        kube.create(SERVICES, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "prod"},
                               "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                                        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}})
        kube.create(SLICES, endpoint_slice("db-abcde", "db", "10.1.0.2"))
        # Another Service's slice in the same namespace: listed by kmock too (it ignores labelSelector),
        # left out by its label.
        kube.create(SLICES, endpoint_slice("cache-abcde", "cache", "10.1.0.3"))
        source = ClusterSource(str(kube.write_kubeconfig(tmp_path)))

        facts = source.service_facts(("prod", "web-0"), ("prod", "db"))
        entry = facts.services[("prod", "db")].entry
        assert [str(ip) for ip in entry.cluster_ips] == ["10.96.0.10"]
        assert [(str(e.address), e.port) for e in entry.ports[0].endpoints] == [("10.1.0.2", 5433)]
        assert set(facts.pods) == {("prod", "web-0"), ("prod", "db-0")}  # cache-0 is behind no endpoint of db
        assert sorted(asked) == [("prod", "db-0"), ("prod", "web-0")]
        requests = [str(r.url) for r in kube.call(lambda: list(kube.emulator))]
        assert any(url.endswith("/endpointslices?labelSelector=kubernetes.io/service-name%3Ddb") for url in requests)
        verdict = explain_service(facts, ("prod", "web-0"), ("prod", "db"))
        assert verdict.encrypted and [(e.pod, e.peer) for e in verdict.endpoints] == [("prod/db-0", True)]

        missing = source.service_facts(("prod", "web-0"), ("prod", "nope"))
        assert missing.services == {} and set(missing.pods) == {("prod", "web-0")}
        assert explain_service(missing, ("prod", "web-0"), ("prod", "nope")).reason is Reason.SERVICE_NOT_FOUND


def test_explain_a_service_from_the_standalone_overview(established):
    """`explain POD svc/NS/NAME` on a document shaped as the standalone operator's overview (its `services`)."""
    statuses = {f"ns-{ip}": status for ip, status in zip(("10.1.0.1", "10.1.0.2"), moved(established, MOVED), strict=False)}
    document = {
        "pods": [{"namespace": "prod", "name": name, "ips": [ip], "netns": f"ns-{ip}", "peerMapVersion": 3}
                 for name, ip in (("web-0", "10.1.0.1"), ("db-0", "10.1.0.2"), ("cache-0", "10.1.0.3"))],
        "peerings": [{"namespace": "prod", "name": "web-db", "auth": "psk", "enforcement": "require",
                      "members": ["prod/web-0"], "peers": ["prod/db-0"], "health": {}}],
        "services": [
            {"kind": "Service", "object": {"kind": "Service", "metadata": {"name": "db", "namespace": "prod"},
                                           "spec": {"clusterIPs": ["10.96.0.10"], "ports": [{"port": 5432}]}}},
            {"kind": "EndpointSlice", "object": {
                "kind": "EndpointSlice", "addressType": "IPv4", "ports": [{"port": 5433}],
                "metadata": {"name": "db-ipv4", "namespace": "prod", "labels": {"kubernetes.io/service-name": "db"}},
                "endpoints": [{"addresses": ["10.1.0.2"]}]}},
        ],
    }
    asked = []

    def read_status(netns):  # the standalone source reads /status inside the pod's netns
        asked.append(netns)
        return statuses.get(netns), "" if netns in statuses else "no answer"

    facts = service_facts_from_overview(document, ("prod", "web-0"), ("prod", "db"), read_status)
    verdict = explain_service(facts, ("prod", "web-0"), ("prod", "db"))
    assert verdict.encrypted and [(e.pod, e.peer) for e in verdict.endpoints] == [("prod/db-0", True)]
    assert sorted(asked) == ["ns-10.1.0.1", "ns-10.1.0.2"]  # the client and the pod behind the Service, nobody else
    missing = service_facts_from_overview(document, ("prod", "web-0"), ("prod", "nope"), read_status)
    assert explain_service(missing, ("prod", "web-0"), ("prod", "nope")).reason is Reason.SERVICE_NOT_FOUND


@pytest.mark.parametrize("target", ["svc/prod", "svc//db", "svc/prod/db/x"])
def test_a_service_target_must_be_svc_namespace_name(capsys, target):
    code, _, err = run(capsys, "explain", "prod/web-0", target)
    assert code == 2 and "svc/NAMESPACE/NAME" in err


@pytest.mark.parametrize("target", ["remote/prod/to-west", "remote/prod//west", "remote/prod/to-west/west/not-an-ip",
                                    "remote/prod/to-west/west/10.0.0.1/x"])
def test_a_remote_target_must_be_remote_namespace_peering_remote_address(capsys, target):
    code, _, err = run(capsys, "explain", "prod/web-0", target)
    assert code == 2 and ("remote/NAMESPACE/PEERING/REMOTE" in err or "not an IP address" in err)


def test_remote_peer_from_the_standalone_overview(established):
    """The overview's `remotes` and `federation` entries reach explain_remote; only the local sidecar is asked."""
    from ipsec_mesh_operator.cli.diagnose import RemoteTarget, explain_remote

    document = {
        "pods": [{"namespace": "prod", "name": "web-0", "ips": [scenarios.A_IP], "netns": "ns-web"}],
        "peerings": [{"namespace": "prod", "name": "to-west", "auth": "certificate", "enforcement": "require",
                      "members": ["prod/web-0"], "peers": [], "health": {},
                      "remotes": [{"name": "west", "cidrs": [f"{scenarios.B_IP}/32", "garbage"], "trust": "federation",
                                   "identities": ["*.prod.pod.west.example"]}],
                      "federation": [{"remote": "west", "endpoint": "https://192.0.2.10:8444",
                                      "trustDomain": "west.example", "fresh": False, "authorities": 1,
                                      "failures": 2, "fetchedAt": None, "sequence": None,
                                      "lastError": "unreachable: cannot connect"}]}],
    }
    asked = []

    def read_status(netns):
        asked.append(netns)
        return established[0], ""

    facts = facts_from_overview(document, {("prod", "web-0")}, None, False, read_status)
    verdict = explain_remote(facts, ("prod", "web-0"), RemoteTarget(address=scenarios.B_IP))
    assert verdict.encrypted and verdict.peerings == ("prod/to-west",) and asked == ["ns-web"]
    assert any("never fetched" in d and "unreachable: cannot connect" in d for d in verdict.details)
