"""Kubernetes Services and EndpointSlices as the mesh index needs them (docs/services.md).

`parse_service` and `SliceInfo.from_body` turn API objects (from the kopf watches,
or the standalone YAML) into checked, immutable values, or return None for
objects the mesh has nothing to do with (headless and ExternalName Services, Services
without a ClusterIP yet, FQDN slices, slices of no Service). Anything malformed raises
`PeerMapError` naming the field: the objects come from whoever may write Services.

`ServiceTable` holds them, bounded, and answers the two questions the index asks:
which Services have an endpoint at a given address, and the peer-map entry of a
Service for a given set of peer addresses (cached: most pods on one side of a
peering see the same peers, so they share one entry object).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ipsec_mesh.meshapi import (
    MAX_SERVICE_ENDPOINTS,
    MAX_SERVICE_PORTS,
    MAX_SERVICES,
    PeerMapError,
    ServiceEndpoint,
    ServiceEntry,
    ServicePort,
    ServiceProtocol,
    SessionAffinity,
    fields,
)
from ipsec_mesh.meshapi.identity import check_dns_name, check_label
from ipsec_mesh.meshapi.model import IpAddress

logger = logging.getLogger("ipsec_mesh_operator")

ServiceKey = tuple[str, str]  # (namespace, name)
SliceKey = tuple[str, str]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: Slices held at once, cluster-wide; the API server's own limits per slice below.
MAX_ENDPOINT_SLICES = 100_000
#: Held at once from any one namespace (configurable, docs/services.md): whoever may create Services in
#: one namespace cannot fill the cluster-wide table for every other namespace.
MAX_SERVICES_PER_NAMESPACE = 2_000
MAX_ENDPOINT_SLICES_PER_NAMESPACE = 10_000
MAX_SLICE_ENDPOINTS = 1000
MAX_SLICE_PORTS = 100
MAX_SLICE_ADDRESSES = 100
DEFAULT_AFFINITY_TIMEOUT = 10800
#: Objects whose last problem is remembered (so it is logged once, not on every resync).
MAX_REMEMBERED_PROBLEMS = 10_000


def _port_name(value: Any, path: str) -> str:
    if value is None or value == "":
        return ""
    return check_label(value, path)


def _protocol(value: Any, path: str) -> ServiceProtocol:
    return fields.choice("TCP" if value is None else value, path, ServiceProtocol)


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if type(value) is not dict and not isinstance(value, Mapping):  # the ABC check is slow; JSON gives dicts
        raise PeerMapError(path, "must be an object")
    return value


def _metadata(body: Any) -> tuple[str, Any, Mapping[str, Any]]:
    """Namespace (checked), name (unchecked: Services and EndpointSlices check it differently), metadata."""
    meta = _mapping(_mapping(body, "").get("metadata"), "metadata")
    namespace = check_label(meta.get("namespace", "default"), "metadata.namespace")
    return namespace, meta.get("name"), meta


def parse_service(body: Any) -> ServiceEntry | None:
    """The Service as a peer-map entry without endpoints, or None if the mesh has nothing to translate
    (headless, ExternalName, no ClusterIP yet)."""
    namespace, name, _ = _metadata(body)
    name = check_label(name, "metadata.name")
    spec = _mapping(body.get("spec"), "spec")
    if spec.get("type") == "ExternalName":
        return None
    texts = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    if not texts or texts[0] == "None":
        return None  # headless (DNS answers with pod IPs) or not allocated yet
    cluster_ips = fields.array(texts, "spec.clusterIPs", fields.address, 2, 1)
    ports = fields.array(spec.get("ports"), "spec.ports", _port, MAX_SERVICE_PORTS, 1)
    affinity = fields.choice(spec.get("sessionAffinity") or "None", "spec.sessionAffinity", SessionAffinity)
    client_ip = _mapping(_mapping(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig")
                         .get("clientIP"), "spec.sessionAffinityConfig.clientIP")
    timeout = fields.integer(client_ip.get("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT),
                             "spec.sessionAffinityConfig.clientIP.timeoutSeconds", 1, 86400)
    try:  # the peer map's own checks: one address per family, unicast, unique ports
        return ServiceEntry(namespace=namespace, name=name, cluster_ips=cluster_ips, ports=ports,
                            session_affinity=affinity, affinity_timeout_seconds=timeout)
    except PeerMapError as exc:
        raise PeerMapError(f"spec.{exc.path}", str(exc).removeprefix(f"{exc.path}: ")) from None


def _port(value: Any, path: str) -> ServicePort:
    doc = _mapping(value, path)
    return ServicePort(_port_name(doc.get("name"), f"{path}.name"), _protocol(doc.get("protocol"), f"{path}.protocol"),
                       fields.integer(doc.get("port"), f"{path}.port", 1, 65535))


@dataclass(frozen=True, slots=True)  # tens of thousands live in the table: no instance dicts
class SliceEndpoint:
    address: IpAddress
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    #: The address as pods' `ips` hold it: the reverse index's key (str hashes are cached, addresses' are not).
    text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", str(self.address))

    @property
    def rank(self) -> tuple[bool, bool, bool]:
        """Of two listings of one address, the better one wins (a slice in transition lists it twice)."""
        return self.ready, self.serving, not self.terminating


@dataclass(frozen=True)
class SliceInfo:
    namespace: str
    name: str
    service: str
    #: Name, protocol and target port as the slice lists them (no endpoints).
    ports: tuple[ServicePort, ...]
    endpoints: tuple[SliceEndpoint, ...]

    @property
    def key(self) -> SliceKey:
        return self.namespace, self.name

    @property
    def service_key(self) -> ServiceKey:
        return self.namespace, self.service

    @classmethod
    def from_body(cls, body: Any) -> SliceInfo | None:
        """The slice, or None if it serves no Service or lists FQDNs (kube-proxy ignores those too)."""
        namespace, name, meta = _metadata(body)
        name = check_dns_name(name, "metadata.name")
        service = _mapping(meta.get("labels"), "metadata.labels").get(SERVICE_NAME_LABEL)
        if service is None:
            return None
        service = check_label(service, f"metadata.labels[{SERVICE_NAME_LABEL}]")
        family = body.get("addressType")
        if family == "FQDN":
            return None
        if family not in ("IPv4", "IPv6"):
            raise PeerMapError("addressType", f"unknown value {family!r}")
        version = 4 if family == "IPv4" else 6
        ports = tuple(p for p in fields.array(body.get("ports") or [], "ports", _slice_port, MAX_SLICE_PORTS)
                      if p is not None)
        endpoints: list[SliceEndpoint] = []
        for index, entry in enumerate(fields.array(body.get("endpoints") or [], "endpoints", _mapping,
                                                   MAX_SLICE_ENDPOINTS)):
            path = f"endpoints[{index}]"
            conditions = _mapping(entry.get("conditions"), f"{path}.conditions")
            ready = conditions.get("ready")
            ready = True if ready is None else fields.boolean(ready, f"{path}.conditions.ready")  # as kube-proxy
            serving = conditions.get("serving")
            serving = ready if serving is None else fields.boolean(serving, f"{path}.conditions.serving")
            terminating = conditions.get("terminating")
            terminating = False if terminating is None else fields.boolean(terminating,
                                                                           f"{path}.conditions.terminating")
            for address in fields.array(entry.get("addresses"), f"{path}.addresses", fields.address,
                                        MAX_SLICE_ADDRESSES, 1):
                if address.version != version:
                    raise PeerMapError(f"{path}.addresses", f"{address} is not an {family} address")
                fields.check_unicast(address, f"{path}.addresses")
                endpoints.append(SliceEndpoint(address, ready, serving, terminating))
        return cls(namespace, name, service, ports, tuple(endpoints))


def _admit(path: str, what: str, key: tuple[str, str], held: int, limit: int, held_in: Counter[str],
           namespace_limit: int) -> None:
    """Count a new object of namespace key[0] in, or refuse it past the cluster-wide or the namespace's bound."""
    if held >= limit:
        raise PeerMapError(path, f"more than {limit} {what}: {'/'.join(key)} is ignored")
    if held_in[key[0]] >= namespace_limit:
        raise PeerMapError(path, f"more than {namespace_limit} {what} in namespace {key[0]}: "
                                 f"{'/'.join(key)} is ignored")
    held_in[key[0]] += 1


