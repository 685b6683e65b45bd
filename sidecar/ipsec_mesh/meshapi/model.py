"""The peer map: what one pod's sidecar needs to know to protect its traffic.

One document per pod, versioned by the operator. It names the pod itself
(`LocalIdentity`), the CA certificates it trusts, and one `PeeringPolicy` per
IPsecPeering the pod takes part in, each with the peers it covers. The same
structure is read from the operator's JSON (`PeerMap.from_json`) and from a
standalone YAML file (`load_peer_map_file`), so the agent has one input type.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import ipaddress
import json
import sys
from dataclasses import field
from typing import TYPE_CHECKING, Any

from ..records import record
from . import fields
from .documents import NotYaml, load_yaml
from .errors import PeerMapError
from .identity import check_dns_name, check_identity_pattern, check_label
from .proposals import MESH_DEFAULT_ESP, MESH_DEFAULT_IKE_PROPOSALS, parse_esp, parse_ike, proposal_list

if TYPE_CHECKING:
    from pathlib import Path

API_VERSION = "ipsec-mesh.io/peermap/v1"
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
MAX_PEERINGS = 4096
MAX_PEERS = 65536
MAX_ADDRESSES = 64
MAX_IDENTITIES = 256
MAX_CA_CERTS = 16
MAX_PSK_KEYS = 4
MIN_PSK_BYTES = 32
MAX_PSK_BYTES = 256
MAX_SERVICES = 20000
MAX_SERVICE_PORTS = 100
MAX_SERVICE_ENDPOINTS = 5000
MAX_AFFINITY_TIMEOUT_SECONDS = 86400
DEFAULT_AFFINITY_TIMEOUT_SECONDS = 10800

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AuthKind(str, enum.Enum):
    CERTIFICATE = "certificate"
    PSK = "psk"


class Enforcement(str, enum.Enum):
    #: Traffic to a peer is blocked until an SA exists (fail closed).
    REQUIRE = "require"
    #: Traffic to a peer flows in plaintext while no SA exists.
    PREFER = "prefer"


@record(frozen=True)
class PskKey:
    """One generation of a peering's pre-shared key."""

    id: str
    secret: bytes = field(repr=False)
    #: Only keys marked initiate are used to authenticate ourselves; all are accepted.
    initiate: bool = True
    #: Unix time after which the key is no longer accepted; None: until replaced.
    expires_at: int | None = None


@record(frozen=True)
class Lifetimes:
    ike_seconds: int = 4 * 3600
    child_seconds: int = 3600
    #: A CHILD_SA that carried no packet either way this long is deleted (its IKE SA too
    #: when it was the last); 0 = never. docs/ipsecpeering.md explains the default.
    inactivity_seconds: int = 15 * 60


@record(frozen=True)
class Peer:
    """One peer: a pod (one address per IP family) or a remote cluster (its pod CIDRs)."""

    name: str
    addresses: tuple[IpNetwork, ...]
    #: ID_FQDN values the peer may authenticate as; ``*.domain`` matches a domain.
    identities: tuple[str, ...]
    #: CA certificates for this peer only (remote clusters); empty: the map's trust bundle.
    trust_bundle: tuple[str, ...] = ()

    @functools.cached_property
    def json_text(self) -> str:
        """Its JSON in the map, once: the operator lists one pod's entry in every map that lists the pod."""
        return _compact(_peer_to_dict(self))


