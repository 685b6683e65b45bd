"""The standalone operator's YAML: pods and peerings that Kubernetes would otherwise hold.

    trustDomain: demo.mesh.local        # optional, default cluster.local
    namespaces:                         # optional: labels for namespaceSelector peers
      shop: {team: shop}
    pods:
      - {name: web, namespace: shop, serviceAccount: web, labels: {app: web}, ips: [10.42.0.10],
         netns: web}                    # optional: its network namespace on this node, for explain
    peerings:
      - name: web-db
        namespace: shop
        spec: {selector: {}, peers: [{podSelector: {}}]}   # an IPsecPeering's spec
    bundleEndpoint: {port: 8444}        # optional: serve the SPIFFE bundle endpoint (federation.py) on the API's host
    configMaps:                         # optional: remote trust bundles referenced by peerings
      - {name: east-ca, namespace: shop, data: {ca.crt: "-----BEGIN CERTIFICATE-----..."}}
    services:                           # optional: Services, in a compact form or as manifests
      - {name: db, namespace: shop, clusterIPs: [10.96.0.10], selector: {app: db},
         ports: [{name: pg, port: 5432, targetPort: 5432}]}
      - {apiVersion: v1, kind: Service, metadata: {...}, spec: {...}}
      - {apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {...}, ...}

Peering specs go through the same `parse_peering` as the webhook and the kopf
handlers; pods become `PodInfo` through `PodInfo.from_body`, as the handlers
build them from the API server's objects. Pods have no uid here: the operator
gives each incarnation one (store.PodIncarnations), as the API server would.
Services end up as the Service and EndpointSlice objects the API server would
hold (a compact entry becomes both, its endpoints the file's pods its selector
matches, as the EndpointSlice controller would pick them), and go through the
same `OperatorRuntime.apply_service_event` as the kopf watches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ipsec_mesh.meshapi import PeerMapError, fields
from ipsec_mesh.meshapi.identity import check_dns_name, check_label

from ..controller.index import PodInfo
from ..model.peering import InvalidPeering, PeeringSpec, parse_peering
from ..model.services import DEFAULT_AFFINITY_TIMEOUT, SERVICE_NAME_LABEL, SliceInfo, parse_service
from ..model.settings import NAMESPACE_NAME_LABEL
from ..netns import check_netns_name

MAX_PODS = 10_000
MAX_PEERINGS = 1_000
#: Entries of `services` (compact Services, Service and EndpointSlice manifests).
MAX_SERVICE_ITEMS = 20_000
MAX_FILE_BYTES = 16 * 1024 * 1024
TOP_LEVEL = {"trustDomain", "namespaces", "pods", "peerings", "configMaps", "services", "bundleEndpoint"}
#: What the kopf handlers watch, by the manifest's kind.
SERVICE_KINDS = {"Service": parse_service, "EndpointSlice": SliceInfo.from_body}


class StandaloneConfigError(Exception):
    """The standalone YAML is unusable; `field` names the offending part."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field

    @classmethod
    def wrap(cls, error: PeerMapError) -> StandaloneConfigError:
        text = str(error)
        prefix = f"{error.path}: "
        return cls(error.path, text[len(prefix):] if error.path and text.startswith(prefix) else text)


