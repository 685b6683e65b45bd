"""Human and JSON output of `ipsec-mesh explain` and `ipsec-mesh peerings`."""

from __future__ import annotations

import datetime
import json

from ipsec_mesh.meshapi import fields

from .diagnose import ServiceVerdict, Verdict
from .overview import PeeringOverview


def _time(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def verdict_text(verdict: Verdict) -> str:
    head = "ENCRYPTED" if verdict.encrypted else f"NOT ENCRYPTED ({verdict.reason.value})"
    lines = [f"{verdict.a} <-> {verdict.b}: {head}", f"  {verdict.summary}"]
    if verdict.sas:
        sa = verdict.sas[0]
        if sa.since is not None:
            lines.append(f"  since {_time(sa.since)} (up {sa.age:.0f}s)")
    enforcement = f" (enforcement {verdict.enforcement})" if verdict.enforcement else ""
    lines.append(f"  traffic now: {verdict.traffic.value}{enforcement}")
    if verdict.peerings:
        lines.append(f"  peerings: {', '.join(verdict.peerings)}")
    lines += [f"  - {detail}" for detail in verdict.details]
    if not verdict.encrypted:
        lines.append(f"  what to do: {verdict.action}")
    return _text(lines)


def _text(lines: list[str]) -> str:
    # Statuses, conditions and names come from the cluster and its sidecars: no control characters.
    return "\n".join(fields.printable(line) for line in lines)


def verdict_json(verdict: Verdict) -> str:
    return json.dumps(verdict.to_dict(), indent=2)


def service_verdict_text(verdict: ServiceVerdict) -> str:
    head = "ENCRYPTED" if verdict.encrypted else f"NOT ENCRYPTED ({verdict.reason.value})"
    lines = [f"{verdict.pod} -> svc/{verdict.service}: {head}", f"  {verdict.summary}",
             f"  traffic now: {verdict.traffic.value}"]
    if verdict.cluster_ips:
        lines.append(f"  cluster IPs: {', '.join(verdict.cluster_ips)}")
    for e in verdict.endpoints:
        ports = ", ".join(f"{p}->{t}" for p, t in e.ports)
        state = "ready" if e.ready else ("serving" if e.serving else "not ready")
        state += ", terminating" if e.terminating else ""
        pair = e.verdict.reason.value if e.verdict is not None else "not a known pod"
        lines.append(f"  - {e.address} ({e.pod or '?'}) ports {ports}: {state}; "
                     f"{'peer' if e.peer else 'not a peer'}; {pair}")
    if not verdict.encrypted:
        lines.append(f"  what to do: {verdict.action}")
    return "\n".join(lines)


def service_verdict_json(verdict: ServiceVerdict) -> str:
    return json.dumps(verdict.to_dict(), indent=2)


def overview_text(entries: list[PeeringOverview]) -> str:
    if not entries:
        return "no IPsecPeerings found"
    lines = [f"{'PEERING':40} {'READY':7} {'MEMBERS':>7} {'PEERS':>5} {'SAS':>4}"]
    for entry in entries:
        lines.append(f"{entry.ref:40} {entry.ready:7} {len(entry.members):>7} {len(entry.peers):>5} "
                     f"{entry.established_sas:>4}")
        lines.append(f"  members: {', '.join(entry.members) or '-'}")
        lines.append(f"  peers:   {', '.join(entry.peers) or '-'}")
        if entry.remotes:
            lines.append(f"  remotes: {', '.join(entry.remotes)}")
        if entry.not_injected:
            lines.append(f"  selected but without sidecar (not in the mesh): {', '.join(entry.not_injected)}")
        if entry.invalid:
            lines.append(f"  invalid spec: {entry.invalid}")
        for kind, status, reason, message in entry.conditions:
            lines.append(f"  {kind}={status} {reason}: {message}")
        lines += [f"  sidecar error: {error}" for error in entry.errors]
        lines += [f"  SA {sa}" for sa in entry.sas]
    return _text(lines)


def overview_json(entries: list[PeeringOverview]) -> str:
    return json.dumps([entry.to_dict() for entry in entries], indent=2)