@record(frozen=True)
class PeeringPolicy:
    """The settings of one IPsecPeering and the peers it gives this pod."""

    name: str
    peers: tuple[Peer, ...]
    auth: AuthKind = AuthKind.CERTIFICATE
    psk_keys: tuple[PskKey, ...] = ()
    ike_proposals: tuple[str, ...] = MESH_DEFAULT_IKE_PROPOSALS
    esp_proposals: tuple[str, ...] = (MESH_DEFAULT_ESP,)
    lifetimes: Lifetimes = Lifetimes()
    enforcement: Enforcement = Enforcement.REQUIRE
    tfc_padding: bool = False

    def __post_init__(self) -> None:
        if (self.auth is AuthKind.PSK) != bool(self.psk_keys):
            raise PeerMapError(self.name, "psk keys are needed exactly when authentication is psk")
        if self.psk_keys and not any(key.initiate for key in self.psk_keys):
            raise PeerMapError(self.name, "no psk key is marked for initiating")
        for proposal in self.ike_proposals:
            parse_ike(proposal)
        for proposal in self.esp_proposals:
            parse_esp(proposal)

    @functools.cached_property
    def json_head(self) -> str:
        """Its JSON in the map up to its peers (the last member), once; interned, as the policies a
        peering gives its pods mostly differ only in their peers (one text, not one per pod)."""
        return sys.intern(_compact(_policy_settings_to_dict(self))[:-1] + ',"peers":[')

    def json_text(self) -> str:
        """Its JSON in the map, from the cached head and peer texts (not kept: one per pod's map)."""
        return self.json_head + ",".join(peer.json_text for peer in self.peers) + "]}"


@record(frozen=True)
class LocalIdentity:
    """The pod the map is for."""

    #: ID_FQDN and certificate dNSName, ``<pod>.<namespace>.pod.<trust-domain>``.
    identity: str
    pod: str = ""
    namespace: str = ""
    service_account: str = ""
    addresses: tuple[IpAddress, ...] = ()


