"""A large mesh for the index's speed test and bench/bench_peer_maps.py: N pods, M peerings.

Same-namespace layout (the issue's): pod i belongs to group i % M in namespace
ns<group % 50>, half with role a (members), half role b (peers), so every map lists
five peers. Cross-namespace layout: M/2 groups, each with its a pods in one namespace
and its b pods in the next, and two peerings that consent to each other.
Services (`add_services`): one per side of a group in turn, in front of that side's pods,
with a named target port; each client's map then lists the Service of its peers' side.
"""

from __future__ import annotations

from collections import defaultdict

from ipsec_mesh_operator.controller.index import MeshIndex, PodInfo
from ipsec_mesh_operator.model.peering import parse_peering
from ipsec_mesh_operator.model.services import SERVICE_NAME_LABEL, SliceInfo, parse_service

NAMESPACES = 50


def _address(i: int) -> str:
    return f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}"


def _side(g: int, own: str, other: str, ns: str | None) -> dict:
    peer = {"podSelector": {"matchLabels": {"app": f"app{g}", "role": other}}}
    if ns is not None:
        peer["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": ns}}
    return {"selector": {"matchLabels": {"app": f"app{g}", "role": own}}, "peers": [peer]}


def build_large(pods: int = 10_000, peerings: int = 1_000, cross_namespace: bool = False) -> MeshIndex:
    index = MeshIndex()
    groups = peerings // 2 if cross_namespace else peerings
    for i in range(pods):
        group = i % groups
        role = "a" if (i // groups) % 2 else "b"
        ns = group % NAMESPACES if role == "a" or not cross_namespace else (group + 1) % NAMESPACES
        index.upsert_pod(PodInfo(f"ns{ns}", f"pod-{i}", f"u{i}", "default",
                                 {"app": f"app{group}", "role": role}, (_address(i),)))
    for g in range(groups):
        home, away = f"ns{g % NAMESPACES}", f"ns{(g + 1) % NAMESPACES}"
        if cross_namespace:
            index.upsert_peering(parse_peering(home, f"peering-{g}-a", _side(g, "a", "b", away)))
            index.upsert_peering(parse_peering(away, f"peering-{g}-b", _side(g, "b", "a", home)))
        else:
            index.upsert_peering(parse_peering(home, f"peering-{g}", _side(g, "a", "b", None)))
    return index


def new_member(i: int) -> PodInfo:
    """The i-th extra pod for group 7 on the member side (role a, namespace ns7 in both layouts)."""
    return PodInfo("ns7", f"new-{i}", f"new-u{i}", "default", {"app": "app7", "role": "a"},
                   (f"10.200.{i // 256}.{i % 256}",))


def service_bodies(index: MeshIndex, count: int) -> list[tuple[dict, dict]]:
    """(Service, EndpointSlice) bodies, as the API server would send them, for `count` Services."""
    sides = defaultdict(list)
    for info in index.pods():
        sides[(info.namespace, info.labels["app"], info.labels["role"])].append(info)
    keys = sorted(sides)
    out = []
    for j in range(count):
        namespace, app, role = keys[j % len(keys)]
        name = f"svc-{j}"
        service = {"metadata": {"name": name, "namespace": namespace},
                   "spec": {"clusterIP": _address(j).replace("10.", "172.", 1), "selector": {"app": app, "role": role},
                            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]}}
        endpoints = [{"addresses": [ip], "conditions": {"ready": True}, "targetRef": {"kind": "Pod", "name": p.name}}
                     for p in sides[keys[j % len(keys)]] for ip in p.ips]
        endpoint_slice = {"addressType": "IPv4", "metadata": {"name": f"{name}-abcde", "namespace": namespace,
                                                              "labels": {SERVICE_NAME_LABEL: name}},
                          "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": endpoints}
        out.append((service, endpoint_slice))
    return out


def add_services(index: MeshIndex, bodies: list[tuple[dict, dict]]) -> None:
    for service, endpoint_slice in bodies:
        index.upsert_service(parse_service(service))
        index.upsert_endpoint_slice(SliceInfo.from_body(endpoint_slice))
