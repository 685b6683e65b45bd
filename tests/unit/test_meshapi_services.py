"""Services in the peer map: round trips, strict validation with paths, bounds."""

import copy
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_mesh.meshapi import (
    MAX_SERVICE_ENDPOINTS,
    MAX_SERVICE_PORTS,
    MAX_SERVICES,
    LocalIdentity,
    PeerMap,
    PeerMapError,
    ServiceEndpoint,
    ServiceEntry,
    ServicePort,
    ServiceProtocol,
    SessionAffinity,
    fields,
    load_peer_map_file,
)

ip = ipaddress.ip_address


def db_service() -> ServiceEntry:
    return ServiceEntry(
        namespace="shop",
        name="db",
        cluster_ips=(ip("10.96.0.10"), ip("fd00:10:96::a")),
        ports=(
            ServicePort("http", ServiceProtocol.TCP, 80, (
                ServiceEndpoint(ip("10.244.1.5"), 8080, peer=True),
                ServiceEndpoint(ip("10.244.2.7"), 8080, ready=False, serving=True, terminating=True),
                ServiceEndpoint(ip("fd00:244::5"), 8080, peer=True),
            )),
            ServicePort("dns", ServiceProtocol.UDP, 53, (ServiceEndpoint(ip("10.244.1.5"), 5353, peer=True),)),
            ServicePort("sctp", ServiceProtocol.SCTP, 9999, ()),
        ),
        session_affinity=SessionAffinity.CLIENT_IP,
        affinity_timeout_seconds=600,
    )


def sample_map(*services: ServiceEntry) -> PeerMap:
    return PeerMap(
        version=3,
        local=LocalIdentity("a.shop.pod.cluster.local", addresses=(ip("10.244.0.2"),)),
        policies=(),
        services=services or (db_service(),),
    )


def test_round_trip_is_lossless_and_writes_every_field():
    peer_map = sample_map()
    assert PeerMap.from_json(peer_map.to_json()) == peer_map
    service = peer_map.to_dict()["services"][0]
    assert service["clusterIPs"] == ["10.96.0.10", "fd00:10:96::a"]
    assert service["sessionAffinity"] == "ClientIP" and service["sessionAffinityTimeoutSeconds"] == 600
    assert service["ports"][0]["endpoints"][1] == {
        "address": "10.244.2.7", "port": 8080, "ready": False, "serving": True, "terminating": True, "peer": False,
    }
    assert peer_map.services[0].key == "shop/db"


def test_documents_without_services_read_as_none_and_write_an_empty_list():
    document = sample_map().to_dict()
    del document["services"]
    peer_map = PeerMap.from_dict(document)
    assert peer_map.services == ()
    assert peer_map.to_dict()["services"] == []


def test_optional_fields_take_the_kubernetes_defaults():
    document = sample_map().to_dict()
    service = document["services"][0]
    del service["sessionAffinity"], service["sessionAffinityTimeoutSeconds"]
    service["ports"] = [{"protocol": "TCP", "port": 80, "endpoints": [{"address": "10.244.1.5", "port": 80}]}]
    parsed = PeerMap.from_dict(document).services[0]
    assert parsed.session_affinity is SessionAffinity.NONE and parsed.affinity_timeout_seconds == 10800
    assert parsed.ports[0].name == ""
    assert parsed.ports[0].endpoints == (ServiceEndpoint(ip("10.244.1.5"), 80, True, True, False, False),)


def _ports(d):
    return d["services"][0]["ports"]


