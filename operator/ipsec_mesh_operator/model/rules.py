"""The operator's peering rules that both the index (what the sidecars get) and `explain`/`peerings`
apply: one definition, so the two cannot disagree (tests/operator/test_rules_agree.py)."""

from __future__ import annotations

from ipsec_mesh.meshapi import AuthKind, Enforcement

from .peering import PeeringSpec


def precedence(spec: PeeringSpec) -> tuple:
    """Sort key of the peering whose settings govern a pair of pods covered by several.

    The strictest first (require, certificates, TFC padding), so that no peering can
    weaken another's protection by its name; then namespace and name, for a total order.
    """
    return (spec.enforcement is not Enforcement.REQUIRE, spec.auth is not AuthKind.CERTIFICATE,
            not spec.tfc_padding, spec.namespace, spec.name)