def _release(held_in: Counter[str], namespace: str) -> None:
    held_in[namespace] -= 1
    if not held_in[namespace]:
        del held_in[namespace]


def _slice_port(value: Any, path: str) -> ServicePort | None:
    if _mapping(value, path).get("port") is None:
        return None  # "all ports": nothing to translate to (kube-proxy skips it as well)
    return _port(value, path)


#: A Service's endpoints per port before peer flags: ((port, (target port, ...), (endpoint, ...)), ...),
#: two parallel tuples rather than a pair per endpoint (fewer objects for the garbage collector to scan).
Merged = tuple[tuple[ServicePort, tuple[int, ...], tuple[SliceEndpoint, ...]], ...]


class ServiceTable:
    """Services and their slices, with the reverse index endpoint address -> Services.

    Addresses in and out are text, as `PodInfo.ips` holds them (canonical form).
    """

    def __init__(self, max_services: int = MAX_SERVICES, max_slices: int = MAX_ENDPOINT_SLICES,
                 max_services_per_namespace: int = MAX_SERVICES_PER_NAMESPACE,
                 max_slices_per_namespace: int = MAX_ENDPOINT_SLICES_PER_NAMESPACE):
        self.max_services, self.max_slices = max_services, max_slices
        self.max_services_per_namespace, self.max_slices_per_namespace = max_services_per_namespace, \
            max_slices_per_namespace
        self._services: dict[ServiceKey, ServiceEntry] = {}
        self._slices: dict[SliceKey, SliceInfo] = {}
        #: How many of each the table holds per namespace.
        self._services_in: Counter[str] = Counter()
        self._slices_in: Counter[str] = Counter()
        self._slices_of: dict[ServiceKey, set[SliceKey]] = defaultdict(set)
        self._by_address: dict[str, set[ServiceKey]] = defaultdict(set)
        self._merged: dict[ServiceKey, Merged] = {}
        self._merged_addresses: dict[ServiceKey, frozenset[str]] = {}
        self._entries: dict[ServiceKey, dict[frozenset[str], ServiceEntry]] = {}
        self._problems: dict[tuple[str, str, str], str] = {}

    def __len__(self) -> int:
        return len(self._services)

    def service(self, key: ServiceKey) -> ServiceEntry | None:
        return self._services.get(key)

    def slices_of(self, key: ServiceKey) -> tuple[SliceInfo, ...]:
        return tuple(self._slices[k] for k in sorted(self._slices_of.get(key, ())))

    def problem(self, kind: str, key: tuple[str, str]) -> str | None:
        """Why the object was last skipped, if it was."""
        return self._problems.get((kind, *key))

    def note_problem(self, kind: str, key: tuple[str, str], message: str) -> bool:
        """Remember that the object is skipped and why; True the first time this message is seen."""
        problem_key = (kind, *key)
        if self._problems.get(problem_key) == message:
            return False
        if problem_key not in self._problems and len(self._problems) >= MAX_REMEMBERED_PROBLEMS:
            self._problems.pop(next(iter(self._problems)))
        self._problems[problem_key] = message
        return True

    def clear_problem(self, kind: str, key: tuple[str, str]) -> None:
        self._problems.pop((kind, *key), None)

    # ---- changes: each returns the endpoint addresses whose Services' entries changed ----

    def upsert_service(self, service: ServiceEntry) -> set[str]:
        """Add or replace a Service (as `parse_service` gives it, without endpoints)."""
        key = service.namespace, service.name
        old = self._services.get(key)
        if old == service:
            return set()
        if old is None:
            _admit("services", "Services", key, len(self._services), self.max_services, self._services_in,
                   self.max_services_per_namespace)
        before = self._addresses(key)
        self._services[key] = service
        return before | self._changed(key)

    def remove_service(self, key: ServiceKey) -> set[str]:
        if key not in self._services:
            return set()
        addresses = self._addresses(key)
        del self._services[key]
        _release(self._services_in, key[0])
        self._changed(key)
        return addresses

    def upsert_slice(self, info: SliceInfo) -> set[str]:
        old = self._slices.get(info.key)
        if old == info:
            return set()
        if old is None:
            _admit("endpointslices", "EndpointSlices", info.key, len(self._slices), self.max_slices, self._slices_in,
                   self.max_slices_per_namespace)
        before = self._unindex_slice(old) if old is not None else set()
        self._slices[info.key] = info
        service_key = info.service_key  # one tuple shared by every address's set
        self._slices_of[service_key].add(info.key)
        for endpoint in info.endpoints:
            self._by_address[endpoint.text].add(service_key)
        if old is not None and old.service_key != info.service_key:
            before |= self._changed(old.service_key)
        return before | self._changed(info.service_key)

    def remove_slice(self, key: SliceKey) -> set[str]:
        old = self._slices.get(key)
        if old is None:
            return set()
        before = self._unindex_slice(old)
        del self._slices[key]
        _release(self._slices_in, key[0])
        return before | self._changed(old.service_key)

    def _unindex_slice(self, old: SliceInfo) -> set[str]:
        """Take the slice out of the reverse indexes; returns the addresses it served (before the change)."""
        addresses = self._addresses(old.service_key)
        siblings = self._slices_of[old.service_key]
        siblings.discard(old.key)
        if not siblings:
            del self._slices_of[old.service_key]
        still = {e.text for k in siblings for e in self._slices[k].endpoints}
        for endpoint in old.endpoints:
            if endpoint.text not in still:
                bucket = self._by_address.get(endpoint.text)
                if bucket is not None:
                    bucket.discard(old.service_key)
                    if not bucket:
                        del self._by_address[endpoint.text]
        return addresses

    def _changed(self, key: ServiceKey) -> set[str]:
        """Drop the Service's cached entries; the addresses of its endpoints (if it is a mesh Service)."""
        self._merged.pop(key, None)
        self._merged_addresses.pop(key, None)
        self._entries.pop(key, None)
        return self._addresses(key)

    def _addresses(self, key: ServiceKey) -> set[str]:
        return set(self.endpoint_addresses(key)) if key in self._services else set()

    # ---- queries -------------------------------------------------------------

    def services_at(self, addresses: Iterable[str]) -> dict[ServiceKey, set[str]]:
        """The mesh Services with an endpoint at any of `addresses`, with those addresses."""
        found: dict[ServiceKey, set[str]] = {}
        for address in addresses:
            for key in self._by_address.get(address, ()):
                if key in self._services and address in self.endpoint_addresses(key):
                    found.setdefault(key, set()).add(address)
        return found

    def endpoint_addresses(self, key: ServiceKey) -> frozenset[str]:
        """Every endpoint address the Service's entry lists (some slice endpoints may not make it)."""
        cached = self._merged_addresses.get(key)
        if cached is None:
            cached = self._merged_addresses[key] = frozenset(
                endpoint.text for _, _, endpoints in self.merged(key) for endpoint in endpoints)
        return cached

    def merged(self, key: ServiceKey) -> Merged:
        """The Service's ports with their endpoints from every slice: port names matched, target ports
        from the slice, one family per cluster IP, duplicates merged, sorted, bounded."""
        cached = self._merged.get(key)
        if cached is not None:
            return cached
        service = self._services[key]
        families = {ip.version for ip in service.cluster_ips}
        slices = [self._slices[k] for k in sorted(self._slices_of.get(key, ()))]
        out = []
        for port in service.ports:
            found: dict[tuple[str, int], SliceEndpoint] = {}  # by address text: str hashes are cached
            for piece in slices:
                for target in piece.ports:
                    if target.name != port.name or target.protocol is not port.protocol:
                        continue
                    for endpoint in piece.endpoints:
                        if endpoint.address.version not in families:
                            continue
                        current = found.get((endpoint.text, target.port))
                        if current is None or endpoint.rank > current.rank:
                            found[(endpoint.text, target.port)] = endpoint
            ordered = sorted(found.items(), key=lambda item: (item[1].address.version, item[1].address, item[0][1]))
            if len(ordered) > MAX_SERVICE_ENDPOINTS:
                if self.note_problem("Service", key, f"port {port.name or port.port}: more than "
                                     f"{MAX_SERVICE_ENDPOINTS} endpoints, the rest left out"):
                    logger.warning("Service %s/%s port %s has more than %d endpoints; the rest are left out",
                                   *key, port.name or port.port, MAX_SERVICE_ENDPOINTS)
                ordered = ordered[:MAX_SERVICE_ENDPOINTS]
            out.append((port, tuple(target for (_, target), _ in ordered), tuple(endpoint for _, endpoint in ordered)))
        merged = self._merged[key] = tuple(out)
        return merged

    def entry(self, key: ServiceKey, peers: frozenset[str]) -> ServiceEntry:
        """The Service's peer-map entry for a pod whose peers include the endpoints at `peers`."""
        by_peers = self._entries.setdefault(key, {})
        entry = by_peers.get(peers)
        if entry is None:
            ports = tuple(
                ServicePort(name=port.name, protocol=port.protocol, port=port.port, endpoints=tuple(
                    ServiceEndpoint(address=e.address, port=target, ready=e.ready, serving=e.serving,
                                    terminating=e.terminating, peer=e.text in peers)
                    for target, e in zip(targets, endpoints, strict=True)))
                for port, targets, endpoints in self.merged(key))
            service = self._services[key]  # dataclasses.replace would look up the fields on every call
            entry = by_peers[peers] = ServiceEntry(
                namespace=service.namespace, name=service.name, cluster_ips=service.cluster_ips, ports=ports,
                session_affinity=service.session_affinity, affinity_timeout_seconds=service.affinity_timeout_seconds)
        return entry