@pytest.mark.parametrize("mutate, path", [
    (lambda d: d["services"][0].update(extra=1), "services[0]"),
    (lambda d: d["services"][0].update(namespace="Shop"), "services[0].namespace"),
    (lambda d: d["services"][0].update(name="db.x"), "services[0].name"),
    (lambda d: d["services"][0].update(clusterIPs=[]), "services[0].clusterIPs"),
    (lambda d: d["services"][0].update(clusterIPs=["10.96.0.1", "10.96.0.2"]), "services[0].clusterIPs"),
    (lambda d: d["services"][0].update(clusterIPs=["10.96.0.1", "fd00::1", "10.96.0.2"]), "services[0].clusterIPs"),
    (lambda d: d["services"][0].update(clusterIPs=["10.96.0.0/12"]), "services[0].clusterIPs[0]"),
    (lambda d: d["services"][0].update(clusterIPs=["None"]), "services[0].clusterIPs[0]"),
    (lambda d: d["services"][0].update(clusterIPs=["127.0.0.1", "fd00::1"]), "services[0].clusterIPs[0]"),
    (lambda d: d["services"][0].update(clusterIPs=["0.0.0.0", "fd00::1"]), "services[0].clusterIPs[0]"),
    (lambda d: d["services"][0].update(clusterIPs=["10.96.0.1", "ff02::1"]), "services[0].clusterIPs[1]"),
    (lambda d: d["services"][0].update(sessionAffinity="Sticky"), "services[0].sessionAffinity"),
    (lambda d: d["services"][0].update(sessionAffinityTimeoutSeconds=0), "services[0].sessionAffinityTimeoutSeconds"),
    (lambda d: d["services"][0].update(sessionAffinityTimeoutSeconds=86401),
     "services[0].sessionAffinityTimeoutSeconds"),
    (lambda d: d["services"][0].update(ports=[]), "services[0].ports"),
    (lambda d: _ports(d)[0].update(protocol="ICMP"), "services[0].ports[0].protocol"),
    (lambda d: _ports(d)[0].update(protocol="tcp"), "services[0].ports[0].protocol"),
    (lambda d: _ports(d)[0].update(port=0), "services[0].ports[0].port"),
    (lambda d: _ports(d)[0].update(port=65536), "services[0].ports[0].port"),
    (lambda d: _ports(d)[0].update(name="Web"), "services[0].ports[0].name"),
    (lambda d: _ports(d)[0].update(name=""), "services[0].ports"),
    (lambda d: _ports(d)[1].update(name="http"), "services[0].ports"),
    (lambda d: _ports(d)[1].update(protocol="TCP", port=80), "services[0].ports"),
    (lambda d: _ports(d)[0]["endpoints"][0].update(port=0), "services[0].ports[0].endpoints[0].port"),
    (lambda d: _ports(d)[0]["endpoints"][0].update(address="10.244.1.0/24"),
     "services[0].ports[0].endpoints[0].address"),
    (lambda d: _ports(d)[0]["endpoints"][0].update(address="169.254.0.1"),
     "services[0].ports[0].endpoints[0].address"),
    (lambda d: _ports(d)[0]["endpoints"][0].update(ready="yes"), "services[0].ports[0].endpoints[0].ready"),
    (lambda d: _ports(d)[0]["endpoints"][0].update(peer=1), "services[0].ports[0].endpoints[0].peer"),
    (lambda d: _ports(d)[0]["endpoints"][0].update(weight=1), "services[0].ports[0].endpoints[0]"),
    (lambda d: _ports(d)[0]["endpoints"].append(copy.deepcopy(_ports(d)[0]["endpoints"][0])),
     "services[0].ports[0].endpoints"),
    # An IPv6 endpoint for a service that only has an IPv4 cluster IP.
    (lambda d: d["services"][0].update(clusterIPs=["10.96.0.10"]), "services[0].ports[0].endpoints[2].address"),
    (lambda d: d["services"].append(copy.deepcopy(d["services"][0])), "services"),
    (lambda d: d.update(services={}), "services"),
])
def test_invalid_services_raise_typed_errors_with_the_path(mutate, path):
    document = sample_map().to_dict()
    mutate(document)
    with pytest.raises(PeerMapError) as error:
        PeerMap.from_dict(document)
    assert error.value.path == path


def _endpoints(count):
    return [{"address": str(ip("10.0.0.0") + index + 1), "port": 80} for index in range(count)]


def test_bounds_are_enforced_at_and_just_past_each_limit():
    # Endpoints per port: the limit parses, one more does not.
    document = sample_map().to_dict()
    document["services"][0]["ports"] = [{"name": "p", "protocol": "TCP", "port": 1,
                                         "endpoints": _endpoints(MAX_SERVICE_ENDPOINTS)}]
    assert len(PeerMap.from_dict(document).services[0].ports[0].endpoints) == MAX_SERVICE_ENDPOINTS
    document["services"][0]["ports"][0]["endpoints"] = _endpoints(MAX_SERVICE_ENDPOINTS + 1)
    with pytest.raises(PeerMapError) as error:
        PeerMap.from_dict(document)
    assert error.value.path == "services[0].ports[0].endpoints"

    # Ports per service.
    ports = [{"name": f"p{n}", "protocol": "UDP", "port": n + 1} for n in range(MAX_SERVICE_PORTS + 1)]
    document["services"][0]["ports"] = ports[:MAX_SERVICE_PORTS]
    assert len(PeerMap.from_dict(document).services[0].ports) == MAX_SERVICE_PORTS
    document["services"][0]["ports"] = ports
    with pytest.raises(PeerMapError) as error:
        PeerMap.from_dict(document)
    assert error.value.path == "services[0].ports"


