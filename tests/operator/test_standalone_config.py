"""The standalone YAML loader: what it builds, and typed errors that name the field."""

from __future__ import annotations

import copy

import pytest

from ipsec_mesh_operator.controller.index import PodInfo
from ipsec_mesh_operator.model.peering import parse_peering
from ipsec_mesh_operator.model.services import SliceInfo, parse_service
from ipsec_mesh_operator.standalone import StandaloneConfigError, load_config, parse_config
from tests.support.standalone_fixture import MESH


def test_pods_become_pod_infos_as_the_handlers_build_them():
    config = parse_config(MESH)
    web = config.pods[0]
    assert web == PodInfo.from_body({
        "metadata": {"namespace": "shop", "name": "web", "uid": "", "labels": {"app": "web"}},
        "spec": {"serviceAccountName": "web"}, "status": {"podIPs": [{"ip": "10.0.0.1"}]}})
    assert config.pods[2].service_account == "default"
    assert config.peerings[0] == parse_peering("shop", "web-db", MESH["peerings"][0]["spec"])
    assert config.namespace_labels() == {"shop": {"kubernetes.io/metadata.name": "shop"}}


def test_a_pod_may_name_its_network_namespace():
    document = copy.deepcopy(MESH)
    document["pods"][0]["netns"] = "imd1-web"
    document["pods"][1]["netns"] = "cni-1f0e.db_2"
    config = parse_config(document)
    assert config.pod_netns == {("shop", "web"): "imd1-web", ("shop", "db"): "cni-1f0e.db_2"}
    assert config.pods == parse_config(MESH).pods  # where a pod runs is not part of what it is
    assert parse_config(MESH).pod_netns == {}


def _with(mutate):
    document = copy.deepcopy(MESH)
    mutate(document)
    return document


