"""Which peerings give which pods a policy for each other: the operator's rules, over `Facts`.

Mirrors MeshIndex (members by `selector` in the peering's namespace, peer pods by
`podSelector`/`namespaceSelector`), the consent rule for other namespaces, and the
precedence among several peerings covering one pair, so that `explain` and `peerings`
can tell from the specs alone what the operator does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..model.peering import InvalidPeering, PeeringSpec, parse_peering
from ..model.rules import precedence
from .facts import Facts, PeeringFacts, PodFacts


@dataclass(frozen=True)
class Roles:
    """How the peerings see one pod: as a member (selector) and/or as a peer (podSelector)."""

    member_of: frozenset[str]
    peer_of: frozenset[str]

    @property
    def all(self) -> frozenset[str]:
        return self.member_of | self.peer_of


def parsed_peerings(facts: Facts) -> tuple[dict[str, PeeringSpec], dict[str, str]]:
    """Every peering's parsed spec by `ns/name`, and the problems of those that do not parse."""
    specs: dict[str, PeeringSpec] = {}
    invalid: dict[str, str] = {}
    for peering in facts.peerings:
        if not peering.spec:
            continue  # known from the operator's lists only
        try:
            specs[peering.ref] = parse_peering(peering.namespace, peering.name, peering.spec)
        except InvalidPeering as exc:
            invalid[peering.ref] = str(exc)
    return specs, invalid


def roles_of(pod: PodFacts, specs: Mapping[str, PeeringSpec], facts: Facts) -> Roles:
    """The operator's lists where the facts have them, else the MeshIndex's rules over the specs
    (selector in the own namespace; peers in the own namespace or those namespaceSelector picks)."""
    member, peer = set(), set()
    namespace_labels = facts.namespace_labels(pod.namespace)
    for peering in facts.peerings:
        ref, spec = peering.ref, specs.get(peering.ref)
        if peering.members is not None:
            member.update([ref] if pod.ref in peering.members else [])
            peer.update([ref] if pod.ref in (peering.peers or ()) else [])
            continue
        if spec is None:
            continue
        if spec.namespace == pod.namespace and spec.selector.matches(pod.labels):
            member.add(ref)
        for peers in spec.pod_peers:
            in_namespace = (pod.namespace == spec.namespace if peers.namespaces is None
                            else peers.namespaces.matches(namespace_labels))
            if in_namespace and peers.pods.matches(pod.labels):
                peer.add(ref)
    return Roles(frozenset(member), frozenset(peer))


def listing_peerings(x: PodFacts, x_roles: Roles, y_roles: Roles) -> frozenset[str]:
    """Peerings through which x's peer map lists y, under the consent rule: a peering gives
    its members a policy for its peer pods anywhere, but gives a peer pod a policy for the
    members only in the peering's own namespace (other namespaces consent with a peering of
    their own that selects their pod and lists the member)."""
    as_member = x_roles.member_of & y_roles.peer_of
    as_peer = {ref for ref in x_roles.peer_of & y_roles.member_of if ref.split("/", 1)[0] == x.namespace}
    return frozenset(as_member | as_peer)


def strictness(peering: PeeringFacts, spec: PeeringSpec | None) -> tuple:
    """The operator's precedence when several peerings cover a pair (model/rules.py)."""
    if spec is None:  # as the standalone operator reports it (no TFC setting there)
        return (peering.enforcement == "prefer", peering.auth == "psk", True, peering.namespace, peering.name)
    return precedence(spec)


def describe_roles(roles: Roles) -> str:
    if not roles.all:
        return "selected by no peering"
    parts = []
    if roles.member_of:
        parts.append("member of " + ", ".join(sorted(roles.member_of)))
    if roles.peer_of:
        parts.append("peer in " + ", ".join(sorted(roles.peer_of)))
    return "; ".join(parts)