def test_the_service_count_is_bounded_before_any_service_is_parsed():
    document = sample_map().to_dict()
    # Items that would not even parse: the count is refused first, so a huge list costs no per-item work.
    document["services"] = [None] * (MAX_SERVICES + 1)
    with pytest.raises(PeerMapError, match=f"0..{MAX_SERVICES}") as error:
        PeerMap.from_dict(document)
    assert error.value.path == "services"


def test_services_at_the_limit_parse():
    service = {"namespace": "ns", "name": "x", "clusterIPs": ["10.96.0.1"], "ports": [{"protocol": "TCP", "port": 1}]}
    document = sample_map().to_dict()
    document["services"] = [dict(service, name=f"s{n}") for n in range(MAX_SERVICES)]
    assert len(PeerMap.from_dict(document).services) == MAX_SERVICES


def test_python_constructors_check_the_same_invariants():
    with pytest.raises(PeerMapError):
        ServicePort("p", ServiceProtocol.TCP, 80, (ServiceEndpoint(ip("10.0.0.1"), 80),) * 2)
    with pytest.raises(PeerMapError):
        ServiceEntry("shop", "db", (ip("10.96.0.1"),), ())
    with pytest.raises(PeerMapError):
        PeerMap(1, LocalIdentity("a.b"), (), services=(db_service(), db_service()))


def test_yaml_file_with_services(tmp_path):
    (tmp_path / "mesh.yaml").write_text(
        "local: {identity: a.shop.pod.example.org, addresses: [10.244.0.2]}\n"
        "peerings: []\n"
        "services:\n"
        "- namespace: shop\n"
        "  name: db\n"
        "  clusterIPs: [10.96.0.10]\n"
        "  sessionAffinity: ClientIP\n"
        "  ports:\n"
        "  - {name: '', protocol: TCP, port: 80,\n"
        "     endpoints: [{address: 10.244.1.5, port: 8080, ready: true, peer: true}]}\n"
    )
    service = load_peer_map_file(tmp_path / "mesh.yaml").services[0]
    assert service.session_affinity is SessionAffinity.CLIENT_IP
    assert service.ports[0].endpoints[0] == ServiceEndpoint(ip("10.244.1.5"), 8080, peer=True)


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["namespace", "name", "clusterIPs", "ports", "protocol", "port", "endpoints", "address",
                         "sessionAffinity", "ready", "x"]), inner, max_size=5),
    max_leaves=30,
))
def test_garbage_services_only_ever_raise_peer_map_error(services):
    document = sample_map().to_dict()
    document["services"] = services
    try:
        PeerMap.from_dict(document)
    except PeerMapError:
        pass


# ---- the fast address readers agree with ipaddress ------------------------------------------

addresses = st.one_of(st.ip_addresses(), st.sampled_from([
    ipaddress.ip_address(text) for text in ("0.0.0.0", "127.0.0.1", "169.254.1.1", "224.0.0.1", "255.255.255.255",
                                            "::", "::1", "fe80::1", "febf::1", "fec0::1", "ff02::1", "10.0.0.1")]))


@settings(max_examples=2000, deadline=None)
@given(addresses)
def test_check_unicast_refuses_what_the_ipaddress_properties_call_special(address):
    special = address.is_unspecified or address.is_multicast or address.is_loopback or address.is_link_local
    try:
        fields.check_unicast(address, "x")
        refused = False
    except PeerMapError:
        refused = True
    assert refused == special


@settings(max_examples=1000, deadline=None)
@given(st.one_of(addresses.map(str), addresses.map(lambda a: a.exploded.upper()), st.text(max_size=45)))
def test_ip_address_reads_what_ipaddress_reads(text):
    try:
        expected = ipaddress.ip_address(text)
    except ValueError:
        expected = None
    try:
        got = fields.ip_address(text)
    except ValueError:
        got = None
    if expected is not None and "%" in text:
        expected = None  # an IPv6 zone is refused on purpose
    assert got == expected and type(got) is type(expected)
