"""Services in the mesh index: which maps list them, with which endpoints, and incremental updates."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_mesh.meshapi import PeerMap, PeerMapError, ServiceProtocol, SessionAffinity
from ipsec_mesh_operator.controller.index import MeshIndex, PodInfo
from ipsec_mesh_operator.model.peering import parse_peering
from ipsec_mesh_operator.model.services import (
    MAX_ENDPOINT_SLICES_PER_NAMESPACE,
    MAX_SERVICES_PER_NAMESPACE,
    MAX_SLICE_ENDPOINTS,
    ServiceTable,
    SliceInfo,
    parse_service,
)
from tests.operator.test_index import apply as apply_mesh_op
from tests.operator.test_index import maps_without_versions
from tests.operator.test_index import operations as mesh_operations
from tests.support.mesh_workload import add_services, build_large, service_bodies


def pod(name, ip, ns="shop", **labels):
    ips = (ip,) if isinstance(ip, str) else ip
    return PodInfo(ns, name, f"uid-{name}", "default", labels, ips)


def service_body(name, ns="shop", cluster_ips=("10.96.0.10",), ports=None, **spec):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": cluster_ips[0] if cluster_ips else None, "clusterIPs": list(cluster_ips),
                     "ports": ports if ports is not None else [{"name": "pg", "port": 5432, "protocol": "TCP",
                                                               "targetPort": "pg"}], **spec}}


def slice_body(name, service, endpoints, ns="shop", family="IPv4", ports=None):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": family,
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
            "ports": ports if ports is not None else [{"name": "pg", "port": 5433, "protocol": "TCP"}],
            "endpoints": endpoints}


def ep(*addresses, **conditions):
    return {"addresses": list(addresses), "conditions": conditions}


def mesh():
    """web-0, web-1 (members) and db-0, db-1 (peers) under one peering; lonely is in no peering."""
    index = MeshIndex()
    index.upsert_pod(pod("web-0", ("10.0.0.1", "fd00::1"), app="web"))
    index.upsert_pod(pod("web-1", "10.0.0.2", app="web"))
    index.upsert_pod(pod("db-0", ("10.0.1.1", "fd00::11"), app="db"))
    index.upsert_pod(pod("db-1", "10.0.1.2", app="db"))
    index.upsert_pod(pod("lonely", "10.0.2.1", app="x"))
    index.upsert_peering(parse_peering("shop", "web-db", {
        "selector": {"matchLabels": {"app": "web"}}, "peers": [{"podSelector": {"matchLabels": {"app": "db"}}}]}))
    return index


def services_of(index, key):
    return {s.key: s for s in index.peer_map(key).services}


def endpoints(entry, port=0):
    return [(str(e.address), e.port, e.ready, e.serving, e.terminating, e.peer) for e in entry.ports[port].endpoints]


def test_a_service_in_front_of_peers_is_in_its_clients_maps_with_every_endpoint():
    index = mesh()
    index.upsert_service(parse_service(service_body(
        "db", cluster_ips=("10.96.0.10", "fd00:96::a"), ports=[{"name": "pg", "port": 5432}],
        sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}})))
    # Two slices with different target ports for the same named port; nil ready counts as ready.
    index.upsert_endpoint_slice(SliceInfo.from_body(slice_body("db-a", "db", [
        ep("10.0.1.1"), ep("10.0.1.2", ready=False, serving=True, terminating=True), ep("10.0.2.1")])))
    index.upsert_endpoint_slice(SliceInfo.from_body(slice_body(
        "db-b", "db", [ep("fd00::11", ready=True)], family="IPv6", ports=[{"name": "pg", "port": 6000}])))
    entry = services_of(index, ("shop", "web-0"))["shop/db"]
    assert [str(ip) for ip in entry.cluster_ips] == ["10.96.0.10", "fd00:96::a"]
    assert entry.session_affinity is SessionAffinity.CLIENT_IP and entry.affinity_timeout_seconds == 60
    assert (entry.ports[0].name, entry.ports[0].protocol, entry.ports[0].port) == ("pg", ServiceProtocol.TCP, 5432)
    assert endpoints(entry) == [
        ("10.0.1.1", 5433, True, True, False, True),
        ("10.0.1.2", 5433, False, True, True, True),
        ("10.0.2.1", 5433, True, True, False, False),  # not a peer of web-0: listed, peer false
        ("fd00::11", 6000, True, True, False, True),
    ]
    assert "shop/db" in services_of(index, ("shop", "web-1"))
    # The db pods' own peers are the web pods: no endpoint of db is theirs; lonely has no peers at all.
    assert services_of(index, ("shop", "db-0")) == {} and services_of(index, ("shop", "lonely")) == {}
    # The document is valid and deterministic.
    document = index.peer_map(("shop", "web-0")).to_dict()
    assert PeerMap.from_dict(document).services == (entry,)


def test_ports_match_by_name_and_protocol_and_an_endpoint_needs_a_cluster_ip_of_its_family():
    index = mesh()
    index.upsert_service(parse_service(service_body("db", ports=[
        {"name": "pg", "port": 5432}, {"name": "dns", "port": 53, "protocol": "UDP"}])))
    index.upsert_endpoint_slice(SliceInfo.from_body(slice_body("v4", "db", [ep("10.0.1.1")], ports=[
        {"name": "pg", "port": 5433}, {"name": "dns", "port": 5353, "protocol": "TCP"}])))
    index.upsert_endpoint_slice(SliceInfo.from_body(slice_body("v6", "db", [ep("fd00::11")], family="IPv6")))
    entry = services_of(index, ("shop", "web-0"))["shop/db"]
    assert endpoints(entry, 0) == [("10.0.1.1", 5433, True, True, False, True)]  # no IPv6 cluster IP
    assert endpoints(entry, 1) == []  # the slice's dns port is TCP, the Service's UDP


@pytest.mark.parametrize("spec", [
    {"clusterIP": "None", "clusterIPs": ["None"]},
    {"type": "ExternalName", "externalName": "db.example.com", "clusterIP": "", "clusterIPs": []},
    {"clusterIP": "", "clusterIPs": []},
], ids=["headless", "external-name", "no-cluster-ip-yet"])
def test_services_without_a_cluster_ip_are_not_mesh_services(spec):
    body = service_body("db")
    body["spec"].update(spec)
    assert parse_service(body) is None


def test_slices_of_no_service_and_fqdn_slices_are_ignored():
    body = slice_body("x", "db", [ep("10.0.1.1")])
    del body["metadata"]["labels"]
    assert SliceInfo.from_body(body) is None
    assert SliceInfo.from_body(slice_body("y", "db", [{"addresses": ["db.example.com"]}], family="FQDN")) is None


def _set(body, path, value):
    target = body
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return body


@pytest.mark.parametrize("path, value, field", [
    (("metadata", "name"), "Not_A_Label", "metadata.name"),
    (("spec", "clusterIPs"), ["10.96.0.10", "10.96.0.11"], "spec.clusterIPs"),
    (("spec", "clusterIPs"), ["999.1.1.1"], "spec.clusterIPs[0]"),
    (("spec", "clusterIPs"), ["127.0.0.1"], "spec.clusterIPs[0]"),
    (("spec", "clusterIPs"), "10.96.0.10", "spec.clusterIPs"),
    (("spec", "ports"), [], "spec.ports"),
    (("spec", "ports"), [{"name": "a", "port": 0}], "spec.ports[0].port"),
    (("spec", "ports"), [{"name": "a", "port": "80"}], "spec.ports[0].port"),
    (("spec", "ports"), [{"name": "a", "port": 80, "protocol": "ICMP"}], "spec.ports[0].protocol"),
    (("spec", "ports"), [{"name": "a", "port": 80}, {"name": "a", "port": 81}], "spec.ports"),
    (("spec", "ports"), [{"name": "a", "port": 80}, {"name": "b", "port": 80}], "spec.ports"),
    (("spec", "ports"), [{"port": 80}, {"name": "b", "port": 81}], "spec.ports"),
    (("spec", "ports"), [{"name": f"p{i}", "port": i + 1} for i in range(101)], "spec.ports"),
    (("spec", "sessionAffinity"), "Sticky", "spec.sessionAffinity"),
    (("spec", "sessionAffinityConfig"), {"clientIP": {"timeoutSeconds": 86401}},
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
    (("spec",), "nonsense", "spec"),
])
def test_malformed_services_fail_with_the_field_named(path, value, field):
    with pytest.raises(PeerMapError) as error:
        parse_service(_set(service_body("db"), path, value))
    assert error.value.path == field


@pytest.mark.parametrize("path, value, field", [
    (("addressType",), "IPv5", "addressType"),
    (("endpoints",), [ep("fd00::1")], "endpoints[0].addresses"),
    (("endpoints",), [ep("10.0.0.256")], "endpoints[0].addresses[0]"),
    (("endpoints",), [ep("0.0.0.0")], "endpoints[0].addresses"),
    (("endpoints",), [ep("169.254.0.1")], "endpoints[0].addresses"),
    (("endpoints",), [ep()], "endpoints[0].addresses"),
    (("endpoints",), [ep("10.0.0.1", ready="yes")], "endpoints[0].conditions.ready"),
    (("endpoints",), [ep("10.0.0.1")] * (MAX_SLICE_ENDPOINTS + 1), "endpoints"),
    (("endpoints",), {"not": "a list"}, "endpoints"),
    (("ports",), [{"name": "pg", "port": 70000}], "ports[0].port"),
    (("ports",), [{"name": "pg", "port": 1, "protocol": 6}], "ports[0].protocol"),
    (("metadata", "labels"), {"kubernetes.io/service-name": "../x"}, "metadata.labels[kubernetes.io/service-name]"),
])
def test_malformed_slices_fail_with_the_field_named(path, value, field):
    with pytest.raises(PeerMapError) as error:
        SliceInfo.from_body(_set(slice_body("db-a", "db", [ep("10.0.1.1")]), path, value))
    assert error.value.path == field


def test_nil_serving_follows_ready_and_a_port_without_number_is_skipped():
    info = SliceInfo.from_body(slice_body("s", "db", [ep("10.0.1.1", ready=False), ep("10.0.1.2")],
                                          ports=[{"name": "pg"}, {"name": "x", "port": 1}]))
    assert [(e.ready, e.serving, e.terminating) for e in info.endpoints] == [(False, False, False), (True, True, False)]
    assert [p.name for p in info.ports] == ["x"]


def test_a_slice_change_marks_exactly_the_pods_that_list_its_endpoints():
    index = mesh()
    index.upsert_service(parse_service(service_body("db")))
    assert index.upsert_endpoint_slice(SliceInfo.from_body(slice_body("db-a", "db", [ep("10.0.1.1")]))) == {
        ("shop", "web-0"), ("shop", "web-1")}
    versions = {info.key: index.version(info.key) for info in index.pods()}
    # An endpoint that is nobody's peer: lonely's counterparts (none) are the only ones who could list it.
    assert index.upsert_endpoint_slice(SliceInfo.from_body(slice_body("x", "x", [ep("10.0.2.1")]))) == set()
    assert index.upsert_endpoint_slice(SliceInfo.from_body(slice_body("db-a", "db", [ep("10.0.1.1")]))) == set()
    # db-0 turns not ready: the web pods' maps change, nobody else's.
    assert index.upsert_endpoint_slice(SliceInfo.from_body(slice_body("db-a", "db", [ep("10.0.1.1", ready=False)]))) \
        == {("shop", "web-0"), ("shop", "web-1")}
    assert index.version(("shop", "db-0")) == versions[("shop", "db-0")]
    assert endpoints(services_of(index, ("shop", "web-0"))["shop/db"]) == [("10.0.1.1", 5433, False, False, False,
                                                                            True)]
    assert index.remove_endpoint_slice(("shop", "db-a")) == {("shop", "web-0"), ("shop", "web-1")}
    assert services_of(index, ("shop", "web-0")) == {}
    assert index.remove_endpoint_slice(("shop", "db-a")) == set()


def test_service_changes_and_removal_reach_the_clients():
    index = mesh()
    index.upsert_endpoint_slice(SliceInfo.from_body(slice_body("db-a", "db", [ep("10.0.1.1")])))
    assert services_of(index, ("shop", "web-0")) == {}  # a slice without its Service lists nothing
    assert index.upsert_service(parse_service(service_body("db"))) == {("shop", "web-0"), ("shop", "web-1")}
    changed = index.upsert_service(parse_service(service_body("db", cluster_ips=("10.96.0.99",))))
    assert changed == {("shop", "web-0"), ("shop", "web-1")}
    assert [str(ip) for ip in services_of(index, ("shop", "web-0"))["shop/db"].cluster_ips] == ["10.96.0.99"]
    assert index.remove_service(("shop", "db")) == {("shop", "web-0"), ("shop", "web-1")}
    assert services_of(index, ("shop", "web-1")) == {}


def test_a_pod_that_gets_an_endpoint_s_address_brings_the_service_to_its_clients():
    index = mesh()
    index.upsert_service(parse_service(service_body("db")))
    index.upsert_endpoint_slice(SliceInfo.from_body(slice_body("db-a", "db", [ep("10.0.1.9")])))
    assert services_of(index, ("shop", "web-0")) == {}
    assert ("shop", "web-0") in index.upsert_pod(pod("db-9", "10.0.1.9", app="db"))
    assert endpoints(services_of(index, ("shop", "web-0"))["shop/db"])[0][-1] is True
    assert ("shop", "web-0") in index.remove_pod(("shop", "db-9"))
    assert services_of(index, ("shop", "web-0")) == {}


def test_clients_with_the_same_peers_share_one_entry_object():
    index = mesh()
    index.upsert_service(parse_service(service_body("db")))
    index.upsert_endpoint_slice(SliceInfo.from_body(slice_body("db-a", "db", [ep("10.0.1.1"), ep("10.0.1.2")])))
    assert services_of(index, ("shop", "web-0"))["shop/db"] is services_of(index, ("shop", "web-1"))["shop/db"]


@pytest.mark.parametrize("cross", [False, True], ids=["same-namespace", "cross-namespace"])
def test_the_service_lookup_runs_once_per_set_of_peering_views_not_once_per_pod(cross, monkeypatch):
    """Pods on the same sides of the same peerings list the same peers, so the same Services (the
    full computation's cost, docs/benchmarks.md): counted, and the result equals a lookup per pod."""
    index = build_large(400, 40, cross)
    add_services(index, service_bodies(index, 80))
    lookups = []
    original = ServiceTable.services_at
    monkeypatch.setattr(ServiceTable, "services_at", lambda self, addresses: lookups.append(1) or original(
        self, addresses))
    maps = {info.key: index.peer_map(info.key) for info in index.pods()}
    sides = {(info.namespace, info.labels["app"], info.labels["role"]) for info in index.pods()}
    assert len(lookups) == len(sides) <= 80  # not one per pod (400)
    # Every map lists its peers' Services, and exactly what a lookup of its own would give.
    for peer_map in maps.values():
        assert peer_map.services and peer_map.services == index._services_for(list(peer_map.policies))
    # A change starts over: the next maps do their lookups again.
    index.upsert_endpoint_slice(SliceInfo.from_body(service_bodies(index, 1)[0][1] | {"endpoints": []}))
    lookups.clear()
    for info in index.pods():
        index.peer_map(info.key)
    assert 0 < len(lookups) <= len(sides)


# ---- bounds ------------------------------------------------------------------------


def test_the_table_refuses_services_and_slices_past_its_bounds_and_keeps_what_it_has():
    table = ServiceTable(max_services=2, max_slices=2)
    for name in ("a", "b"):
        table.upsert_service(parse_service(service_body(name)))
        table.upsert_slice(SliceInfo.from_body(slice_body(name, name, [ep("10.0.1.1")])))
    with pytest.raises(PeerMapError, match="more than 2 Services"):
        table.upsert_service(parse_service(service_body("c")))
    with pytest.raises(PeerMapError, match="more than 2 EndpointSlices"):
        table.upsert_slice(SliceInfo.from_body(slice_body("c", "c", [ep("10.0.1.1")])))
    # Updates of what it holds still pass.
    table.upsert_service(parse_service(service_body("a", cluster_ips=("10.96.0.11",))))
    table.upsert_slice(SliceInfo.from_body(slice_body("a", "a", [ep("10.0.1.2")])))
    assert len(table) == 2 and table.service(("shop", "c")) is None


def test_one_namespace_cannot_use_up_the_table_for_the_others():
    table = ServiceTable(max_services=10, max_slices=10, max_services_per_namespace=3, max_slices_per_namespace=3)

    def fill(ns, count):
        for i in range(count):
            table.upsert_service(parse_service(service_body(f"s{i}", ns)))
            table.upsert_slice(SliceInfo.from_body(slice_body(f"s{i}-x", f"s{i}", [ep("10.0.1.1")], ns)))

    fill("noisy", 3)
    with pytest.raises(PeerMapError, match="more than 3 Services in namespace noisy: noisy/s3 is ignored"):
        table.upsert_service(parse_service(service_body("s3", "noisy")))
    with pytest.raises(PeerMapError, match="more than 3 EndpointSlices in namespace noisy: noisy/s0-y is ignored"):
        table.upsert_slice(SliceInfo.from_body(slice_body("s0-y", "s0", [ep("10.0.1.2")], "noisy")))
    fill("quiet", 3)  # the other namespaces still get their share
    assert len(table) == 6
    # Updates of what the namespace holds pass; a removal frees a place.
    table.upsert_service(parse_service(service_body("s0", "noisy", cluster_ips=("10.96.0.99",))))
    table.upsert_slice(SliceInfo.from_body(slice_body("s0-x", "s1", [ep("10.0.1.3")], "noisy")))
    table.remove_service(("noisy", "s0"))
    table.remove_slice(("noisy", "s0-x"))
    table.upsert_service(parse_service(service_body("s3", "noisy")))
    table.upsert_slice(SliceInfo.from_body(slice_body("s3-x", "s3", [ep("10.0.1.1")], "noisy")))
    # The cluster-wide bound still holds across namespaces.
    fill("third", 3)
    with pytest.raises(PeerMapError, match="more than 10 Services: fourth/s1 is ignored"):
        fill("fourth", 2)  # the 10th fits, the 11th does not


def test_the_per_namespace_bounds_come_from_the_operator_config(monkeypatch):
    from ipsec_mesh_operator.controller.runtime import OperatorRuntime
    from ipsec_mesh_operator.model.settings import OperatorConfig

    monkeypatch.setenv("IPSEC_MESH_MAX_SERVICES_PER_NAMESPACE", "7")
    monkeypatch.setenv("IPSEC_MESH_MAX_ENDPOINT_SLICES_PER_NAMESPACE", "9")
    config = OperatorConfig.from_env()
    assert (config.max_services_per_namespace, config.max_endpoint_slices_per_namespace) == (7, 9)
    table = OperatorRuntime(config, kube=None).index.services
    assert (table.max_services_per_namespace, table.max_slices_per_namespace) == (7, 9)
    for bad in ("0", "x", "20001"):
        monkeypatch.setenv("IPSEC_MESH_MAX_SERVICES_PER_NAMESPACE", bad)
        with pytest.raises(ValueError, match="IPSEC_MESH_MAX_SERVICES_PER_NAMESPACE"):
            OperatorConfig.from_env()
    # Unset: the defaults, a fraction of the cluster-wide table.
    monkeypatch.delenv("IPSEC_MESH_MAX_SERVICES_PER_NAMESPACE")
    monkeypatch.delenv("IPSEC_MESH_MAX_ENDPOINT_SLICES_PER_NAMESPACE")
    config = OperatorConfig.from_env()
    assert (config.max_services_per_namespace, config.max_endpoint_slices_per_namespace) == (
        MAX_SERVICES_PER_NAMESPACE, MAX_ENDPOINT_SLICES_PER_NAMESPACE)


def test_a_port_lists_at_most_the_map_s_bound_of_endpoints():
    index = mesh()
    index.upsert_service(parse_service(service_body("db")))
    for s in range(6):  # 6 slices of 1000 endpoints: 6000, one of them db-0
        addresses = [f"10.{100 + s}.{i // 256}.{i % 256}" for i in range(1000)]
        if s == 0:
            addresses[0] = "10.0.1.1"
        index.upsert_endpoint_slice(SliceInfo.from_body(slice_body(f"db-{s}", "db", [ep(a) for a in addresses])))
    entry = services_of(index, ("shop", "web-0"))["shop/db"]
    assert len(entry.ports[0].endpoints) == 5000
    assert index.services.problem("Service", ("shop", "db")).startswith("port pg: more than 5000")
    PeerMap.from_dict(index.peer_map(("shop", "web-0")).to_dict())


# ---- property: incremental == rebuilt, and the listing rule ------------------------------

service_operations = st.lists(st.one_of(
    st.tuples(st.just("svc"), st.sampled_from(["s", "t"]), st.just("n1"),
              st.sampled_from([("10.96.0.1",), ("10.96.0.2", "fd96::2")])),
    st.tuples(st.just("unsvc"), st.sampled_from(["s", "t"]), st.just("n1")),
    st.tuples(st.just("slice"), st.sampled_from(["x", "y"]), st.just("n1"),
              st.sampled_from(["s", "t"]), st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
                                                    max_size=3, unique=True), st.booleans()),
    st.tuples(st.just("unslice"), st.sampled_from(["x", "y"]), st.just("n1")),
    mesh_operations.filter(bool).map(lambda ops: ("mesh", ops[:3])),
), max_size=20)