@dataclass(frozen=True)
class StandaloneConfig:
    trust_domain: str
    namespaces: Mapping[str, Mapping[str, str]]
    pods: tuple[PodInfo, ...]
    peerings: tuple[PeeringSpec, ...]
    #: (namespace, name) -> key -> value
    config_maps: Mapping[tuple[str, str], Mapping[str, str]]
    #: (kind, body): Service and EndpointSlice objects as the API server would hold them.
    services: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    #: (namespace, name) -> the pod's network namespace on this node, where one is named:
    #: where `ipsec-mesh explain` reads the sidecar's local /status (what exec does in a cluster).
    pod_netns: Mapping[tuple[str, str], str] = field(default_factory=dict)
    #: Port of the bundle endpoint (0: any free port); None: not served.
    bundle_port: int | None = None

    def service_objects(self) -> dict[tuple[str, str, str], tuple[str, Mapping[str, Any]]]:
        """(kind, namespace, name) -> (kind, body)."""
        return {(kind, body["metadata"]["namespace"], body["metadata"]["name"]): (kind, body)
                for kind, body in self.services}

    def namespace_labels(self) -> dict[str, dict[str, str]]:
        """Labels of every namespace a pod or peering lives in (the name label always set, as Kubernetes does)."""
        names = set(self.namespaces) | {p.namespace for p in self.pods} | {p.namespace for p in self.peerings}
        return {name: {**self.namespaces.get(name, {}), NAMESPACE_NAME_LABEL: name} for name in sorted(names)}