class ServiceProtocol(str, enum.Enum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


class SessionAffinity(str, enum.Enum):
    NONE = "None"
    CLIENT_IP = "ClientIP"


@record(frozen=True)
class ServiceEndpoint:
    """One backend of a service port, with its EndpointSlice conditions."""

    address: IpAddress
    #: The target port, resolved per EndpointSlice (named targetPorts included).
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    #: The endpoint is a peer of this pod under one of the map's peerings.
    peer: bool = False


@record(frozen=True)
class ServicePort:
    #: "" only for the single port of a service.
    name: str
    protocol: ServiceProtocol
    port: int
    endpoints: tuple[ServiceEndpoint, ...] = ()

    def __post_init__(self) -> None:
        if len(self.endpoints) > MAX_SERVICE_ENDPOINTS:
            raise PeerMapError("endpoints", f"at most {MAX_SERVICE_ENDPOINTS} endpoints per port")
        # A duplicate would get twice the share of new connections.
        # By version and integer: an address object's own hash formats it as hex first.
        if len({(ep.address.version, int(ep.address), ep.port) for ep in self.endpoints}) != len(self.endpoints):
            raise PeerMapError("endpoints", "(address, port) must be unique")


@record(frozen=True)
class ServiceEntry:
    """A Service with a ClusterIP that at least one of this pod's peers serves."""

    namespace: str
    name: str
    cluster_ips: tuple[IpAddress, ...]
    ports: tuple[ServicePort, ...]
    session_affinity: SessionAffinity = SessionAffinity.NONE
    affinity_timeout_seconds: int = DEFAULT_AFFINITY_TIMEOUT_SECONDS

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def __post_init__(self) -> None:
        check_label(self.namespace, "namespace")
        check_label(self.name, "name")
        if not 1 <= len(self.cluster_ips) <= 2:
            raise PeerMapError("clusterIPs", "must have 1..2 items")
        families = [ip.version for ip in self.cluster_ips]
        if len(set(families)) != len(families):
            raise PeerMapError("clusterIPs", "at most one address per IP family")
        for index, ip in enumerate(self.cluster_ips):
            fields.check_unicast(ip, f"clusterIPs[{index}]")
        if not 1 <= len(self.ports) <= MAX_SERVICE_PORTS:
            raise PeerMapError("ports", f"must have 1..{MAX_SERVICE_PORTS} items")
        names = [port.name for port in self.ports]
        if len(set(names)) != len(names) or (len(names) > 1 and "" in names):
            raise PeerMapError("ports", "names must be unique, and only a single port may be unnamed")
        if len({(port.protocol, port.port) for port in self.ports}) != len(self.ports):
            raise PeerMapError("ports", "(protocol, port) must be unique")
        for index, port in enumerate(self.ports):
            if port.name:
                check_label(port.name, f"ports[{index}].name")
            if not 1 <= port.port <= 65535:
                raise PeerMapError(f"ports[{index}].port", "must be within 1..65535")
            for ep_index, endpoint in enumerate(port.endpoints):
                path = f"ports[{index}].endpoints[{ep_index}]"
                fields.check_unicast(endpoint.address, f"{path}.address")
                # EndpointSlices are per family: an endpoint only serves the cluster IP of its own.
                if endpoint.address.version not in families:
                    raise PeerMapError(f"{path}.address", "no cluster IP of its address family")
                if not 1 <= endpoint.port <= 65535:
                    raise PeerMapError(f"{path}.port", "must be within 1..65535")
        if not 1 <= self.affinity_timeout_seconds <= MAX_AFFINITY_TIMEOUT_SECONDS:
            raise PeerMapError("sessionAffinityTimeoutSeconds", f"must be within 1..{MAX_AFFINITY_TIMEOUT_SECONDS}")


@record(frozen=True)
class PeerMap:
    version: int
    local: LocalIdentity
    policies: tuple[PeeringPolicy, ...]
    #: The mesh CA certificates (PEM), newest first, during a CA rotation more than one.
    trust_bundle: tuple[str, ...] = ()
    #: Services this pod translates itself (docs/services.md), sorted by key.
    services: tuple[ServiceEntry, ...] = ()

    def __post_init__(self) -> None:
        if len(self.services) > MAX_SERVICES:
            raise PeerMapError("services", f"at most {MAX_SERVICES} services")
        if len({(service.namespace, service.name) for service in self.services}) != len(self.services):
            raise PeerMapError("services", "(namespace, name) must be unique")

    # ---- JSON / dict form -------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "version": self.version,
            "local": _local_to_dict(self.local),
            "trustBundle": list(self.trust_bundle),
            "peerings": [_policy_to_dict(policy) for policy in self.policies],
            "services": [_service_to_dict(service) for service in self.services],
        }

    def to_json(self) -> bytes:
        """Byte for byte `_compact(self.to_dict())`, assembled from the JSON its peers and policies
        keep (a map is mostly other pods' entries, which the operator sends in thousands of maps)."""
        head = _compact({"apiVersion": API_VERSION, "version": self.version, "local": _local_to_dict(self.local)})
        return (head[:-1] + ',"trustBundle":' + _bundle_json(self.trust_bundle)
                + ',"peerings":[' + ",".join(policy.json_text() for policy in self.policies)
                + '],"services":' + _compact([_service_to_dict(service) for service in self.services])
                + "}").encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> PeerMap:
        """Parse the operator's JSON; no file references are allowed in it."""
        if len(data) > MAX_DOCUMENT_BYTES:
            raise PeerMapError("", "document too large")
        try:
            document = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise PeerMapError("", f"not JSON: {exc}") from None
        return cls.from_dict(document)

    @classmethod
    def from_dict(cls, document: Any, base_dir: Path | None = None) -> PeerMap:
        """Validate a decoded document.

        `base_dir` allows ``valueFile`` for pre-shared keys (standalone YAML
        files only); without it, file references are refused.
        """
        doc = fields.obj(document, "", {"local", "peerings"}, {"apiVersion", "version", "trustBundle", "services"})
        if doc.get("apiVersion", API_VERSION) != API_VERSION:
            raise PeerMapError("apiVersion", f"expected {API_VERSION}")
        peerings = fields.array(
            doc["peerings"], "peerings", lambda v, p: _policy_from_dict(v, p, base_dir), MAX_PEERINGS
        )
        names = [policy.name for policy in peerings]
        if len(set(names)) != len(names):
            raise PeerMapError("peerings", "peering names must be unique")
        return cls(
            version=fields.integer(doc.get("version", 0), "version", 0, 2**63 - 1),
            local=_local_from_dict(doc["local"], "local"),
            policies=peerings,
            trust_bundle=fields.array(doc.get("trustBundle", []), "trustBundle", fields.pem_certificate, MAX_CA_CERTS),
            services=fields.array(doc.get("services", []), "services", _service_from_dict, MAX_SERVICES),
        )


