"""The IPsecPeering status: counts, conditions (Ready, KeysIssued, Degraded) with reasons."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PeeringHealth:
    """What the kernel and the sidecars report for one peering, as counted by the runtime."""

    members: int
    peers: int
    established_sas: int
    reporting: int
    errors: tuple[str, ...]
    #: Other namespaces whose selected peer pods do not accept all members (no peering of theirs consents).
    awaiting_consent: tuple[str, ...] = ()


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(old: Mapping[str, Any] | None, type_: str, ok: bool, reason: str, message: str,
               generation: int) -> dict[str, Any]:
    status = "True" if ok else "False"
    since = old.get("lastTransitionTime") if old is not None and old.get("status") == status else None
    return {
        "type": type_, "status": status, "reason": reason, "message": message, "observedGeneration": generation,
        "lastTransitionTime": _now_iso() if since is None else since,
    }


def awaiting_consent_message(namespaces: tuple[str, ...]) -> str:
    return (f"one-sided in namespace(s) {', '.join(namespaces)}: their peer pods accept these members only "
            "once a peering there selects them and lists this namespace's members as peers")


def desired_status(
    current: Mapping[str, Any] | None,
    generation: int,
    health: PeeringHealth | None,
    spec_errors: list[str],
    keys: tuple[bool, str, str],
    problems: list[str],
    extra: Mapping[str, Any] | None = None,
    bundles_fresh: tuple[bool, str, str] | None = None,
) -> dict[str, Any]:
    """The full status to have; `keys` is (issued, reason, message); `bundles_fresh` the
    TrustBundlesFresh condition (peerings with federated remotes only).

    A stale federated bundle does not make the peering Degraded: the last good bundle is
    still what the remote's pods prove, until the remote rotates its CA past it.
    """
    current = current or {}
    old = {c.get("type"): c for c in current.get("conditions") or [] if isinstance(c, Mapping)}
    issued, key_reason, key_message = keys
    waiting = health.awaiting_consent if health else ()
    degraded_reasons = list(spec_errors) + list(problems) + list(waiting) + list(health.errors if health else ())
    if spec_errors:
        degraded = ("InvalidSpec", "; ".join(spec_errors))
    elif problems:
        degraded = ("ReferenceProblem", "; ".join(problems))
    elif waiting:
        degraded = ("AwaitingConsent", awaiting_consent_message(waiting))
    elif health and health.errors:
        degraded = ("SidecarErrors", "; ".join(health.errors))
    else:
        degraded = ("AsExpected", "no problems reported")
    members = health.members if health else 0
    if spec_errors:
        ready = (False, "InvalidSpec", "fix the spec; see the Degraded condition")
    elif not issued:
        ready = (False, "KeysPending", key_message)
    elif degraded_reasons:
        ready = (False, degraded[0], degraded[1])
    elif members == 0:
        ready = (False, "NoMembers", "no injected pod matches spec.selector")
    else:
        ready = (True, "Ready", f"{members} member pod(s), {health.peers if health else 0} peer pod(s)")
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "members": members,
        "peers": health.peers if health else 0,
        "establishedSAs": health.established_sas if health else 0,
        "conditions": [
            _condition(old.get("Ready"), "Ready", ready[0], ready[1], ready[2], generation),
            _condition(old.get("KeysIssued"), "KeysIssued", issued, key_reason, key_message, generation),
            _condition(old.get("Degraded"), "Degraded", bool(degraded_reasons), degraded[0], degraded[1][:1000],
                       generation),
        ],
    }
    if bundles_fresh is not None:
        ok, reason, message = bundles_fresh
        status["conditions"].append(_condition(old.get("TrustBundlesFresh"), "TrustBundlesFresh", ok, reason,
                                               message[:1000], generation))
    status.update(extra or {})
    return status


def status_patch(current: Mapping[str, Any] | None, desired: dict[str, Any]) -> dict[str, Any]:
    """Only the keys that differ (so periodic checks do not rewrite an unchanged status)."""
    current = current or {}
    return {key: value for key, value in desired.items() if current.get(key) != value}