def load_config(path: str | Path) -> StandaloneConfig:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise StandaloneConfigError("", f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise StandaloneConfigError("", f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        document = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise StandaloneConfigError("", f"{path} is not YAML: {exc}") from None
    return parse_config(document)


def parse_config(document: Any) -> StandaloneConfig:
    try:
        doc = fields.obj(document, "", {"pods", "peerings"}, TOP_LEVEL - {"pods", "peerings"})
        trust_domain = check_dns_name(doc.get("trustDomain", "cluster.local"), "trustDomain")
        namespaces = _namespaces(doc.get("namespaces", {}))
        entries = fields.array(doc["pods"], "pods", _pod, MAX_PODS)
        config_maps = dict(fields.array(doc.get("configMaps", []), "configMaps", _config_map, MAX_PEERINGS))
        bundle_port = None
        if "bundleEndpoint" in doc:
            endpoint = fields.obj(doc["bundleEndpoint"], "bundleEndpoint", {"port"})
            bundle_port = fields.integer(endpoint["port"], "bundleEndpoint.port", 0, 65535)
    except PeerMapError as exc:
        raise StandaloneConfigError.wrap(exc) from None
    pods = tuple(pod for pod, _ in entries)
    _check_unique(pods)
    pod_netns = _check_netns_unique(entries)
    peerings = _peerings(doc["peerings"])
    return StandaloneConfig(trust_domain, namespaces, pods, peerings, config_maps,
                            _services(doc.get("services", []), pods), pod_netns, bundle_port)


def _labels(value: Any, path: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise PeerMapError(path, "must map label names to strings")
    for key, label in value.items():
        fields.string(key, f"{path} key", 317)
        fields.string(label, f"{path}.{key}", 63, 0)
    return dict(value)


def _namespaces(value: Any) -> dict[str, dict[str, str]]:
    if not isinstance(value, Mapping):
        raise PeerMapError("namespaces", "must map namespace names to their labels")
    out = {}
    for name, labels in value.items():
        check_label(name, "namespaces key")
        out[name] = _labels(labels or {}, f"namespaces.{name}")
    return out


def _pod(value: Any, path: str) -> tuple[PodInfo, str | None]:
    doc = fields.obj(value, path, {"name", "ips"}, {"namespace", "serviceAccount", "labels", "netns"})
    name = check_dns_name(doc["name"], f"{path}.name")
    namespace = check_label(doc.get("namespace", "default"), f"{path}.namespace")
    service_account = check_dns_name(doc.get("serviceAccount", "default"), f"{path}.serviceAccount")
    ips = fields.array(doc["ips"], f"{path}.ips", fields.address, 2, 1)
    body = {  # what the API server would hold; the handlers build PodInfo from this shape
        "metadata": {"namespace": namespace, "name": name, "uid": "",
                     "labels": _labels(doc.get("labels", {}), f"{path}.labels")},
        "spec": {"serviceAccountName": service_account},
        "status": {"phase": "Running", "podIPs": [{"ip": str(ip)} for ip in ips]},
    }
    netns = None
    if "netns" in doc:
        try:
            netns = check_netns_name(doc["netns"])
        except ValueError as exc:
            raise PeerMapError(f"{path}.netns", str(exc)) from None
    return PodInfo.from_body(body), netns


def _check_unique(pods: tuple[PodInfo, ...]) -> None:
    seen: dict[tuple[str, str], int] = {}
    owners: dict[str, int] = {}
    for index, pod in enumerate(pods):
        if pod.key in seen:
            raise StandaloneConfigError(f"pods[{index}]", f"{pod.namespace}/{pod.name} is also pods[{seen[pod.key]}]")
        seen[pod.key] = index
        for ip in pod.ips:
            if ip in owners:
                raise StandaloneConfigError(f"pods[{index}].ips", f"{ip} is also an address of pods[{owners[ip]}]")
            owners[ip] = index


def _check_netns_unique(entries: tuple[tuple[PodInfo, str | None], ...]) -> dict[tuple[str, str], str]:
    """No two pods share a network namespace (explain would read one sidecar's status for both)."""
    owners: dict[str, int] = {}
    for index, (_, netns) in enumerate(entries):
        if netns is None:
            continue
        if netns in owners:
            raise StandaloneConfigError(f"pods[{index}].netns",
                                        f"{netns} is also the network namespace of pods[{owners[netns]}]")
        owners[netns] = index
    return {pod.key: netns for pod, netns in entries if netns is not None}


def _config_map(value: Any, path: str) -> tuple[tuple[str, str], dict[str, str]]:
    doc = fields.obj(value, path, {"name", "data"}, {"namespace"})
    data = doc["data"]
    if not isinstance(data, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise PeerMapError(f"{path}.data", "must map keys to strings")
    key = (check_label(doc.get("namespace", "default"), f"{path}.namespace"),
           check_dns_name(doc["name"], f"{path}.name"))
    return key, dict(data)


def _peerings(value: Any) -> tuple[PeeringSpec, ...]:
    if not isinstance(value, list) or len(value) > MAX_PEERINGS:
        raise StandaloneConfigError("peerings", f"must be a list of at most {MAX_PEERINGS} peerings")
    out: list[PeeringSpec] = []
    seen: set[tuple[str, str]] = set()
    for index, item in enumerate(value):
        path = f"peerings[{index}]"
        try:
            doc = fields.obj(item, path, {"name", "spec"}, {"namespace"})
            name = check_dns_name(doc["name"], f"{path}.name")
            namespace = check_label(doc.get("namespace", "default"), f"{path}.namespace")
        except PeerMapError as exc:
            raise StandaloneConfigError.wrap(exc) from None
        try:
            spec = parse_peering(namespace, name, doc["spec"])
        except InvalidPeering as exc:
            # parse_peering's messages name "spec.<field>": the error's field is this spec.
            raise StandaloneConfigError(f"{path}.spec", "; ".join(
                message.removeprefix("spec.") for message in exc.messages)) from None
        if spec.key in seen:
            raise StandaloneConfigError(path, f"peering {namespace}/{name} is listed twice")
        seen.add(spec.key)
        out.append(spec)
    return tuple(out)


def _services(value: Any, pods: tuple[PodInfo, ...]) -> tuple[tuple[str, dict[str, Any]], ...]:
    if not isinstance(value, list) or len(value) > MAX_SERVICE_ITEMS:
        raise StandaloneConfigError("services", f"must be a list of at most {MAX_SERVICE_ITEMS} entries")
    out: list[tuple[str, dict[str, Any]]] = []
    seen: dict[tuple[str, str, str], int] = {}
    for index, item in enumerate(value):
        path = f"services[{index}]"
        try:
            objects = [_manifest(item, path)] if isinstance(item, Mapping) and "kind" in item \
                else _compact_service(item, path, pods)
        except PeerMapError as exc:
            raise StandaloneConfigError.wrap(exc) from None
        for kind, body in objects:
            key = (kind, body["metadata"]["namespace"], body["metadata"]["name"])
            if key in seen:
                raise StandaloneConfigError(path, f"{kind} {key[1]}/{key[2]} is also made by services[{seen[key]}]")
            seen[key] = index
            out.append((kind, body))
    return tuple(out)


def _manifest(item: Mapping[str, Any], path: str) -> tuple[str, dict[str, Any]]:
    """A Service or EndpointSlice manifest, checked as the kopf handlers would take it."""
    kind = item["kind"]
    if kind not in SERVICE_KINDS:
        raise PeerMapError(f"{path}.kind", f"must be one of {', '.join(sorted(SERVICE_KINDS))}")
    body = dict(item)
    meta = body["metadata"] = dict(fields.obj(body.get("metadata"), f"{path}.metadata", {"name"},
                                              {"namespace", "labels", "annotations"}))
    meta.setdefault("namespace", "default")
    try:
        SERVICE_KINDS[kind](body)
    except PeerMapError as exc:
        raise PeerMapError(f"{path}.{exc.path}", str(exc).removeprefix(f"{exc.path}: ")) from None
    return kind, body


def _compact_service(item: Any, path: str, pods: tuple[PodInfo, ...]) -> list[tuple[str, dict[str, Any]]]:
    """A Service plus one EndpointSlice per address family of the pods its selector matches."""
    doc = fields.obj(item, path, {"name", "clusterIPs", "ports"},
                     {"namespace", "selector", "sessionAffinity", "sessionAffinityTimeoutSeconds"})
    namespace = check_label(doc.get("namespace", "default"), f"{path}.namespace")
    name = check_label(doc["name"], f"{path}.name")
    selector = _labels(doc.get("selector", {}), f"{path}.selector")
    ports = fields.array(doc["ports"], f"{path}.ports", _compact_port, 100, 1)
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterIPs": doc["clusterIPs"], "selector": selector,
                 "ports": list(ports), "sessionAffinity": doc.get("sessionAffinity", "None"),
                 "sessionAffinityConfig": {"clientIP": {
                     "timeoutSeconds": doc.get("sessionAffinityTimeoutSeconds", DEFAULT_AFFINITY_TIMEOUT)}}},
    }
    try:
        parse_service(service)
    except PeerMapError as exc:
        raise PeerMapError(f"{path}.{exc.path.removeprefix('spec.')}", str(exc).removeprefix(f"{exc.path}: ")) \
            from None
    objects: list[tuple[str, dict[str, Any]]] = [("Service", service)]
    selected = [pod for pod in pods if selector and pod.namespace == namespace
                and all(pod.labels.get(k) == v for k, v in selector.items())]
    for family, version in (("IPv4", 4), ("IPv6", 6)):
        endpoints = [{"addresses": [str(address)], "conditions": {"ready": True, "serving": True, "terminating": False},
                      "targetRef": {"kind": "Pod", "namespace": pod.namespace, "name": pod.name}}
                     for pod in selected for address in pod.addresses if address.version == version]
        if endpoints:
            objects.append(("EndpointSlice", {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": family,
                "metadata": {"name": f"{name}-{family.lower()}", "namespace": namespace,
                             "labels": {SERVICE_NAME_LABEL: name}},
                "ports": [{"name": p["name"], "protocol": p["protocol"], "port": p["targetPort"]} for p in ports],
                "endpoints": endpoints}))
    return objects


def _compact_port(value: Any, path: str) -> dict[str, Any]:
    doc = fields.obj(value, path, {"port"}, {"name", "protocol", "targetPort"})
    port = fields.integer(doc["port"], f"{path}.port", 1, 65535)
    return {"name": doc.get("name", ""), "protocol": doc.get("protocol", "TCP"), "port": port,
            "targetPort": fields.integer(doc.get("targetPort", port), f"{path}.targetPort", 1, 65535)}