def load_peer_map_file(path: str | Path) -> PeerMap:
    """Read a standalone YAML (or JSON) peer map; PSK ``valueFile`` paths are relative to it."""
    from pathlib import Path  # files of the `run` configuration; mesh mode never loads pathlib

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PeerMapError(str(path), f"cannot read: {exc.strerror}") from None
    try:
        document = load_yaml(text)
    except NotYaml as exc:
        raise PeerMapError(str(path), f"not YAML: {exc}") from None
    return PeerMap.from_dict(document, base_dir=path.parent)


# ---- helpers ---------------------------------------------------------------


def _local_to_dict(local: LocalIdentity) -> dict[str, Any]:
    return {
        "identity": local.identity,
        "pod": local.pod,
        "namespace": local.namespace,
        "serviceAccount": local.service_account,
        "addresses": [str(address) for address in local.addresses],
    }


def _local_from_dict(value: Any, path: str) -> LocalIdentity:
    doc = fields.obj(value, path, {"identity"}, {"pod", "namespace", "serviceAccount", "addresses"})
    return LocalIdentity(
        identity=check_dns_name(doc["identity"], f"{path}.identity"),
        pod=fields.string(doc.get("pod", ""), f"{path}.pod", 253, 0),
        namespace=fields.string(doc.get("namespace", ""), f"{path}.namespace", 63, 0),
        service_account=fields.string(doc.get("serviceAccount", ""), f"{path}.serviceAccount", 253, 0),
        addresses=fields.array(doc.get("addresses", []), f"{path}.addresses", fields.address, 2),
    )


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@functools.lru_cache(maxsize=4)
def _bundle_json(bundle: tuple[str, ...]) -> str:
    # Every map of a mesh carries the same bundle: a few KiB of PEM that JSON escapes line by line.
    return _compact(list(bundle))


def _policy_to_dict(policy: PeeringPolicy) -> dict[str, Any]:
    return {**_policy_settings_to_dict(policy), "peers": [_peer_to_dict(peer) for peer in policy.peers]}


def _policy_settings_to_dict(policy: PeeringPolicy) -> dict[str, Any]:
    return {
        "name": policy.name,
        "authentication": policy.auth.value,
        "psk": [
            {
                "id": key.id,
                "value": base64.b64encode(key.secret).decode(),
                "initiate": key.initiate,
                "expiresAt": key.expires_at,
            }
            for key in policy.psk_keys
        ],
        "proposals": {"ike": list(policy.ike_proposals), "esp": list(policy.esp_proposals)},
        "lifetimes": {"ike": policy.lifetimes.ike_seconds, "child": policy.lifetimes.child_seconds,
                      "inactivity": policy.lifetimes.inactivity_seconds},
        "enforcement": policy.enforcement.value,
        "tfcPadding": policy.tfc_padding,
    }