def apply_service_op(index, op):
    kind = op[0]
    if kind == "svc":
        return index.upsert_service(parse_service(service_body(op[1], op[2], op[3])))
    if kind == "unsvc":
        return index.remove_service((op[2], op[1]))
    if kind == "slice":
        _, name, ns, service, addresses, ready = op
        return index.upsert_endpoint_slice(SliceInfo.from_body(slice_body(
            name, service, [ep(a, ready=ready) for a in addresses], ns)))
    return index.remove_endpoint_slice((op[2], op[1]))


#: Two pods that are each other's peers, so that most Service operations touch a map.
BASE = [("pod", "a", "n1", {"app": "x"}, "10.0.0.1"), ("pod", "b", "n1", {"app": "y"}, "10.0.0.2"),
        ("peering", "p", "n1", {"app": "x"}, {"app": "y"}, False, False)]


@settings(max_examples=300, deadline=None)
@given(service_operations)
def test_incremental_services_equal_a_rebuild(ops):
    index = MeshIndex()
    replay = []
    for op in [("mesh", BASE)] + ops:
        steps = [(apply_mesh_op, o) for o in op[1]] if op[0] == "mesh" else [(apply_service_op, op)]
        for function, step in steps:
            before = maps_without_versions(index)
            versions = {key: index.version(key) for key in before}
            function(index, step)
            for key, peer_map in maps_without_versions(index).items():
                if key in before and before[key] != peer_map:
                    assert index.version(key) > versions[key], f"{key} changed without a new version after {step}"
            replay.append((function, step))
    rebuilt = MeshIndex()
    for function, step in sorted(replay, key=lambda r: r[0] is apply_mesh_op):  # Services first this time
        function(rebuilt, step)
    assert maps_without_versions(rebuilt) == maps_without_versions(index)
    for info in index.pods():  # the listing rule, the obvious way
        peers = {a for p in index.peer_map(info.key).policies for peer in p.peers for a in peer.addresses}
        for entry in index.peer_map(info.key).services:
            flagged = {e.address for port in entry.ports for e in port.endpoints if e.peer}
            assert flagged and all(ipaddress.ip_network(a) in peers for a in flagged)