@pytest.mark.parametrize("mutate, field, words", [
    (lambda d: d.update(extra=1), "", "unknown field(s) extra"),
    (lambda d: d.pop("pods"), "", "missing field(s) pods"),
    (lambda d: d.update(trustDomain="Not A Domain"), "trustDomain", "not a DNS name"),
    (lambda d: d["pods"][1].update(ips=["10.0.0.300"]), "pods[1].ips[0]", "not an IP address"),
    (lambda d: d["pods"][1].update(ips=[]), "pods[1].ips", "1..2 items"),
    (lambda d: d["pods"][0].update(name="Web_0"), "pods[0].name", "not a DNS name"),
    (lambda d: d["pods"][0].update(namespace="a.b"), "pods[0].namespace", "not a DNS label"),
    (lambda d: d["pods"][0].update(labels={"app": 3}), "pods[0].labels.app", "must be a string"),
    (lambda d: d["pods"][0].update(colour="red"), "pods[0]", "unknown field(s) colour"),
    (lambda d: d["pods"].append(dict(d["pods"][0])), "pods[3]", "also pods[0]"),
    (lambda d: d["pods"][2].update(ips=["10.0.0.1"]), "pods[2].ips", "also an address of pods[0]"),
    # The name is opened under /run/netns by explain: a path would enter any namespace on the node.
    (lambda d: d["pods"][0].update(netns="../../proc/1/ns/net"), "pods[0].netns", "not a network namespace name"),
    (lambda d: d["pods"][0].update(netns=".."), "pods[0].netns", "not a network namespace name"),
    (lambda d: d["pods"][0].update(netns="x" * 64), "pods[0].netns", "not a network namespace name"),
    (lambda d: d["pods"][0].update(netns=7), "pods[0].netns", "not a network namespace name"),
    (lambda d: [p.update(netns="pod-ns") for p in d["pods"][:2]], "pods[1].netns",
     "also the network namespace of pods[0]"),
    (lambda d: d["peerings"][0].pop("spec"), "peerings[0]", "missing field(s) spec"),
    (lambda d: d["peerings"][0]["spec"].update(enforcement="sometimes"), "peerings[0].spec",
     "peerings[0].spec: enforcement: unknown value"),
    (lambda d: d["peerings"][0]["spec"].update(lifetimes={"child": "10s"}), "peerings[0].spec", "at least 60s"),
    (lambda d: d["peerings"].append(copy.deepcopy(d["peerings"][0])), "peerings[2]", "listed twice"),
    # Misspelt fields are refused, never silently ignored (tfcpadding would leave TFC padding off).
    (lambda d: d["peerings"][0]["spec"].update(tfcpadding=True), "peerings[0].spec",
     "tfcpadding: unknown field (did you mean tfcPadding?)"),
    (lambda d: d["peerings"][1]["spec"]["authentication"].update(pskRotation="1h"), "peerings[1].spec",
     "authentication.pskRotation: unknown field (did you mean pskRotationInterval?)"),
    (lambda d: d["peerings"][0]["spec"].update(lifetimes={"childe": "2h"}), "peerings[0].spec",
     "lifetimes.childe: unknown field (did you mean child?)"),
    (lambda d: d["peerings"][0]["spec"].update(proposals={"ah": ["x"]}), "peerings[0].spec",
     "proposals.ah: unknown field"),
    (lambda d: d["peerings"][0]["spec"]["peers"][0].update(podselector={}), "peerings[0].spec",
     "peers[0].podselector: unknown field (did you mean podSelector?)"),
    (lambda d: d["peerings"][0]["spec"]["selector"].update(matchlabels={"app": "x"}), "peerings[0].spec",
     "selector.matchlabels: unknown field (did you mean matchLabels?)"),
    (lambda d: d["peerings"][0]["spec"].update(selector={"matchExpressions": [
        {"key": "a", "operator": "Exists", "value": ["b"]}]}), "peerings[0].spec",
     "selector.matchExpressions[0].value: unknown field (did you mean values?)"),
    (lambda d: d.update(namespaces={"shop": {"team": 1}}), "namespaces.shop.team", "must be a string"),
    (lambda d: d.update(configMaps=[{"name": "x", "data": {"k": 1}}]), "configMaps[0].data", "map keys"),
    (lambda d: d.update(services={"db": 1}), "services", "must be a list"),
    (lambda d: d.update(services=[dict(DB_SERVICE, colour="red")]), "services[0]", "unknown field(s) colour"),
    (lambda d: d.update(services=[dict(DB_SERVICE, clusterIPs=["10.96.0.1", "10.96.0.2"])]),
     "services[0].clusterIPs", "one address per IP family"),
    (lambda d: d.update(services=[dict(DB_SERVICE, ports=[{"port": 5432, "targetPort": 0}])]),
     "services[0].ports[0].targetPort", "1..65535"),
    (lambda d: d.update(services=[DB_SERVICE, DB_SERVICE]), "services[1]", "also made by services[0]"),
    (lambda d: d.update(services=[{"kind": "Pod", "metadata": {"name": "x"}}]), "services[0].kind", "must be one of"),
    (lambda d: d.update(services=[{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
                                   "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 99999}]}}]),
     "services[0].spec.ports[0].port", "1..65535"),
    (lambda d: d.update(services=[{"kind": "EndpointSlice", "addressType": "IPv4", "metadata": {
        "name": "db-1", "labels": {"kubernetes.io/service-name": "db"}}, "endpoints": [{"addresses": ["fd00::1"]}]}]),
     "services[0].endpoints[0].addresses", "not an IPv4 address"),
])
def test_errors_name_the_field(mutate, field, words):
    with pytest.raises(StandaloneConfigError) as error:
        parse_config(_with(mutate))
    assert error.value.field == field
    assert words in str(error.value)


DB_SERVICE = {"name": "db", "namespace": "shop", "clusterIPs": ["10.96.0.10"], "selector": {"app": "db"},
              "ports": [{"name": "pg", "port": 5432, "targetPort": 5433}]}


def test_a_compact_service_becomes_the_service_and_slices_the_api_server_would_hold():
    document = _with(lambda d: d.update(services=[DB_SERVICE]))
    document["pods"][1]["ips"] = ["10.0.0.2", "fd00::2"]
    objects = parse_config(document).service_objects()
    assert sorted(objects) == [("EndpointSlice", "shop", "db-ipv4"), ("EndpointSlice", "shop", "db-ipv6"),
                               ("Service", "shop", "db")]
    service = parse_service(objects[("Service", "shop", "db")][1])
    assert [str(ip) for ip in service.cluster_ips] == ["10.96.0.10"] and service.ports[0].port == 5432
    v4 = SliceInfo.from_body(objects[("EndpointSlice", "shop", "db-ipv4")][1])
    assert v4.service == "db" and [p.port for p in v4.ports] == [5433]
    assert [(str(e.address), e.ready) for e in v4.endpoints] == [("10.0.0.2", True)]
    # Without a selector (or with one nothing matches), a Service has no slices: manifests can add them.
    assert list(parse_config(_with(lambda d: d.update(services=[dict(DB_SERVICE, selector={})]))).service_objects()) \
        == [("Service", "shop", "db")]


def test_unreadable_and_non_yaml_files(tmp_path):
    with pytest.raises(StandaloneConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pods: [\n")
    with pytest.raises(StandaloneConfigError, match="not YAML"):
        load_config(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(StandaloneConfigError, match="must be an object"):
        load_config(bad)
