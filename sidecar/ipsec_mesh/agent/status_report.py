"""What the sidecar tells the operator: per peering policy, established CHILD SAs and failures.

`PeerFailures` keeps the last failure per remote address until an IKE SA with it comes
up (and per policy, the last CHILD_SA failure until one installs); `status_report`
turns that and the endpoint's SAs into the mesh API's `StatusReport`.
"""

from __future__ import annotations

from collections import Counter
from itertools import count

from ..meshapi.model import PeerMap
from ..meshapi.status import PeeringStatus, StatusReport

# CHILD_SA states in which traffic flows on the SA (a rekey under way keeps it in use).
IN_USE = frozenset({"installed", "rekeying"})
MAX_ERROR = 1024


class PeerFailures:
    def __init__(self) -> None:
        self._order = count()
        self.by_remote: dict[str, tuple[int, str, str]] = {}  # remote -> (order, policy, reason)
        self.by_policy: dict[str, tuple[int, str]] = {}  # CHILD_SA failures: policy -> (order, reason)

    def peer_failed(self, remote: str, policy: str, reason: str) -> None:
        self.by_remote[remote] = (next(self._order), policy, reason)

    def peer_succeeded(self, remote: str) -> None:
        self.by_remote.pop(remote, None)

    def child_failed(self, policy: str, reason: str) -> None:
        self.by_policy[policy] = (next(self._order), reason)

    def child_succeeded(self, policy: str) -> None:
        self.by_policy.pop(policy, None)

    def forget_others(self, policies: set[str]) -> None:
        """Drop what belongs to policies no longer in the peer map."""
        self.by_remote = {r: f for r, f in self.by_remote.items() if f[1] in policies}
        self.by_policy = {p: f for p, f in self.by_policy.items() if p in policies}

    def summary(self) -> dict[str, tuple[int, str]]:
        """Per policy: failed peers and the most recent error."""
        failed: Counter = Counter()
        latest: dict[str, tuple[int, str]] = dict(self.by_policy)
        for order, policy, reason in self.by_remote.values():
            failed[policy] += 1
            if order > latest.get(policy, (-1, ""))[0]:
                latest[policy] = (order, reason)
        return {policy: (failed[policy], latest.get(policy, (0, ""))[1])
                for policy in set(failed) | set(latest)}


def refusal_error(peer_map: PeerMap, error: str) -> str:
    return f"peer map version {peer_map.version} not applied: {error}"[:MAX_ERROR]


def status_report(agent, refused: tuple[PeerMap, str] | None = None) -> StatusReport:
    """The report for the applied peer map; a `refused` newer map (and why) is reported on its peerings."""
    established: Counter = Counter()
    for ike_sa in agent.endpoint.status():
        for child in ike_sa["children"]:
            if child["state"] in IN_USE:
                established[child["name"]] += 1
    failures = agent.failures.summary()
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
