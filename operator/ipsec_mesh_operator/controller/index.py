"""The mesh index: injected pods against peerings, and every pod's peer map.

Kept up to date incrementally: each change (a pod, a namespace's labels, a
peering, a key) works out which pods' peer maps it touches, bumps their
versions and tells the listeners (the mesh API's watchers). Peer maps are
built lazily on request and cached until the next change that touches them.

The rules (members, peers, consent, precedence) are model/rules.py's, shared with
`explain`; this module keeps the bookkeeping that applies them incrementally.

Symmetry and consent: a pod selected by a peering's `selector` gets the
peering's peers, and a peer pod of the peering's own namespace gets its members,
so both ends hold a policy for each other. A peer pod of another namespace gets
a member only with that namespace's consent: one of its own peerings selects it
and lists the member as a peer. Without it the peering is one-sided there (its
members hold a policy, the peer pods none), and `one_sided_namespaces` says so.

A pair of pods covered by several peerings is listed once in each map, under
the peering that comes first by `precedence`: the same choice at both ends.

Services (services.py): a pod's map lists every Service with an endpoint at the
address of a pod its map lists as a peer, with all that Service's endpoints
(`peer` set on those of its peers). A Service or EndpointSlice change marks the
pods whose maps list a pod at one of the Service's endpoint addresses, before or
after the change.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ipsec_mesh.meshapi import (
    AuthKind,
    LocalIdentity,
    Peer,
    PeeringPolicy,
    PeerMap,
    PeerMapError,
    PskKey,
    ServiceEntry,
    fields,
    pod_fqdn,
)
from ipsec_mesh.meshapi.identity import check_dns_name
from ipsec_mesh.meshapi.model import IpAddress, IpNetwork

from ..model import rules
from ..model.label_selectors import LabelSelector
from ..model.peering import PeeringSpec, PodPeers
from ..model.rules import precedence
from ..model.services import ServiceKey, ServiceTable, SliceInfo, SliceKey
from ..model.settings import NAMESPACE_NAME_LABEL

PodKey = tuple[str, str]  # (namespace, name)
PeeringKey = tuple[str, str]
ViewKey = tuple[PeeringKey, bool, bool]
Listener = Callable[[set[PodKey]], None]


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    uid: str
    service_account: str
    labels: Mapping[str, str]
    ips: tuple[str, ...]

    @property
    def key(self) -> PodKey:
        return self.namespace, self.name

    @functools.cached_property
    def addresses(self) -> tuple[IpAddress, ...]:
        return tuple(fields.ip_address(ip) for ip in self.ips)

    @functools.cached_property
    def host_networks(self) -> tuple[IpNetwork, ...]:
        return tuple(
            ipaddress.IPv4Network((int(a), 32)) if a.version == 4 else ipaddress.IPv6Network((int(a), 128))
            for a in self.addresses
        )

    def identity(self, trust_domain: str) -> str | None:
        """The pod's ID_FQDN (see meshapi.identity.pod_fqdn), or None if its names cannot form one."""
        try:
            return pod_fqdn(self.name, self.namespace, trust_domain, self.uid)
        except PeerMapError:
            return None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PodInfo:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        ips = [entry.get("ip") for entry in status.get("podIPs") or [] if isinstance(entry, Mapping)]
        if not ips and status.get("podIP"):
            ips = [status["podIP"]]
        if status.get("phase") in ("Succeeded", "Failed"):
            ips = []  # the addresses are released and may already belong to another pod
        valid = []
        for ip in ips:
            try:
                valid.append(str(fields.ip_address(ip)))
            except (ValueError, TypeError):
                continue
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            service_account=spec.get("serviceAccountName") or "default",
            labels=dict(meta.get("labels") or {}),
            ips=tuple(valid),
        )


