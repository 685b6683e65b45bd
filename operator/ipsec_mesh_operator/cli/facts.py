"""What `ipsec-mesh explain` and `ipsec-mesh peerings` know about a cluster, as plain data.

The sources (sources.py) fill these from the API server or the operator's admin API
and the sidecars' /status endpoints; diagnose.py reasons over them without any IO.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ipsec_mesh.meshapi import PeerMapError, ServiceEntry

from ..model import rules
from ..model.services import ServiceTable, SliceInfo, parse_service
from ..model.settings import INJECT_LABEL, INJECTED_ANNOTATION
from ..model.sidecar import SIDECAR_NAME

PodKey = tuple[str, str]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class PodFacts:
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ips: tuple[str, ...] = ()
    phase: str = "Running"
    #: The injection webhook's annotation is on the pod.
    injected: bool = False
    #: A container named like the sidecar is in the pod spec.
    has_sidecar: bool = False
    #: The sidecar's /status document; None when it could not be read (see status_error).
    status: Mapping[str, Any] | None = None
    status_error: str = ""

    @property
    def key(self) -> PodKey:
        return self.namespace, self.name

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_pod(cls, body: Mapping[str, Any], status: Mapping[str, Any] | None = None,
                 status_error: str = "") -> PodFacts:
        """From a Pod object as the API server returns it (a dict)."""
        meta, spec, pod_status = _mapping(body.get("metadata")), _mapping(body.get("spec")), _mapping(body.get("status"))
        ips = [entry.get("ip") for entry in pod_status.get("podIPs") or [] if isinstance(entry, Mapping)]
        if not ips and pod_status.get("podIP"):
            ips = [pod_status["podIP"]]
        containers = list(spec.get("initContainers") or []) + list(spec.get("containers") or [])
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            labels=dict(_mapping(meta.get("labels"))),
            ips=tuple(str(ip) for ip in ips if ip),
            phase=str(pod_status.get("phase", "Unknown")),
            injected=_mapping(meta.get("annotations")).get(INJECTED_ANNOTATION) == "true",
            has_sidecar=any(_mapping(c).get("name") == SIDECAR_NAME for c in containers),
            status=status,
            status_error=status_error,
        )

    @property
    def opted_out(self) -> bool:
        return self.labels.get(INJECT_LABEL) == "false"


@dataclass(frozen=True)
class RemoteFacts:
    """A remote cluster a peering names: where its pods are, what they may claim, how they are trusted."""

    name: str
    cidrs: tuple[IpNetwork, ...]
    identities: tuple[str, ...] = ()
    #: "federation" (fetched bundle), "trustBundle" (copied) or "psk".
    trust: str = "psk"

    def covers(self, ip: str) -> int | None:
        """The longest prefix of this remote's CIDRs holding `ip`, None when none does."""
        address = ipaddress.ip_address(ip)
        lengths = [n.prefixlen for n in self.cidrs if n.version == address.version and address in n]
        return max(lengths) if lengths else None

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> RemoteFacts:
        """From an entry of the standalone overview's `remotes`."""
        cidrs = []
        for cidr in doc.get("cidrs") or []:
            try:
                cidrs.append(ipaddress.ip_network(str(cidr), strict=False))
            except ValueError:
                continue  # the operator validated them; a garbled one covers nothing
        return cls(str(doc.get("name", "")), tuple(cidrs), tuple(str(i) for i in doc.get("identities") or []),
                   str(doc.get("trust", "psk")))


@dataclass(frozen=True)
class PeeringFacts:
    namespace: str
    name: str
    spec: Mapping[str, Any]
    status: Mapping[str, Any] = field(default_factory=dict)
    #: The operator's own lists ("ns/pod") where the source has them (standalone admin API);
    #: None: work them out from the spec's selectors.
    members: tuple[str, ...] | None = None
    peers: tuple[str, ...] | None = None
    #: Settings as the operator reports them, where there is no spec to read them from.
    auth: str | None = None
    enforcement: str | None = None
    #: Remote clusters as the operator reports them; None: read them from the spec.
    remotes: tuple[RemoteFacts, ...] | None = None

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_object(cls, body: Mapping[str, Any]) -> PeeringFacts:
        meta = _mapping(body.get("metadata"))
        return cls(str(meta.get("namespace", "")), str(meta.get("name", "")),
                   _mapping(body.get("spec")), _mapping(body.get("status")))

    def federation(self, remote: str) -> Mapping[str, Any] | None:
        """The operator's report on a federated remote's bundle (status.federation), if any."""
        for entry in self.status.get("federation") or []:
            if isinstance(entry, Mapping) and entry.get("remote") == remote:
                return entry
        return None

    def condition(self, kind: str) -> Mapping[str, Any] | None:
        for entry in self.status.get("conditions") or []:
            if isinstance(entry, Mapping) and entry.get("type") == kind:
                return entry
        return None


