"""`ipsec-mesh peerings`: every peering with its pods on each side and its status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .diagnose import LIVE_CHILD_STATES
from .facts import Facts
from .pairing import parsed_peerings, roles_of


@dataclass(frozen=True)
class PeeringOverview:
    ref: str
    members: tuple[str, ...]
    peers: tuple[str, ...]
    #: Pods the selectors match that have no sidecar (the operator ignores them).
    not_injected: tuple[str, ...]
    remotes: tuple[str, ...]
    established_sas: int
    ready: str
    conditions: tuple[tuple[str, str, str, str], ...]
    invalid: str = ""
    #: Errors the members' sidecars reported (standalone operator's health).
    errors: tuple[str, ...] = ()
    #: The members' CHILD_SAs of this peering, one line each, where their sidecars' status was read.
    sas: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["conditions"] = [dict(zip(("type", "status", "reason", "message"), c, strict=True)) for c in self.conditions]
        return out


def overview(facts: Facts) -> list[PeeringOverview]:
    """Every peering with the pods on each side (as the operator's index would pick them) and its status."""
    specs, invalid = parsed_peerings(facts)
    roles = {pod.key: roles_of(pod, specs, facts) for pod in facts.pods.values()}
    injected = {key for key, pod in facts.pods.items() if pod.injected}
    out = []
    for peering in sorted(facts.peerings, key=lambda p: (p.namespace, p.name)):
        ref = peering.ref

        def picked(side: str, inject: bool, ref: str = ref) -> tuple[str, ...]:
            return tuple(sorted("/".join(key) for key, r in roles.items()
                                if ref in getattr(r, side) and (key in injected) == inject))

        spec = specs.get(ref)
        conditions = tuple(
            (str(c.get("type", "")), str(c.get("status", "")), str(c.get("reason", "")), str(c.get("message", "")))
            for c in peering.status.get("conditions") or [] if isinstance(c, Mapping))
        ready = peering.condition("Ready")
        out.append(PeeringOverview(
            ref=ref, members=picked("member_of", True), peers=picked("peer_of", True),
            not_injected=tuple(sorted(set(picked("member_of", False)) | set(picked("peer_of", False)))),
            remotes=tuple(f"{r.name} ({', '.join(str(c) for c in r.cidrs)})" for r in spec.remotes) if spec else (),
            established_sas=int(peering.status.get("establishedSAs") or 0),
            ready=str(ready.get("status")) if ready else "Unknown",
            conditions=conditions, invalid=invalid.get(ref, ""),
            errors=tuple(str(e) for e in peering.status.get("sidecarErrors") or ()),
            sas=tuple(line for member in picked("member_of", True) for line in _child_sas(facts, member, ref)),
        ))
    return out


def _child_sas(facts: Facts, member: str, ref: str) -> list[str]:
    """The member's live CHILD_SAs of peering `ref` (its policies are named `ref` or `ref/<remote>`)."""
    pod = facts.pods.get(tuple(member.split("/", 1)))
    lines = []
    for ike_sa in ((pod.status or {}).get("ike_sas") or []) if pod is not None else []:
        for child in ike_sa.get("children") or []:
            name = str(child.get("name", ""))
            if (name == ref or name.startswith(ref + "/")) and child.get("state") in LIVE_CHILD_STATES:
                lines.append(f"{member} <-> {', '.join(child.get('remote_ts') or [])}: ESP {child.get('algorithm')} "
                             f"in {child.get('inbound_spi')} out {child.get('outbound_spi')}, IKE "
                             f"{ike_sa.get('algorithm')}")
    return lines