def _policy_from_dict(value: Any, path: str, base_dir: Path | None) -> PeeringPolicy:
    doc = fields.obj(
        value, path, {"name", "peers"},
        {"authentication", "psk", "proposals", "lifetimes", "enforcement", "tfcPadding"},
    )
    proposals = fields.obj(doc.get("proposals", {}), f"{path}.proposals", set(), {"ike", "esp"})
    lifetimes = fields.obj(doc.get("lifetimes", {}), f"{path}.lifetimes", set(), {"ike", "child", "inactivity"})
    defaults = Lifetimes()
    psk_keys = fields.array(doc.get("psk", []), f"{path}.psk", lambda v, p: _psk_from_dict(v, p, base_dir), MAX_PSK_KEYS)
    if len({key.id for key in psk_keys}) != len(psk_keys):
        raise PeerMapError(f"{path}.psk", "key ids must be unique")
    try:
        return PeeringPolicy(
            name=fields.string(doc["name"], f"{path}.name"),
            peers=fields.array(doc["peers"], f"{path}.peers", _peer_from_dict, MAX_PEERS),
            auth=fields.choice(doc.get("authentication", "certificate"), f"{path}.authentication", AuthKind),
            psk_keys=psk_keys,
            ike_proposals=proposal_list(proposals.get("ike", list(MESH_DEFAULT_IKE_PROPOSALS)), f"{path}.proposals.ike", parse_ike),
            esp_proposals=proposal_list(proposals.get("esp", [MESH_DEFAULT_ESP]), f"{path}.proposals.esp", parse_esp),
            lifetimes=Lifetimes(
                ike_seconds=fields.duration(lifetimes.get("ike", defaults.ike_seconds), f"{path}.lifetimes.ike"),
                child_seconds=fields.duration(lifetimes.get("child", defaults.child_seconds), f"{path}.lifetimes.child"),
                inactivity_seconds=fields.duration(lifetimes.get("inactivity", defaults.inactivity_seconds),
                                                   f"{path}.lifetimes.inactivity", minimum=0),
            ),
            enforcement=fields.choice(doc.get("enforcement", "require"), f"{path}.enforcement", Enforcement),
            tfc_padding=fields.boolean(doc.get("tfcPadding", False), f"{path}.tfcPadding"),
        )
    except PeerMapError as exc:
        if exc.path.startswith(path):
            raise
        raise PeerMapError(path, str(exc)) from None


def _psk_from_dict(value: Any, path: str, base_dir: Path | None) -> PskKey:
    doc = fields.obj(value, path, {"id"}, {"value", "valueFile", "initiate", "expiresAt"})
    if ("value" in doc) == ("valueFile" in doc):
        raise PeerMapError(path, "needs exactly one of value or valueFile")
    if "valueFile" in doc:
        if base_dir is None:
            raise PeerMapError(f"{path}.valueFile", "file references are only allowed in local files")
        secret = _read_key_file(base_dir / fields.string(doc["valueFile"], f"{path}.valueFile", 4096), path)
    else:
        try:
            secret = base64.b64decode(fields.string(doc["value"], f"{path}.value", 4 * MAX_PSK_BYTES), validate=True)
        except binascii.Error:
            raise PeerMapError(f"{path}.value", "is not base64") from None
    if not MIN_PSK_BYTES <= len(secret) <= MAX_PSK_BYTES:
        raise PeerMapError(path, f"key must be {MIN_PSK_BYTES}..{MAX_PSK_BYTES} bytes")
    expires = doc.get("expiresAt")
    return PskKey(
        id=fields.string(doc["id"], f"{path}.id", 64),
        secret=secret,
        initiate=fields.boolean(doc.get("initiate", True), f"{path}.initiate"),
        expires_at=None if expires is None else fields.integer(expires, f"{path}.expiresAt", 0, 2**63 - 1),
    )


def _read_key_file(path: Path, field_path: str) -> bytes:
    """A key file holds the raw key, or its base64 form on one line."""
    try:
        raw = path.read_bytes()[: 4 * MAX_PSK_BYTES + 2]
    except OSError as exc:
        raise PeerMapError(f"{field_path}.valueFile", f"cannot read {path}: {exc.strerror}") from None
    stripped = raw.strip()
    try:
        decoded = base64.b64decode(stripped, validate=True)
        if len(decoded) >= MIN_PSK_BYTES:
            return decoded
    except binascii.Error:
        pass
    return raw


def _peer_to_dict(peer: Peer) -> dict[str, Any]:
    return {
        "name": peer.name,
        "addresses": [str(address) for address in peer.addresses],
        "identities": list(peer.identities),
        "trustBundle": list(peer.trust_bundle),
    }


def _peer_from_dict(value: Any, path: str) -> Peer:
    doc = fields.obj(value, path, {"name", "addresses"}, {"identities", "trustBundle"})
    return Peer(
        name=fields.string(doc["name"], f"{path}.name"),
        addresses=fields.array(doc["addresses"], f"{path}.addresses", fields.network, MAX_ADDRESSES, 1),
        identities=fields.array(doc.get("identities", []), f"{path}.identities", check_identity_pattern, MAX_IDENTITIES),
        trust_bundle=fields.array(doc.get("trustBundle", []), f"{path}.trustBundle", fields.pem_certificate, MAX_CA_CERTS),
    )


