"""Which peerings give which pods a policy for each other: the operator's rules, over `Facts`.

The rules are model/rules.py's, the ones MeshIndex applies (members, peer pods, the consent
rule for other namespaces, the precedence among several peerings covering one pair): here
asked about one pod or one pair, so that `explain` and `peerings` can tell from the specs
alone what the operator does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ipsec_mesh.meshapi import AuthKind, Enforcement

from ..model import rules
from ..model.peering import InvalidPeering, PeeringSpec, parse_peering
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
    """The operator's lists where the facts have them, else the rules over the specs."""
    member, peer = set(), set()
    for peering in facts.peerings:
        ref, spec = peering.ref, specs.get(peering.ref)
        if peering.members is not None:
            member.update([ref] if pod.ref in peering.members else [])
            peer.update([ref] if pod.ref in (peering.peers or ()) else [])
            continue
        if spec is None:
            continue
        if rules.is_member(spec, pod.namespace, pod.labels):
            member.add(ref)
        if rules.is_peer(spec, pod.namespace, pod.labels, facts.namespace_labels):
            peer.add(ref)
    return Roles(frozenset(member), frozenset(peer))


def listing_peerings(x: PodFacts, x_roles: Roles, y: PodFacts, y_roles: Roles) -> frozenset[str]:
    """Peerings through which x's peer map lists y, under the consent rule (rules.counterparts)."""
    pair = ((x.key, x_roles), (y.key, y_roles))
    # x's namespace consents to y for it when a peering x is a member of lists y as a peer.
    accepted = {y.key} if x_roles.member_of & y_roles.peer_of else set()
    out = set()
    for ref in x_roles.all & y_roles.all:
        members = {key for key, roles in pair if ref in roles.member_of}
        peers = {key for key, roles in pair if ref in roles.peer_of}
        if y.key in rules.counterparts(x.key, ref.split("/", 1)[0] == x.namespace, members, peers,
                                       lambda: accepted):
            out.add(ref)
    return frozenset(out)


def strictness(peering: PeeringFacts, spec: PeeringSpec | None) -> tuple:
    """The operator's precedence when several peerings cover a pair (model/rules.py)."""
    if spec is None:  # as the standalone operator reports it (no TFC setting there)
        return rules.precedence_of(
            Enforcement.PREFER if peering.enforcement == "prefer" else Enforcement.REQUIRE,
            AuthKind.PSK if peering.auth == "psk" else AuthKind.CERTIFICATE, False, peering.namespace, peering.name)
    return rules.precedence(spec)


def describe_roles(roles: Roles) -> str:
    if not roles.all:
        return "selected by no peering"
    parts = []
    if roles.member_of:
        parts.append("member of " + ", ".join(sorted(roles.member_of)))
    if roles.peer_of:
        parts.append("peer in " + ", ".join(sorted(roles.peer_of)))
    return "; ".join(parts)
