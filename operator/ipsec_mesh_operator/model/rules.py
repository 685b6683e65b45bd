"""The operator's peering rules that both the index (what the sidecars get) and `explain`/`peerings`
apply: one definition, so the two cannot disagree (tests/operator/test_rules_agree.py).

Pure decisions only. The index keeps its own bookkeeping (label buckets, incremental sets) and
asks these functions what to decide; `cli/pairing.py` asks them about one pair of pods.

- Members: the pods of the peering's namespace its `selector` picks.
- Peers: the pods its `podSelector`s pick, in its own namespace or in those a `namespaceSelector`
  picks (every namespace carries its name as a label).
- Consent: a member lists the peer pods anywhere; a peer pod lists the members only in the
  peering's own namespace, elsewhere only the members its namespace consented to (one of its own
  peerings selects it and lists them as peers).
- Precedence: when several peerings cover a pair, the first by `precedence` governs (its
  enforcement, auth and proposals), at both ends.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import TypeVar

from ipsec_mesh.meshapi import AuthKind, Enforcement

from .peering import PeeringSpec, PodPeers
from .settings import NAMESPACE_NAME_LABEL

Key = TypeVar("Key", bound=Hashable)


def namespace_labels(namespace: str, labels: Mapping[str, str] | None) -> Mapping[str, str]:
    """A namespace's labels as selectors see them: the API server labels every namespace with its name."""
    return {**(labels or {}), NAMESPACE_NAME_LABEL: namespace}


def is_member(spec: PeeringSpec, namespace: str, labels: Mapping[str, str]) -> bool:
    """The peering's `selector` picks the pod (members are of the peering's own namespace only)."""
    return namespace == spec.namespace and spec.selector.matches(labels)


def namespace_picked(spec: PeeringSpec, peers: PodPeers, namespace: str,
                     labels_of_namespace: Callable[[str], Mapping[str, str]]) -> bool:
    """`peers` looks for pods in `namespace`: the peering's own without a namespaceSelector."""
    if peers.namespaces is None:
        return namespace == spec.namespace
    return peers.namespaces.matches(labels_of_namespace(namespace))


def is_peer(spec: PeeringSpec, namespace: str, labels: Mapping[str, str],
            labels_of_namespace: Callable[[str], Mapping[str, str]]) -> bool:
    """One of the peering's `podSelector` peers picks the pod."""
    return any(namespace_picked(spec, peers, namespace, labels_of_namespace) and peers.pods.matches(labels)
               for peers in spec.pod_peers)


def counterparts(pod: Key, same_namespace: bool, members: set[Key], peers: set[Key],
                 accepted: Callable[[], set[Key]]) -> set[Key]:
    """The pods `pod` lists through one peering (before precedence among peerings), the consent rule.

    `members` and `peers` are the peering's (or the part of them the caller asks about);
    `same_namespace`: `pod` is in the peering's namespace; `accepted()`: the pods `pod`'s own
    peerings list as peers (its namespace's consent), asked only for a peer pod of another namespace.
    May return `members` or `peers` itself: the caller must not change it.
    """
    if pod in members:
        return (members | peers) - {pod} if pod in peers else peers
    if same_namespace:
        return members
    return members & accepted()


def precedence_of(enforcement: Enforcement, auth: AuthKind, tfc_padding: bool, namespace: str,
                  name: str) -> tuple[bool, bool, bool, str, str]:
    """Sort key of the peering whose settings govern a pair of pods covered by several.

    The strictest first (require, certificates, TFC padding), so that no peering can
    weaken another's protection by its name; then namespace and name, for a total order.
    """
    return (enforcement is not Enforcement.REQUIRE, auth is not AuthKind.CERTIFICATE, not tfc_padding,
            namespace, name)


def precedence(spec: PeeringSpec) -> tuple[bool, bool, bool, str, str]:
    """`precedence_of` a parsed peering."""
    return precedence_of(spec.enforcement, spec.auth, spec.tfc_padding, spec.namespace, spec.name)


def serves(spec: PeeringSpec, has_keys: bool) -> bool:
    """A PSK peering without its key yet cannot authenticate anyone: it lists (and claims) no pod."""
    return spec.auth is AuthKind.CERTIFICATE or has_keys