def _service_to_dict(service: ServiceEntry) -> dict[str, Any]:
    return {
        "namespace": service.namespace,
        "name": service.name,
        "clusterIPs": [str(ip) for ip in service.cluster_ips],
        "sessionAffinity": service.session_affinity.value,
        "sessionAffinityTimeoutSeconds": service.affinity_timeout_seconds,
        "ports": [
            {
                "name": port.name,
                "protocol": port.protocol.value,
                "port": port.port,
                "endpoints": [
                    {
                        "address": str(ep.address),
                        "port": ep.port,
                        "ready": ep.ready,
                        "serving": ep.serving,
                        "terminating": ep.terminating,
                        "peer": ep.peer,
                    }
                    for ep in port.endpoints
                ],
            }
            for port in service.ports
        ],
    }


def _under(path: str, exc: PeerMapError) -> PeerMapError:
    """The dataclass checks name paths relative to the object: prefix the document path."""
    if exc.path.startswith(path):
        return exc
    return PeerMapError(f"{path}.{exc.path}", str(exc).removeprefix(f"{exc.path}: "))


def _service_from_dict(value: Any, path: str) -> ServiceEntry:
    doc = fields.obj(
        value, path, {"namespace", "name", "clusterIPs", "ports"},
        {"sessionAffinity", "sessionAffinityTimeoutSeconds"},
    )
    try:
        return ServiceEntry(
            namespace=fields.string(doc["namespace"], f"{path}.namespace", 63),
            name=fields.string(doc["name"], f"{path}.name", 63),
            cluster_ips=fields.array(doc["clusterIPs"], f"{path}.clusterIPs", fields.address, 2, 1),
            ports=fields.array(doc["ports"], f"{path}.ports", _service_port_from_dict, MAX_SERVICE_PORTS, 1),
            session_affinity=fields.choice(
                doc.get("sessionAffinity", SessionAffinity.NONE.value), f"{path}.sessionAffinity", SessionAffinity
            ),
            affinity_timeout_seconds=fields.integer(
                doc.get("sessionAffinityTimeoutSeconds", DEFAULT_AFFINITY_TIMEOUT_SECONDS),
                f"{path}.sessionAffinityTimeoutSeconds", 1, MAX_AFFINITY_TIMEOUT_SECONDS,
            ),
        )
    except PeerMapError as exc:
        raise _under(path, exc) from None


def _service_port_from_dict(value: Any, path: str) -> ServicePort:
    doc = fields.obj(value, path, {"protocol", "port"}, {"name", "endpoints"})
    try:
        return ServicePort(
            name=fields.string(doc.get("name", ""), f"{path}.name", 63, 0),
            protocol=fields.choice(doc["protocol"], f"{path}.protocol", ServiceProtocol),
            port=fields.integer(doc["port"], f"{path}.port", 1, 65535),
            endpoints=fields.array(
                doc.get("endpoints", []), f"{path}.endpoints", _service_endpoint_from_dict, MAX_SERVICE_ENDPOINTS
            ),
        )
    except PeerMapError as exc:
        raise _under(path, exc) from None


def _service_endpoint_from_dict(value: Any, path: str) -> ServiceEndpoint:
    doc = fields.obj(value, path, {"address", "port"}, {"ready", "serving", "terminating", "peer"})
    return ServiceEndpoint(
        address=fields.address(doc["address"], f"{path}.address"),
        port=fields.integer(doc["port"], f"{path}.port", 1, 65535),
        ready=fields.boolean(doc.get("ready", True), f"{path}.ready"),
        serving=fields.boolean(doc.get("serving", True), f"{path}.serving"),
        terminating=fields.boolean(doc.get("terminating", False), f"{path}.terminating"),
        peer=fields.boolean(doc.get("peer", False), f"{path}.peer"),
    )
