"""An IPsecPeering's spec, parsed with the CRD's defaults and checked.

`parse_peering` is used by the handlers (on objects the API server already
defaulted) and by the validating webhook, which turns `InvalidPeering`'s
messages into the answer `kubectl apply` shows.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from ipsec_mesh.meshapi import AuthKind, Enforcement, Lifetimes, PeerMapError, fields
from ipsec_mesh.meshapi.identity import check_identity_pattern
from ipsec_mesh.meshapi.proposals import (
    MESH_DEFAULT_ESP,
    MESH_DEFAULT_IKE_PROPOSALS,
    parse_esp,
    parse_ike,
    proposal_list,
)

from .federation_spec import FederationSpec, parse_federation
from .label_selectors import LabelSelector, SelectorError

GROUP = "ipsec-mesh.io"
VERSION = "v1alpha1"
PLURAL = "ipsecpeerings"
KIND = "IPsecPeering"

# Mirrors the defaults in crds/ipsecpeerings.yaml (a test keeps them equal).
DEFAULTS = {
    "certificateLifetime": "24h",
    "pskRotationInterval": "720h",
    "pskOverlap": "1h",
    "ikeLifetime": "4h",
    "childLifetime": "1h",
    "inactivity": "15m",
}
# The CRD's fields (crds/ipsecpeerings.yaml; a test keeps them equal): anything else is a typo.
SPEC_FIELDS = frozenset({"selector", "peers", "authentication", "proposals", "lifetimes", "enforcement", "tfcPadding"})
AUTH_FIELDS = frozenset({"type", "certificateLifetime", "pskRotationInterval", "pskOverlap"})
PROPOSAL_FIELDS = frozenset({"ike", "esp"})
LIFETIME_FIELDS = frozenset({"ike", "child", "inactivity"})
PEER_FIELDS = frozenset({"name", "podSelector", "namespaceSelector", "remote"})
MIN_CHILD_LIFETIME = 60
MIN_CERTIFICATE_LIFETIME = 600


class InvalidPeering(Exception):
    """The spec makes no sense; `messages` say what to change."""

    def __init__(self, messages: list[str]):
        super().__init__("; ".join(messages))
        self.messages = messages


@dataclass(frozen=True)
class PodPeers:
    """Peers in this cluster: pods matching `pods` in namespaces matching `namespaces`."""

    pods: LabelSelector
    #: None: only the peering's own namespace.
    namespaces: LabelSelector | None


@dataclass(frozen=True)
class RemoteCluster:
    name: str
    cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    identities: tuple[str, ...]
    #: (kind, name, key) of the ConfigMap/Secret holding the remote CA bundle.
    trust_bundle_ref: tuple[str, str, str] | None
    #: (name, key) of the Secret holding the PSK agreed with the remote cluster.
    psk_secret_ref: tuple[str, str] | None
    #: The remote operator's bundle endpoint (in place of a copied trust bundle).
    federation: FederationSpec | None = None

    @property
    def trust(self) -> str:
        """How the remote's certificates are checked: a fetched bundle, a copied one, or a PSK."""
        if self.federation is not None:
            return "federation"
        return "trustBundle" if self.trust_bundle_ref is not None else "psk"


@dataclass(frozen=True)
class PeeringSpec:
    namespace: str
    name: str
    selector: LabelSelector
    pod_peers: tuple[PodPeers, ...]
    remotes: tuple[RemoteCluster, ...]
    auth: AuthKind
    certificate_lifetime: int
    psk_rotation_interval: int
    psk_overlap: int
    ike_proposals: tuple[str, ...]
    esp_proposals: tuple[str, ...]
    lifetimes: Lifetimes
    enforcement: Enforcement
    tfc_padding: bool

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name