@dataclass(frozen=True)
class PolicyView:
    """One policy of a pod's peer map: which peers it covers (no key material)."""

    name: str
    enforcement: str
    peers: tuple[tuple[str, tuple[IpNetwork, ...]], ...]

    def peer_for(self, ip: str) -> str | None:
        address = ipaddress.ip_address(ip)
        for name, networks in self.peers:
            if any(n.version == address.version and address in n for n in networks):
                return name
        return None


@dataclass(frozen=True)
class PeerMapView:
    version: int
    policies: tuple[PolicyView, ...]

    def policy_for(self, ip: str) -> PolicyView | None:
        """The policy the sidecar would use for `ip`: longest prefix, then map order (as PeerSet)."""
        best: tuple[int, PolicyView] | None = None
        address = ipaddress.ip_address(ip)
        for policy in self.policies:
            for _, networks in policy.peers:
                for network in networks:
                    if network.version == address.version and address in network:
                        if best is None or network.prefixlen > best[0]:
                            best = (network.prefixlen, policy)
        return best[1] if best else None

    @classmethod
    def from_peer_map(cls, peer_map: Any) -> PeerMapView:
        """From an `ipsec_mesh.meshapi.PeerMap`."""
        return cls(peer_map.version, tuple(
            PolicyView(p.name, p.enforcement.value, tuple((peer.name, tuple(peer.addresses)) for peer in p.peers))
            for p in peer_map.policies))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> PeerMapView:
        """From a peer map's JSON form; PSK values, if any, are ignored."""
        policies = []
        for policy in doc.get("peerings") or []:
            policy = _mapping(policy)
            peers = tuple(
                (str(_mapping(peer).get("name", "")),
                 tuple(ipaddress.ip_network(a, strict=False) for a in _mapping(peer).get("addresses") or []))
                for peer in policy.get("peers") or [])
            policies.append(PolicyView(str(policy.get("name", "")), str(policy.get("enforcement", "require")), peers))
        return cls(int(doc.get("version", 0)), tuple(policies))


@dataclass(frozen=True)
class ServiceFacts:
    namespace: str
    name: str
    #: The Service with every endpoint of its slices, merged as the operator merges them (`peer` unset);
    #: None when the mesh does not translate it (see `skipped`).
    entry: ServiceEntry | None = None
    skipped: str = ""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_objects(cls, service: Mapping[str, Any], slices: Iterable[Mapping[str, Any]]) -> ServiceFacts:
        """From the Service and EndpointSlice objects (dicts, as the API server returns them)."""
        meta = _mapping(service.get("metadata"))
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        try:
            parsed = parse_service(service)
        except PeerMapError as exc:
            return cls(namespace, name, skipped=f"the operator cannot use it: {exc}")
        if parsed is None:
            spec = _mapping(service.get("spec"))
            kind = "ExternalName" if spec.get("type") == "ExternalName" else (
                "headless" if spec.get("clusterIP") == "None" else "without a ClusterIP")
            return cls(namespace, name, skipped=kind)
        table = ServiceTable()
        table.upsert_service(parsed)
        for body in slices:
            try:
                info = SliceInfo.from_body(body)
            except PeerMapError:
                continue  # the operator leaves it out too
            if info is not None and info.service_key == (namespace, name):
                table.upsert_slice(info)
        return cls(namespace, name, table.entry((namespace, name), frozenset()))


@dataclass(frozen=True)
class Facts:
    pods: Mapping[PodKey, PodFacts]
    peerings: tuple[PeeringFacts, ...] = ()
    #: Labels per namespace; each counts as labelled with its name too (model/rules.namespace_labels).
    namespaces: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: The operator's peer map per pod, where the source can see them.
    peer_maps: Mapping[PodKey, PeerMapView] | None = None
    #: The operator's current peer-map version per pod, where the source can see them.
    map_versions: Mapping[PodKey, int] = field(default_factory=dict)
    #: Unix time the facts were collected.
    collected_at: float = 0.0
    #: Services asked about, by (namespace, name); a missing one does not exist.
    services: Mapping[PodKey, ServiceFacts] = field(default_factory=dict)

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        return rules.namespace_labels(namespace, self.namespaces.get(namespace))
