"""What the sidecar tells the operator: per peering policy, established CHILD SAs and failures.

The failures are the agent's `last_failures` (per remote address, the last failed
negotiation since the last success), attributed to the policy that covers the address.
"""

from __future__ import annotations

from collections import Counter

from ..meshapi.model import PeerMap
from ..meshapi.status import PeeringStatus, StatusReport

# CHILD_SA states in which traffic flows on the SA (a rekey under way keeps it in use).
IN_USE = frozenset({"installed", "rekeying"})
MAX_ERROR = 1024


def failures_by_policy(agent) -> dict[str, tuple[int, str]]:
    """Per policy: how many of its peers failed last time, and the most recent error."""
    failed: Counter = Counter()
    latest: dict[str, tuple[float, str]] = {}
    for remote, record in agent.last_failures.items():
        entry = agent.peers.entry_for(remote)
        if entry is None:
            continue
        name = entry.policy.name
        failed[name] += 1
        if record["at"] >= latest.get(name, (-1.0, ""))[0]:
            latest[name] = (record["at"], record["message"])
    return {name: (count, latest[name][1]) for name, count in failed.items()}


def refusal_error(peer_map: PeerMap, error: str) -> str:
    return f"peer map version {peer_map.version} not applied: {error}"[:MAX_ERROR]


def status_report(agent, refused: tuple[PeerMap, str] | None = None) -> StatusReport:
    """The report for the applied peer map; a `refused` newer map (and why) is reported on its peerings."""
    established: Counter = Counter()
    for ike_sa in agent.ike_status():  # corrected by the kernel: a refused CHILD_SA is not in use
        for child in ike_sa["children"]:
            if child["state"] in IN_USE:
                established[child["name"]] += 1
    failures = failures_by_policy(agent)
    names = [policy.name for policy in agent.peers.peer_map.policies]
    refused_names: set[str] = set()
    if refused is not None:
        refused_names = {policy.name for policy in refused[0].policies}
        names += [name for name in sorted(refused_names) if name not in names]
    peerings = []
    for name in names:
        failed, error = failures.get(name, (0, ""))
        if name in refused_names:
            error = refusal_error(*refused)
        peerings.append(PeeringStatus(name, established[name], failed, error[:MAX_ERROR]))
    return StatusReport(agent.peers.peer_map.version, tuple(peerings))