class _Collector:
    """Runs field checks and keeps every failure message instead of stopping at the first."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def check(self, function: Any, *args: Any, default: Any = None) -> Any:
        try:
            return function(*args)
        except (PeerMapError, SelectorError) as exc:
            self.messages.append(str(exc))
            return default


def _section(spec: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = spec.get(key)
    return value if isinstance(value, Mapping) else {}


def parse_peering(namespace: str, name: str, spec: Any) -> PeeringSpec:
    """Parse `spec` (defaults applied where absent); raises InvalidPeering with all problems."""
    if not isinstance(spec, Mapping):
        raise InvalidPeering(["spec must be an object"])
    c = _Collector()
    auth_spec = _section(spec, "authentication")
    proposals = _section(spec, "proposals")
    lifetimes = _section(spec, "lifetimes")
    # The API server prunes unknown fields; the standalone YAML reaches us unpruned.
    c.messages.extend(fields.unknown_fields(spec, "spec", SPEC_FIELDS))
    for section, path, known in ((auth_spec, "spec.authentication", AUTH_FIELDS),
                                 (proposals, "spec.proposals", PROPOSAL_FIELDS),
                                 (lifetimes, "spec.lifetimes", LIFETIME_FIELDS)):
        c.messages.extend(fields.unknown_fields(section, path, known))
    auth = c.check(fields.choice, auth_spec.get("type", "certificate"), "spec.authentication.type", AuthKind,
                   default=AuthKind.CERTIFICATE)
    pod_peers, remotes = _parse_peers(c, spec.get("peers"))

    def duration(section: Mapping[str, Any], key: str, default_key: str, path: str, minimum: int = 1) -> int:
        return cast(int, c.check(fields.duration, section.get(key, DEFAULTS[default_key]), path, minimum, default=1))

    parsed = PeeringSpec(
        namespace=namespace,
        name=name,
        selector=c.check(LabelSelector.parse, spec.get("selector"), "spec.selector", default=LabelSelector()),
        pod_peers=pod_peers,
        remotes=remotes,
        auth=auth,
        certificate_lifetime=duration(auth_spec, "certificateLifetime", "certificateLifetime",
                                      "spec.authentication.certificateLifetime"),
        psk_rotation_interval=duration(auth_spec, "pskRotationInterval", "pskRotationInterval",
                                       "spec.authentication.pskRotationInterval"),
        psk_overlap=duration(auth_spec, "pskOverlap", "pskOverlap", "spec.authentication.pskOverlap"),
        ike_proposals=c.check(proposal_list, proposals.get("ike", list(MESH_DEFAULT_IKE_PROPOSALS)), "spec.proposals.ike", parse_ike,
                              default=()),
        esp_proposals=c.check(proposal_list, proposals.get("esp", [MESH_DEFAULT_ESP]), "spec.proposals.esp", parse_esp,
                              default=()),
        lifetimes=Lifetimes(
            ike_seconds=duration(lifetimes, "ike", "ikeLifetime", "spec.lifetimes.ike"),
            child_seconds=duration(lifetimes, "child", "childLifetime", "spec.lifetimes.child"),
            inactivity_seconds=duration(lifetimes, "inactivity", "inactivity", "spec.lifetimes.inactivity", 0),
        ),
        enforcement=c.check(fields.choice, spec.get("enforcement", "require"), "spec.enforcement", Enforcement,
                            default=Enforcement.REQUIRE),
        tfc_padding=c.check(fields.boolean, spec.get("tfcPadding", False), "spec.tfcPadding", default=False),
    )
    if "selector" not in spec:
        c.messages.append("spec.selector: missing; use {} to pick every pod in the namespace")
    c.messages.extend(_consistency_problems(parsed))
    if c.messages:
        raise InvalidPeering(c.messages)
    return parsed


def _parse_peers(c: _Collector, value: Any) -> tuple[tuple[PodPeers, ...], tuple[RemoteCluster, ...]]:
    if not isinstance(value, list) or not value:
        c.messages.append("spec.peers: list at least one peer (a podSelector or a remote cluster)")
        return (), ()
    pod_peers: list[PodPeers] = []
    remotes: list[RemoteCluster] = []
    for index, item in enumerate(value):
        path = f"spec.peers[{index}]"
        if not isinstance(item, Mapping) or ("podSelector" in item) == ("remote" in item):
            c.messages.append(f"{path}: give exactly one of podSelector (pods here) or remote (another cluster)")
            continue
        c.messages.extend(fields.unknown_fields(item, path, PEER_FIELDS))
        if "podSelector" in item:
            pods = c.check(LabelSelector.parse, item["podSelector"], f"{path}.podSelector", default=LabelSelector())
            namespaces = None
            if "namespaceSelector" in item:
                namespaces = c.check(LabelSelector.parse, item["namespaceSelector"], f"{path}.namespaceSelector",
                                     default=LabelSelector())
            pod_peers.append(PodPeers(pods, namespaces))
        else:
            if "namespaceSelector" in item:
                c.messages.append(f"{path}.namespaceSelector: only applies to podSelector peers; remove it")
            remote = c.check(_parse_remote, item["remote"], f"{path}.remote")
            if remote is not None:
                remotes.append(remote)
    names = [remote.name for remote in remotes]
    if len(set(names)) != len(names):
        c.messages.append("spec.peers: remote cluster names must be unique")
    return tuple(pod_peers), tuple(remotes)


def _bundle_ref(value: Any, path: str, default_key: str) -> tuple[str, str, str]:
    ref = fields.obj(value, path, {"name"}, {"kind", "key"})
    kind = ref.get("kind", "ConfigMap")
    if kind not in ("ConfigMap", "Secret"):
        raise PeerMapError(f"{path}.kind", "must be ConfigMap or Secret")
    return kind, fields.string(ref["name"], f"{path}.name"), fields.string(ref.get("key", default_key), f"{path}.key")


def _parse_remote(value: Any, path: str) -> RemoteCluster:
    doc = fields.obj(value, path, {"name", "cidrs"}, {"identities", "trustBundle", "pskSecretRef", "federation"})
    bundle = _bundle_ref(doc["trustBundle"], f"{path}.trustBundle", "ca.crt") if "trustBundle" in doc else None
    federation = parse_federation(doc["federation"], f"{path}.federation", _bundle_ref) \
        if "federation" in doc else None
    if bundle is not None and federation is not None:
        raise PeerMapError(path, "give trustBundle (a copied bundle) or federation (fetched), not both")
    psk = None
    if "pskSecretRef" in doc:
        ref = fields.obj(doc["pskSecretRef"], f"{path}.pskSecretRef", {"name"}, {"key"})
        psk = (fields.string(ref["name"], f"{path}.pskSecretRef.name"),
               fields.string(ref.get("key", "psk"), f"{path}.pskSecretRef.key"))
    identities = fields.array(doc.get("identities", []), f"{path}.identities", check_identity_pattern, 256)
    if federation is not None:
        domain = federation.trust_domain
        outside = [i for i in identities if i != domain and not i.endswith("." + domain)]
        if outside:  # the fetched bundle vouches for its own trust domain only
            raise PeerMapError(f"{path}.identities", f"{', '.join(outside)} outside the federated trust domain {domain}")
    return RemoteCluster(
        name=fields.string(doc["name"], f"{path}.name", 63),
        cidrs=fields.array(doc["cidrs"], f"{path}.cidrs", fields.network, 32, 1),
        identities=identities,
        trust_bundle_ref=bundle,
        psk_secret_ref=psk,
        federation=federation,
    )


def _consistency_problems(spec: PeeringSpec) -> list[str]:
    problems = []
    if spec.psk_rotation_interval <= spec.psk_overlap:
        problems.append("spec.authentication: pskRotationInterval must be longer than pskOverlap")
    if spec.certificate_lifetime < MIN_CERTIFICATE_LIFETIME:
        problems.append(f"spec.authentication.certificateLifetime: at least {MIN_CERTIFICATE_LIFETIME}s")
    if spec.lifetimes.child_seconds < MIN_CHILD_LIFETIME:
        problems.append(f"spec.lifetimes.child: at least {MIN_CHILD_LIFETIME}s, or rekeying never rests")
    if spec.lifetimes.ike_seconds < spec.lifetimes.child_seconds:
        problems.append("spec.lifetimes: the IKE SA lifetime must not be shorter than the CHILD_SA lifetime")
    for remote in spec.remotes:
        where = f"spec.peers (remote {remote.name})"
        if spec.auth is AuthKind.PSK and remote.psk_secret_ref is None:
            problems.append(f"{where}: psk authentication with a remote cluster needs remote.pskSecretRef")
        if spec.auth is AuthKind.CERTIFICATE and remote.trust_bundle_ref is None and remote.federation is None:
            problems.append(f"{where}: certificate authentication needs remote.federation (the remote operator's "
                            "bundle endpoint) or remote.trustBundle (a copy of the remote mesh CA)")
        if spec.auth is AuthKind.CERTIFICATE and not remote.identities:
            problems.append(f"{where}: list the identities the remote peers may use (e.g. '*.pod.east.example')")
    return problems