class MeshIndex:
    def __init__(self, trust_domain: str = "cluster.local", services: ServiceTable | None = None):
        self.trust_domain = check_dns_name(trust_domain, "trust domain")
        self.listeners: list[Listener] = []
        self._pods: dict[PodKey, PodInfo] = {}
        self._pods_by_namespace: dict[str, set[PodKey]] = defaultdict(set)
        self._pods_by_label: dict[tuple[str, str], set[PodKey]] = defaultdict(set)
        self._pods_by_address: dict[str, set[PodKey]] = defaultdict(set)
        self.services = services if services is not None else ServiceTable()
        self._namespace_labels: dict[str, Mapping[str, str]] = {}
        self._peerings: dict[PeeringKey, PeeringSpec] = {}
        self._peerings_by_namespace: dict[str, set[PeeringKey]] = defaultdict(set)
        #: Peerings with a namespaceSelector: any pod anywhere may be their peer.
        self._cross_namespace: set[PeeringKey] = set()
        #: The same, by one label their cross-namespace pod selector requires (or unkeyed if none):
        #: a new pod only checks those it could match.
        self._cross_by_label: dict[tuple[str, str], set[PeeringKey]] = defaultdict(set)
        self._cross_unkeyed: set[PeeringKey] = set()
        self._members: dict[PeeringKey, set[PodKey]] = {}
        self._peer_pods: dict[PeeringKey, set[PodKey]] = {}
        self._member_of: dict[PodKey, set[PeeringKey]] = defaultdict(set)
        self._peer_of: dict[PodKey, set[PeeringKey]] = defaultdict(set)
        self._psk_keys: dict[PeeringKey, tuple[PskKey, ...]] = {}
        self._remote_psk_keys: dict[tuple[PeeringKey, str], tuple[PskKey, ...]] = {}
        self._remote_bundles: dict[tuple[PeeringKey, str], tuple[str, ...]] = {}
        self._trust_bundle: tuple[str, ...] = ()
        # Versions outlive this process: a sidecar polls a restarted operator (or another replica)
        # with the version the last one gave it and hears of nothing older. So versions are the
        # wall clock's microseconds, strictly increasing here (`_mark`), not a count from zero.
        self._generation = time.time_ns() // 1000
        self._versions: dict[PodKey, int] = {}
        self._maps: dict[PodKey, PeerMap] = {}
        #: Maps whose only change since they were built is the trust bundle: a CA rotation rebuilds none.
        self._rebundle: dict[PodKey, PeerMap] = {}
        self._peer_entries: dict[PodKey, Peer | None] = {}
        #: (peering, member side?, whole other side? else none of it) -> the policies of the pods on
        #: that side that list all of the other side, or none of it (an earlier peering claimed it).
        self._views: dict[ViewKey, list[PeeringPolicy]] = {}
        #: The views a map is made of (in precedence order) -> its Services; valid until the next change.
        self._services_by_views: dict[tuple[ViewKey, ...], tuple[ServiceEntry, ...]] = {}

    # ---- queries -----------------------------------------------------------

    def pod(self, key: PodKey) -> PodInfo | None:
        return self._pods.get(key)

    def pods(self) -> Iterable[PodInfo]:
        return self._pods.values()

    def peering(self, key: PeeringKey) -> PeeringSpec | None:
        return self._peerings.get(key)

    def members(self, key: PeeringKey) -> frozenset[PodKey]:
        return frozenset(self._members.get(key, ()))

    def peer_pods(self, key: PeeringKey) -> frozenset[PodKey]:
        return frozenset(self._peer_pods.get(key, ()))

    def peerings_of(self, pod: PodKey) -> frozenset[PeeringKey]:
        return frozenset(self._member_of.get(pod, set()) | self._peer_of.get(pod, set()))

    def effective_peerings(self, pod: PodKey) -> frozenset[PeeringKey]:
        """The peerings that apply to the pod: all it is a member of, and those whose
        members it accepts (same namespace, or consented)."""
        return frozenset(self._member_of.get(pod, set())) | frozenset(
            key for key in self._peer_of.get(pod, ()) if self._counterparts_via(pod, key))

    def one_sided_namespaces(self, spec: PeeringSpec) -> tuple[str, ...]:
        """Other namespaces whose pods `spec` selects as peers but that do not accept all its members.

        Works for a peering in the index and for one not applied yet (the validating webhook).
        """
        if self._peerings.get(spec.key) == spec:
            members, peers = self._members[spec.key], self._peer_pods[spec.key]
        else:
            members, peers = self._selection(spec)
        waiting: set[str] = set()
        for pod in peers:
            if pod[0] != spec.namespace and pod[0] not in waiting and members:
                if len(rules.counterparts(pod, False, members, peers, lambda p=pod: self._accepted(p))) < len(members):
                    waiting.add(pod[0])
        return tuple(sorted(waiting))

    def version(self, pod: PodKey) -> int:
        return self._versions.get(pod, 0)

    @property
    def trust_bundle(self) -> tuple[str, ...]:
        return self._trust_bundle

    def peer_map(self, pod: PodKey) -> PeerMap | None:
        """The pod's current peer map, or None if the pod is unknown or has no usable identity."""
        cached = self._maps.get(pod)
        if cached is not None:
            return cached
        earlier = self._rebundle.pop(pod, None)
        if earlier is not None:
            # Its policies, peers and their JSON (meshapi's cached fragments) carry over as they are.
            cached = self._maps[pod] = dataclasses.replace(
                earlier, version=self._versions[pod], trust_bundle=self._trust_bundle)
            return cached
        info = self._pods.get(pod)
        if info is None:
            return None
        entry = self._peer_entry(pod)
        identity = entry.identities[0] if entry is not None else info.identity(self.trust_domain)
        if identity is None:
            return None
        local = LocalIdentity(
            identity=identity,
            pod=info.name,
            namespace=info.namespace,
            service_account=info.service_account,
            addresses=info.addresses,
        )
        policies: list[PeeringPolicy] = []
        claimed: list[set[PodKey]] = []  # counterparts already listed by a peering of higher precedence
        views: list[ViewKey | None] = []
        for peering_key in sorted(self.peerings_of(pod), key=lambda k: precedence(self._peerings[k])):
            built_policies, view = self._policies_for(pod, peering_key, claimed)
            policies.extend(built_policies)
            views.append(view)
        services: tuple[ServiceEntry, ...] = ()
        if len(self.services):
            # Pods that see the same peering views list the same peers, so the same Services.
            shared = tuple(views) if None not in views else None
            services = self._services_by_views.get(shared) if shared is not None else None
            if services is None:
                services = self._services_for(policies)
                if shared is not None:
                    self._services_by_views[shared] = services
        built = PeerMap(self._versions.setdefault(pod, self._generation), local, tuple(policies), self._trust_bundle,
                        services=services)
        self._maps[pod] = built
        return built

    # ---- pods --------------------------------------------------------------

    def upsert_pod(self, info: PodInfo) -> set[PodKey]:
        key = info.key
        old = self._pods.get(key)
        if old == info:
            return set()
        old_member, old_peer = set(self._member_of.get(key, ())), set(self._peer_of.get(key, ()))
        if old is not None:
            self._unindex_pod(old)
        self._pods[key] = info
        self._pods_by_namespace[info.namespace].add(key)
        for label in info.labels.items():
            self._pods_by_label[label].add(key)
        for address in info.ips:
            self._pods_by_address[address].add(key)
        self._peer_entries.pop(key, None)
        new_member, new_peer = self._memberships(info)
        self._set_memberships(key, new_member, new_peer)
        # How the others see it: its addresses, and its identity (the uid stands in for a long name).
        seen_changed = old is None or old.ips != info.ips or (
            old.uid != info.uid and old.identity(self.trust_domain) != info.identity(self.trust_domain))
        if seen_changed:
            touched_peerings = (old_member | new_member, old_peer | new_peer)
        else:
            touched_peerings = (old_member ^ new_member, old_peer ^ new_peer)
        changed = self._counterparts(key, *touched_peerings)
        self_changed = (
            seen_changed or old.service_account != info.service_account
            or old_member != new_member or old_peer != new_peer
        )
        if self_changed:
            changed.add(key)
        return self._mark(changed)

    def remove_pod(self, key: PodKey) -> set[PodKey]:
        info = self._pods.pop(key, None)
        if info is None:
            return set()
        self._unindex_pod(info)
        member_of, peer_of = self._member_of.pop(key, set()), self._peer_of.pop(key, set())
        changed = self._counterparts(key, member_of, peer_of)
        for peering_key in member_of:
            self._members[peering_key].discard(key)
        for peering_key in peer_of:
            self._peer_pods[peering_key].discard(key)
        self._versions.pop(key, None)
        self._maps.pop(key, None)
        self._rebundle.pop(key, None)
        self._peer_entries.pop(key, None)
        return self._mark(changed)

    def _unindex_pod(self, info: PodInfo) -> None:
        self._pods_by_namespace[info.namespace].discard(info.key)
        for label in info.labels.items():
            bucket = self._pods_by_label.get(label)
            if bucket is not None:
                bucket.discard(info.key)
                if not bucket:
                    del self._pods_by_label[label]
        for address in info.ips:
            owners = self._pods_by_address.get(address)
            if owners is not None:
                owners.discard(info.key)
                if not owners:
                    del self._pods_by_address[address]

    def _memberships(self, info: PodInfo) -> tuple[set[PeeringKey], set[PeeringKey]]:
        member: set[PeeringKey] = set()
        peer: set[PeeringKey] = set()
        for peering_key in self._peerings_by_namespace.get(info.namespace, ()):
            if rules.is_member(self._peerings[peering_key], info.namespace, info.labels):
                member.add(peering_key)
        # Only the peerings that could pick it: its namespace's, and those keyed by one of its labels.
        candidates = self._peerings_by_namespace.get(info.namespace, set()) | self._cross_unkeyed
        for label in info.labels.items():
            candidates |= self._cross_by_label.get(label, set())
        for peering_key in candidates:
            if rules.is_peer(self._peerings[peering_key], info.namespace, info.labels, self._labels_of_namespace):
                peer.add(peering_key)
        return member, peer

    def _set_memberships(self, key: PodKey, member: set[PeeringKey], peer: set[PeeringKey]) -> None:
        for peering_key in self._member_of.get(key, set()) - member:
            self._members[peering_key].discard(key)
        for peering_key in self._peer_of.get(key, set()) - peer:
            self._peer_pods[peering_key].discard(key)
        for peering_key in member:
            self._members[peering_key].add(key)
        for peering_key in peer:
            self._peer_pods[peering_key].add(key)
        self._member_of[key] = member
        self._peer_of[key] = peer

    def _counterparts(self, key: PodKey, member_of: Iterable[PeeringKey], peer_of: Iterable[PeeringKey]) -> set[PodKey]:
        """Pods whose peer maps list `key` through the given peerings."""
        out: set[PodKey] = set()
        for peering_key in member_of:
            out |= self._peer_pods.get(peering_key, set())
        for peering_key in peer_of:
            out |= self._members.get(peering_key, set())
        out.discard(key)
        return out

    # ---- Services ----------------------------------------------------------
    # The ServiceTable raises PeerMapError past its bounds; the caller logs and skips the object.

    def upsert_service(self, info: ServiceEntry) -> set[PodKey]:
        return self._mark(self._listing(self.services.upsert_service(info)))

    def remove_service(self, key: ServiceKey) -> set[PodKey]:
        return self._mark(self._listing(self.services.remove_service(key)))

    def upsert_endpoint_slice(self, info: SliceInfo) -> set[PodKey]:
        return self._mark(self._listing(self.services.upsert_slice(info)))

    def remove_endpoint_slice(self, key: SliceKey) -> set[PodKey]:
        return self._mark(self._listing(self.services.remove_slice(key)))

    def _listing(self, addresses: set[str]) -> set[PodKey]:
        """Pods whose maps may list a pod at one of `addresses` (a superset: before consent and precedence)."""
        out: set[PodKey] = set()
        for address in addresses:
            for pod in self._pods_by_address.get(address, ()):
                out |= self._counterparts(pod, self._member_of.get(pod, ()), self._peer_of.get(pod, ()))
        return out

    def _services_for(self, policies: list[PeeringPolicy]) -> tuple:
        """The Services with an endpoint at one of the pod peers' addresses (remote networks do not count)."""
        addresses = []
        for policy in policies:
            for peer in policy.peers:
                namespace, _, name = peer.name.partition("/")
                info = self._pods.get((namespace, name))
                # A remote cluster's peer is named remote/<name>: it counts only if it is exactly that pod
                # (usually the very tuple its Peer entry was built from).
                if info is not None and (peer.addresses is info.host_networks or peer.addresses == info.host_networks):
                    addresses.extend(info.ips)
        found = self.services.services_at(addresses)
        return tuple(self.services.entry(key, frozenset(found[key])) for key in sorted(found))

    # ---- namespaces --------------------------------------------------------

    def set_namespace_labels(self, namespace: str, labels: Mapping[str, str]) -> set[PodKey]:
        labels = rules.namespace_labels(namespace, labels)
        if self._namespace_labels.get(namespace) == labels:
            return set()
        self._namespace_labels[namespace] = labels
        return self._reselect(self._cross_namespace)

    def remove_namespace(self, namespace: str) -> set[PodKey]:
        if self._namespace_labels.pop(namespace, None) is None:
            return set()
        return self._reselect(self._cross_namespace)

    def _labels_of_namespace(self, namespace: str) -> Mapping[str, str]:
        labels = self._namespace_labels.get(namespace)
        return labels if labels is not None else rules.namespace_labels(namespace, None)

    # ---- peerings ----------------------------------------------------------

    def upsert_peering(self, spec: PeeringSpec) -> set[PodKey]:
        key = spec.key
        if self._peerings.get(key) == spec:
            return set()
        self._drop_peering_from_indexes(key)
        self._drop_views(key)
        self._peerings[key] = spec
        self._peerings_by_namespace[spec.namespace].add(key)
        for peers in spec.pod_peers:
            if peers.namespaces is not None:
                self._cross_namespace.add(key)
                labels = peers.pods.match_labels
                (self._cross_by_label[labels[0]] if labels else self._cross_unkeyed).add(key)
        self._members.setdefault(key, set())
        self._peer_pods.setdefault(key, set())
        return self._reselect({key}, settings_changed=True)

    def remove_peering(self, key: PeeringKey) -> set[PodKey]:
        if key not in self._peerings:
            return set()
        affected = self._members.get(key, set()) | self._peer_pods.get(key, set())
        for pod in self._members.pop(key, set()):
            self._member_of[pod].discard(key)
        for pod in self._peer_pods.pop(key, set()):
            self._peer_of[pod].discard(key)
        self._drop_peering_from_indexes(key)
        self._drop_views(key)
        del self._peerings[key]
        self._psk_keys.pop(key, None)
        for store in (self._remote_psk_keys, self._remote_bundles):
            for remote_key in [k for k in store if k[0] == key]:
                del store[remote_key]
        return self._mark(set(affected))

    def _drop_peering_from_indexes(self, key: PeeringKey) -> None:
        self._peerings_by_namespace[key[0]].discard(key)
        self._cross_namespace.discard(key)
        self._cross_unkeyed.discard(key)
        old = self._peerings.get(key)
        for peers in old.pod_peers if old is not None else ():
            if peers.namespaces is not None and peers.pods.match_labels:
                bucket = self._cross_by_label.get(peers.pods.match_labels[0])
                if bucket is not None:
                    bucket.discard(key)
                    if not bucket:
                        del self._cross_by_label[peers.pods.match_labels[0]]

    def _reselect(self, peering_keys: Iterable[PeeringKey], settings_changed: bool = False) -> set[PodKey]:
        """Recompute members and peer pods of the given peerings; mark the pods that changed."""
        changed: set[PodKey] = set()
        for key in list(peering_keys):
            old_members, old_peers = self._members[key], self._peer_pods[key]
            members, peers = self._selection(self._peerings[key])
            for pod in old_members - members:
                self._member_of[pod].discard(key)
            for pod in members - old_members:
                self._member_of[pod].add(key)
            for pod in old_peers - peers:
                self._peer_of[pod].discard(key)
            for pod in peers - old_peers:
                self._peer_of[pod].add(key)
            self._members[key], self._peer_pods[key] = members, peers
            if settings_changed or old_members != members or old_peers != peers:
                # New settings, or a different set of counterparts: every pod of the peering is touched.
                changed |= old_members | members | old_peers | peers
        return self._mark(changed)

    def _selection(self, spec: PeeringSpec) -> tuple[set[PodKey], set[PodKey]]:
        """The peering's members and peer pods (all selected, consented or not)."""
        peers: set[PodKey] = set()
        for pod_peers in spec.pod_peers:
            peers |= self._select(pod_peers.pods, self._namespaces_for(spec, pod_peers))
        return self._select(spec.selector, {spec.namespace}), peers

    def _namespaces_for(self, spec: PeeringSpec, peers: PodPeers) -> set[str] | None:
        if peers.namespaces is None:
            return {spec.namespace}
        named = dict(peers.namespaces.match_labels).get(NAMESPACE_NAME_LABEL)
        if named is not None:  # one namespace by name: no need to look at the others
            known = {named} if named in self._namespace_labels or self._pods_by_namespace.get(named) else set()
        else:
            known = set(self._namespace_labels) | {ns for ns, pods in self._pods_by_namespace.items() if pods}
        return {ns for ns in known if rules.namespace_picked(spec, peers, ns, self._labels_of_namespace)}

    def _select(self, selector: LabelSelector, namespaces: set[str] | None) -> set[PodKey]:
        if selector.match_labels:
            buckets = sorted((self._pods_by_label.get(label, set()) for label in selector.match_labels), key=len)
            candidates = set(buckets[0]).intersection(*buckets[1:])
            if namespaces is not None:
                candidates = {pod for pod in candidates if pod[0] in namespaces}
        else:
            candidates = set()
            for namespace in namespaces if namespaces is not None else list(self._pods_by_namespace):
                candidates |= self._pods_by_namespace.get(namespace, set())
        if not selector.expressions:
            return candidates
        return {pod for pod in candidates if selector.matches(self._pods[pod].labels)}

    # ---- keys and trust ----------------------------------------------------

    def set_psk_keys(self, peering: PeeringKey, keys: tuple[PskKey, ...]) -> set[PodKey]:
        return self._set_keyed(self._psk_keys, peering, peering, keys)

    def set_remote_psk_keys(self, peering: PeeringKey, remote: str, keys: tuple[PskKey, ...]) -> set[PodKey]:
        return self._set_keyed(self._remote_psk_keys, (peering, remote), peering, keys)

    def set_remote_trust_bundle(self, peering: PeeringKey, remote: str, pems: tuple[str, ...]) -> set[PodKey]:
        return self._set_keyed(self._remote_bundles, (peering, remote), peering, pems)

    def _set_keyed(self, store: dict, store_key: Any, peering: PeeringKey, value: tuple) -> set[PodKey]:
        if store.get(store_key) == value:
            return set()
        store[store_key] = value
        self._drop_views(peering)
        return self._mark(set(self._members.get(peering, ())) | self._peer_pods.get(peering, set()))

    def set_trust_bundle(self, pems: tuple[str, ...]) -> set[PodKey]:
        if pems == self._trust_bundle:
            return set()
        self._trust_bundle = pems
        return self._mark(set(self._pods), bundle_only=True)

    # ---- building ----------------------------------------------------------

    def _drop_views(self, peering_key: PeeringKey) -> None:
        for is_member in (True, False):
            for whole in (True, False):
                self._views.pop((peering_key, is_member, whole), None)
        self._services_by_views.clear()

    def _mark(self, pods: set[PodKey], bundle_only: bool = False) -> set[PodKey]:
        """New versions for `pods`; `bundle_only`: all that changed in their maps is the trust bundle."""
        self._services_by_views.clear()  # every change may move a Service or a peer
        if not pods:
            return pods
        self._generation = max(self._generation + 1, time.time_ns() // 1000)
        stale: set[PeeringKey] = set()  # pods of one side share their peerings: drop each view once
        for pod in pods:
            self._versions[pod] = self._generation
            built = self._maps.pop(pod, None)
            if bundle_only:
                if built is not None:
                    self._rebundle[pod] = built
                continue
            self._rebundle.pop(pod, None)
            # A pod's map changed: whatever peering views it sees may be stale too.
            stale.update(self._member_of.get(pod, ()))
            stale.update(self._peer_of.get(pod, ()))
        for peering_key in stale:
            self._drop_views(peering_key)
        for listener in list(self.listeners):
            listener(pods)
        return pods

    def _peer_entry(self, pod: PodKey) -> Peer | None:
        """How other pods see `pod`: its addresses and identity; None if it has none yet."""
        if pod in self._peer_entries:
            return self._peer_entries[pod]
        info = self._pods[pod]
        identity = info.identity(self.trust_domain)
        entry = None
        if info.ips and identity is not None:
            entry = Peer(name=f"{info.namespace}/{info.name}", addresses=info.host_networks, identities=(identity,))
        self._peer_entries[pod] = entry
        return entry

    def _counterparts_via(self, pod: PodKey, peering_key: PeeringKey) -> set[PodKey]:
        """The pods `pod` lists through the peering (before precedence among peerings)."""
        return rules.counterparts(pod, pod[0] == peering_key[0], self._members[peering_key],
                                  self._peer_pods[peering_key], lambda: self._accepted(pod))

    def _accepted(self, pod: PodKey) -> set[PodKey]:
        """The pods `pod`'s namespace consents to for it: the peers of the peerings it is a member of."""
        accepted = [self._peer_pods[key] for key in self._member_of.get(pod, ())]
        return accepted[0] if len(accepted) == 1 else set().union(*accepted)

    def _policies_for(self, pod: PodKey, peering_key: PeeringKey,
                      claimed: list[set[PodKey]]) -> tuple[list[PeeringPolicy], ViewKey | None]:
        """The peering's policies for `pod`, listing the counterparts no earlier peering claimed; and the
        key of the view they are, if they are the one all pods on its side share."""
        spec = self._peerings[peering_key]
        is_member = pod in self._members[peering_key]
        if not rules.serves(spec, bool(self._psk_keys.get(peering_key))):
            counterparts: set[PodKey] = set()  # it cannot serve them, so it claims none
        else:
            counterparts = self._counterparts_via(pod, peering_key)
        if not all(earlier.isdisjoint(counterparts) for earlier in claimed):
            counterparts = counterparts.difference(*claimed)
        claimed.append(counterparts)
        side = self._peer_pods[peering_key] if is_member else self._members[peering_key]
        # Counterparts are a subset of the other side. All of it or none of it, as for most pods on
        # this side: build it once per peering side.
        whole = pod not in side and len(counterparts) == len(side)
        if counterparts and not whole:
            return self._build_policies(peering_key, counterparts, is_member), None
        view_key = (peering_key, is_member, whole)
        view = self._views.get(view_key)
        if view is None:
            view = self._views[view_key] = self._build_policies(peering_key, counterparts, is_member)
        return view, view_key

    def _build_policies(self, peering_key: PeeringKey, counterparts: set[PodKey],
                        is_member: bool) -> list[PeeringPolicy]:
        spec = self._peerings[peering_key]
        peers = tuple(entry for other in sorted(counterparts) if (entry := self._peer_entry(other)) is not None)
        name = f"{spec.namespace}/{spec.name}"
        policies = []
        own_keys = self._psk_keys.get(peering_key, ())
        if peers and rules.serves(spec, bool(own_keys)):
            policies.append(_policy(spec, name, peers, own_keys if spec.auth is AuthKind.PSK else ()))
        if is_member:
            for remote in spec.remotes:
                policy = self._remote_policy(spec, name, remote)
                if policy is not None:
                    policies.append(policy)
        return policies

    def _remote_policy(self, spec: PeeringSpec, name: str, remote: Any) -> PeeringPolicy | None:
        store_key = (spec.key, remote.name)
        keys: tuple[PskKey, ...] = ()
        bundle: tuple[str, ...] = ()
        if spec.auth is AuthKind.PSK:
            keys = self._remote_psk_keys.get(store_key, ())
            if not keys:
                return None
        else:
            bundle = self._remote_bundles.get(store_key, ())
            if not bundle:
                return None
        peer = Peer(name=f"remote/{remote.name}", addresses=remote.cidrs, identities=remote.identities,
                    trust_bundle=bundle)
        return _policy(spec, f"{name}/{remote.name}", (peer,), keys)


def _policy(spec: PeeringSpec, name: str, peers: tuple[Peer, ...], keys: tuple[PskKey, ...]) -> PeeringPolicy:
    return PeeringPolicy(
        name=name, peers=peers, auth=spec.auth, psk_keys=keys,
        ike_proposals=spec.ike_proposals, esp_proposals=spec.esp_proposals, lifetimes=spec.lifetimes,
        enforcement=spec.enforcement, tfc_padding=spec.tfc_padding,
    )

