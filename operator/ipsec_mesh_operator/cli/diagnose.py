"""Why is traffic between two pods encrypted, or why not: pure functions over `Facts`.

`explain(facts, a, b)` walks from the coarsest cause to the finest and stops at the
first that holds (pod missing, no sidecar, sidecar not ready, no peering, peering
not usable, one-sided peer maps, failed negotiation, nothing tried yet), so the
answer names the most specific reason and one thing a person can do about it.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..model.peering import PeeringSpec
from ..model.settings import INJECT_LABEL
from .facts import Facts, PeeringFacts, PodFacts, PodKey, RemoteFacts, ServiceFacts
from .pairing import describe_roles, listing_peerings, parsed_peerings, roles_of, strictness

INJECT_ENABLED = "enabled"
#: CHILD_SA states in which packets are protected both ways.
LIVE_CHILD_STATES = ("installed", "rekeying", "inbound-only")
MAX_ERROR_TEXT = 300  # a sidecar's error is its own text: bounded before it reaches a verdict


class Reason(str, enum.Enum):
    ENCRYPTED = "encrypted"
    POD_NOT_FOUND = "pod-not-found"
    POD_NOT_RUNNING = "pod-not-running"
    NO_SIDECAR = "no-sidecar"
    SIDECAR_NOT_READY = "sidecar-not-ready"
    NO_PEERING = "no-peering"
    PEERING_NOT_READY = "peering-not-ready"
    ONE_SIDED = "one-sided"
    AUTH_FAILED = "auth-failed"
    NO_PROPOSAL_CHOSEN = "no-proposal-chosen"
    TIMEOUT = "timeout"
    NEGOTIATION_FAILED = "negotiation-failed"
    NEGOTIATING = "negotiating"
    NO_SA_YET = "no-sa-yet"
    PLAINTEXT_FALLBACK = "plaintext-fallback"
    # A pod and a Service (explain_service).
    SERVICE_NOT_FOUND = "service-not-found"
    NOT_A_MESH_SERVICE = "not-a-mesh-service"
    NO_ENDPOINTS = "no-endpoints"
    NO_PEER_ENDPOINTS = "no-peer-endpoints"
    ENDPOINTS_NOT_PEERS = "endpoints-not-peers"
    ENDPOINT_NOT_ENCRYPTED = "endpoint-not-encrypted"
    SERVICE_NOT_TRANSLATED = "service-not-translated"
    # A pod and a remote cluster's peer (explain_remote).
    REMOTE_NOT_FOUND = "remote-not-found"


#: The sidecar's failure labels (agent.runtime._failure_reason) mapped to reasons.
FAILURE_REASONS = {
    "authentication_failed": Reason.AUTH_FAILED,
    "no_proposal_chosen": Reason.NO_PROPOSAL_CHOSEN,
    "timeout": Reason.TIMEOUT,
}


AUTH_ACTIONS = {
    "psk": ("both sides must hold the same key: in the cluster the operator hands it out with the peer map, so a "
            "sidecar still on an old map after a rotation fails (compare the sidecars' peer_map_version); with a "
            "remote cluster, the Secrets named by pskSecretRef on both sides must hold the same bytes"),
    "certificate": ("the peer's certificate must name an identity the other side expects and chain to a CA in its "
                    "trust bundle: after a CA rotation, check both sidecars have the new bundle (peer_map_version); "
                    "for a remote cluster, that its trust bundle copy and identities are current"),
}


class Traffic(str, enum.Enum):
    """What happens to a packet between the two pods right now."""

    ENCRYPTED = "encrypted"
    BLOCKED = "blocked"
    PLAINTEXT = "plaintext"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class SaInfo:
    reported_by: str
    ike_sa: str
    ike_algorithm: str | None
    esp_algorithm: str | None
    inbound_spi: str
    outbound_spi: str
    encap: bool
    #: Seconds since the IKE SA was established, when the sidecar's clock is known.
    age: float | None
    #: Unix time it was established (collection time minus age).
    since: float | None
    #: The identity the peer proved.
    remote_id: str | None = None


@dataclass(frozen=True)
class Verdict:
    a: str
    b: str
    reason: Reason
    summary: str
    action: str
    traffic: Traffic
    details: tuple[str, ...] = ()
    enforcement: str | None = None
    peerings: tuple[str, ...] = ()
    sas: tuple[SaInfo, ...] = ()

    @property
    def encrypted(self) -> bool:
        return self.reason is Reason.ENCRYPTED

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(reason=self.reason.value, traffic=self.traffic.value, encrypted=self.encrypted,
                   details=list(self.details), peerings=list(self.peerings))
        out["sas"] = [asdict(sa) for sa in self.sas]
        return out


# ---- what the sidecars report ------------------------------------------------------


AddressTest = Callable[[str], bool]


def _any_of(ips: tuple[str, ...]) -> AddressTest:
    return set(ips).__contains__


def _sas_with(pod: PodFacts, wanted: AddressTest, collected_at: float) -> list[SaInfo]:
    """Live SAs in `pod`'s sidecar whose remote traffic selector is an address `wanted` accepts."""
    status = pod.status or {}
    clock = status.get("clock")
    found = []
    for sa in status.get("ike_sas") or []:
        if sa.get("state") != "established":
            continue
        for child in sa.get("children") or []:
            if child.get("state") not in LIVE_CHILD_STATES:
                continue
            if not any(wanted(str(ts)) for ts in child.get("remote_ts") or ()):
                continue
            established = sa.get("established_at")
            age = round(clock - established, 1) if isinstance(clock, (int, float)) and isinstance(
                established, (int, float)) else None
            found.append(SaInfo(
                reported_by=pod.ref, ike_sa=str(sa.get("ike_sa", "")), ike_algorithm=sa.get("algorithm"),
                esp_algorithm=child.get("algorithm"), inbound_spi=str(child.get("inbound_spi", "")),
                outbound_spi=str(child.get("outbound_spi", "")), encap=bool(child.get("encap")), age=age,
                since=round(collected_at - age, 1) if age is not None and collected_at else None,
                remote_id=sa.get("remote_id"),
            ))
    return found


def _connecting(pod: PodFacts, wanted: AddressTest) -> bool:
    for sa in (pod.status or {}).get("ike_sas") or []:
        remote = str(sa.get("remote", "")).split("[", 1)[0]
        if sa.get("state") == "connecting" and wanted(remote):
            return True
    return False


def _failures(pod: PodFacts, wanted: AddressTest) -> list[tuple[str, Mapping[str, Any]]]:
    records = (pod.status or {}).get("last_failures") or {}
    if not isinstance(records, Mapping):
        return []
    return [(pod.ref, record) for ip, record in records.items() if isinstance(record, Mapping) and wanted(str(ip))]


def _status_problem(pod: PodFacts) -> str | None:
    if pod.status is None:
        return f"the status of {pod.ref}'s sidecar could not be read: {pod.status_error or 'no answer'}"
    if not pod.status.get("ready"):
        phase = pod.status.get("phase")  # mesh mode, before its first peer map and certificate
        why = f"phase {phase}" if phase else "its data plane is not in place yet"
        return f"{pod.ref}'s sidecar reports ready=false ({why})"
    return None


# ---- the verdict -------------------------------------------------------------------


class _Explainer:
    def __init__(self, facts: Facts, a: PodKey, b: PodKey):
        self.facts = facts
        self.a_key, self.b_key = a, b
        self.a_ref, self.b_ref = "/".join(a), "/".join(b)

    def verdict(self, reason: Reason, summary: str, action: str, traffic: Traffic, **extra: Any) -> Verdict:
        return Verdict(self.a_ref, self.b_ref, reason, summary, action, traffic, **extra)

    def run(self) -> Verdict:
        problem = self._pods_problem((self.a_key, self.b_key))
        if problem is not None:
            return problem
        return self._with_sidecars(self.facts.pods[self.a_key], self.facts.pods[self.b_key])

    def _pods_problem(self, keys: tuple[PodKey, ...]) -> Verdict | None:
        """Why the pods cannot be asked yet: missing, no address, no sidecar, sidecar not ready."""
        pods = [self.facts.pods.get(key) for key in keys]
        for key, pod in zip(keys, pods, strict=True):
            if pod is None:
                ref = "/".join(key)
                return self.verdict(Reason.POD_NOT_FOUND, f"pod {ref} does not exist",
                                    f"check the name: kubectl get pods -n {key[0]}", Traffic.UNKNOWN)
        for pod in pods:
            if not pod.ips or pod.phase not in ("Running", "Pending"):
                return self.verdict(Reason.POD_NOT_RUNNING, f"pod {pod.ref} has no IP address (phase {pod.phase})",
                                    f"kubectl describe pod -n {pod.namespace} {pod.name}", Traffic.UNKNOWN)
        for pod in pods:
            if not (pod.injected and pod.has_sidecar):
                return self._no_sidecar(pod)
        for pod in pods:
            problem = _status_problem(pod)
            if problem is not None:
                return self.verdict(
                    Reason.SIDECAR_NOT_READY, problem,
                    f"kubectl logs -n {pod.namespace} {pod.name} -c ipsec-mesh; kubectl describe pod -n "
                    f"{pod.namespace} {pod.name} (startup probe)", Traffic.UNKNOWN)
        return None

    def _no_sidecar(self, pod: PodFacts) -> Verdict:
        ns_opted_in = self.facts.namespace_labels(pod.namespace).get(INJECT_LABEL) == INJECT_ENABLED
        pod_opted_in = pod.labels.get(INJECT_LABEL) == "true"
        restart = f"kubectl delete pod -n {pod.namespace} {pod.name} (or kubectl rollout restart its workload)"
        if pod.opted_out:
            why = f"pod {pod.ref} opts out with the label {INJECT_LABEL}=false"
            action = f"remove the label from the pod template, then {restart}"
        elif not ns_opted_in and not pod_opted_in:
            why = f"namespace {pod.namespace} is not opted in (no label {INJECT_LABEL}={INJECT_ENABLED})"
            action = f"kubectl label namespace {pod.namespace} {INJECT_LABEL}={INJECT_ENABLED}, then {restart}"
        elif pod.injected:
            why = f"pod {pod.ref} is marked injected but has no ipsec-mesh container (its spec was changed)"
            action = restart
        else:
            why = (f"pod {pod.ref} was created before its namespace opted in, or while the injection "
                   f"webhook was unavailable")
            action = f"{restart}; the webhook injects the sidecar at pod creation"
        return self.verdict(Reason.NO_SIDECAR, f"no ipsec-mesh sidecar in {pod.ref}: {why}", action,
                            Traffic.PLAINTEXT)

    def _with_sidecars(self, a: PodFacts, b: PodFacts) -> Verdict:
        specs, invalid = parsed_peerings(self.facts)
        roles_a, roles_b = roles_of(a, specs, self.facts), roles_of(b, specs, self.facts)
        a_lists_b, b_lists_a = listing_peerings(a, roles_a, b, roles_b), listing_peerings(b, roles_b, a, roles_a)
        if not a_lists_b and not b_lists_a:
            details = (f"{a.ref}: {describe_roles(roles_a)}", f"{b.ref}: {describe_roles(roles_b)}")
            details += tuple(f"{ref} is invalid and ignored: {problem}" for ref, problem in sorted(invalid.items()))
            return self.verdict(
                Reason.NO_PEERING, f"no IPsecPeering selects {a.ref} and {b.ref} as each other's peers",
                f"create an IPsecPeering in {a.namespace} whose selector picks {a.ref} and whose peers pick "
                f"{b.ref} (docs/ipsecpeering.md)", Traffic.PLAINTEXT, details=details)
        by_ref = {p.ref: p for p in self.facts.peerings}
        peerings = tuple(sorted(a_lists_b | b_lists_a, key=lambda ref: strictness(by_ref[ref], specs.get(ref))))
        enforcement = self._enforcement(a, b, peerings, specs)
        blocked = Traffic.BLOCKED if enforcement == "require" else Traffic.PLAINTEXT
        common = {"enforcement": enforcement, "peerings": peerings}
        if not a_lists_b or not b_lists_a:
            has, lacks = (a, b) if a_lists_b else (b, a)
            return self.verdict(
                Reason.ONE_SIDED,
                f"one-sided: {', '.join(peerings)} gives {has.ref} a policy for {lacks.ref}, but nothing in namespace "
                f"{lacks.namespace} consents: {lacks.ref} has no policy for {has.ref} and refuses its IKE requests",
                f"in namespace {lacks.namespace}, create an IPsecPeering whose selector picks {lacks.ref} and whose "
                f"peers pick {has.ref} (with a namespaceSelector for {has.namespace}); the peering's status says "
                "AwaitingConsent until then", blocked,
                details=(f"{a.ref}: {describe_roles(roles_a)}", f"{b.ref}: {describe_roles(roles_b)}"), **common)
        unusable = self._unusable(peerings)
        if unusable is not None:
            return self.verdict(Reason.PEERING_NOT_READY, unusable[0], unusable[1], blocked, **common)
        sas = _sas_with(a, _any_of(b.ips), self.facts.collected_at) + _sas_with(b, _any_of(a.ips),
                                                                                 self.facts.collected_at)
        if sas:
            return self._encrypted(a, b, sas, common)
        one_sided = self._one_sided(a, b)
        if one_sided is not None:
            return self.verdict(Reason.ONE_SIDED, one_sided[0], one_sided[1], blocked, details=one_sided[2],
                                **common)
        failures = _failures(a, _any_of(b.ips)) + _failures(b, _any_of(a.ips))
        if failures:
            return self._failed(a, b, failures, specs, peerings, blocked, common)
        if _connecting(a, _any_of(b.ips)) or _connecting(b, _any_of(a.ips)):
            return self.verdict(Reason.NEGOTIATING, f"IKE between {a.ref} and {b.ref} is under way",
                                "ask again in a few seconds", blocked, **common)
        if enforcement == "prefer":
            return self.verdict(
                Reason.PLAINTEXT_FALLBACK,
                f"no SA between {a.ref} and {b.ref}, and enforcement is prefer: packets go in plaintext "
                "until IKE (started by the first packet) completes",
                "send traffic and ask again; set spec.enforcement: require to fail closed instead",
                Traffic.PLAINTEXT, **common)
        return self.verdict(
            Reason.NO_SA_YET, f"no SA between {a.ref} and {b.ref} yet: none has been tried (IKE starts on the "
            "first packet between them)",
            f"send traffic, e.g. kubectl exec -n {a.namespace} {a.name} -- ping -c1 {b.ips[0]}, and ask again",
            blocked, **common)

    def _enforcement(self, a: PodFacts, b: PodFacts, peerings: tuple[str, ...],
                     specs: Mapping[str, PeeringSpec]) -> str:
        peer_map = (self.facts.peer_maps or {}).get(a.key)
        policy = peer_map.policy_for(b.ips[0]) if peer_map is not None else None
        if policy is not None:
            return policy.enforcement
        return self._setting(peerings[0], specs, "enforcement")  # the sidecar's tie-break: map order, by name

    def _setting(self, ref: str, specs: Mapping[str, PeeringSpec], name: str) -> str:
        """`auth` or `enforcement` of a peering: from its spec, else as the operator reported it."""
        spec = specs.get(ref)
        if spec is not None:
            return (spec.auth if name == "auth" else spec.enforcement).value
        reported = getattr(next(p for p in self.facts.peerings if p.ref == ref), name)
        return reported or ("certificate" if name == "auth" else "require")

    def _unusable(self, peerings: tuple[str, ...]) -> tuple[str, str] | None:
        """A peering that selects the pair but cannot give them keys yet."""
        by_ref: dict[str, PeeringFacts] = {p.ref: p for p in self.facts.peerings}
        problems = []
        for ref in peerings:
            keys = by_ref[ref].condition("KeysIssued")
            if keys is not None and keys.get("status") == "False":
                problems.append(f"{ref}: keys not issued ({keys.get('reason')}: {keys.get('message')})")
        if len(problems) < len(peerings) or not problems:
            return None  # another peering covers the pair
        return ("; ".join(problems), f"kubectl describe ipsecpeering -n {peerings[0].split('/')[0]} "
                f"{peerings[0].split('/')[1]} (events and conditions); the operator's log says more")

    def _one_sided(self, a: PodFacts, b: PodFacts) -> tuple[str, str, tuple[str, ...]] | None:
        maps = self.facts.peer_maps
        if maps is None:
            return self._stale_map(a) or self._stale_map(b)
        map_a, map_b = maps.get(a.key), maps.get(b.key)
        lists_b = map_a is not None and map_a.policy_for(b.ips[0]) is not None
        lists_a = map_b is not None and map_b.policy_for(a.ips[0]) is not None
        if lists_a and lists_b:
            return self._stale_map(a) or self._stale_map(b)
        if not lists_a and not lists_b:
            summary = f"the operator gives neither {a.ref} nor {b.ref} a policy for the other"
        else:
            has, lacks = (a, b) if lists_b else (b, a)
            summary = (f"one-sided: {has.ref}'s peer map lists {lacks.ref}, but {lacks.ref}'s does not list "
                       f"{has.ref}, so {lacks.ref} refuses its IKE requests")
        action = ("if the peering crosses namespaces, the peer namespace must consent to it; see the peering's "
                  "Ready/Degraded conditions (kubectl describe ipsecpeering) and the operator's log")
        details = tuple(f"{pod.ref}: peer map v{m.version}, policies: {', '.join(p.name for p in m.policies) or 'none'}"
                        for pod, m in ((a, map_a), (b, map_b)) if m is not None)
        return summary, action, details

    def _stale_map(self, pod: PodFacts) -> tuple[str, str, tuple[str, ...]] | None:
        logs = f"kubectl logs -n {pod.namespace} {pod.name} -c ipsec-mesh"
        refused = ((pod.status or {}).get("mesh") or {}).get("refused")  # mesh mode: a map it could not use
        if isinstance(refused, Mapping):
            return (f"{pod.ref}'s sidecar refused peer map v{refused.get('version')}: {refused.get('error')}",
                    f"fix what the error names (usually the peering's spec or keys); {logs}", ())
        peer_map = (self.facts.peer_maps or {}).get(pod.key)
        current = peer_map.version if peer_map is not None else self.facts.map_versions.get(pod.key)
        applied = (pod.status or {}).get("peer_map_version")
        if isinstance(applied, int) and current is not None and applied < current:
            return (f"{pod.ref}'s sidecar runs peer map v{applied}; the operator has v{current} for it",
                    f"wait for the sidecar to fetch it, else {logs}", ())
        return None

    def _encrypted(self, a: PodFacts, b: PodFacts, sas: list[SaInfo], common: dict[str, Any]) -> Verdict:
        first = sas[0]
        reporters = {sa.reported_by for sa in sas}
        details = tuple(
            f"{sa.reported_by}: IKE {sa.ike_sa} {sa.ike_algorithm}; ESP {sa.esp_algorithm} SPIs in "
            f"{sa.inbound_spi} out {sa.outbound_spi}{' (UDP-encapsulated)' if sa.encap else ''}"
            f"{f', up {sa.age:.0f}s' if sa.age is not None else ''}" for sa in sas)
        if len(reporters) == 1:
            other = b.ref if first.reported_by == a.ref else a.ref
            details += (f"{other}'s sidecar does not list this SA (yet)",)
        return self.verdict(Reason.ENCRYPTED, f"encrypted: ESP {first.esp_algorithm}, IKE {first.ike_algorithm}",
                            "nothing to do", Traffic.ENCRYPTED, details=details, sas=tuple(sas), **common)

    def _failed(self, a: PodFacts, b: PodFacts, failures: list[tuple[str, Mapping[str, Any]]],
                specs: Mapping[str, PeeringSpec], peerings: tuple[str, ...], traffic: Traffic,
                common: dict[str, Any]) -> Verdict:
        reporter, record = max(failures, key=lambda f: f[1].get("at") or 0)
        reason = FAILURE_REASONS.get(str(record.get("reason")), Reason.NEGOTIATION_FAILED)
        details = tuple(f"{who}: {r.get('reason')} x{r.get('count', 1)}: {r.get('message', '')}"
                        for who, r in failures)
        if reason is Reason.AUTH_FAILED:
            action = AUTH_ACTIONS[self._setting(peerings[0], specs, "auth")]
        elif reason is Reason.NO_PROPOSAL_CHOSEN:
            proposals = sorted({f"{ref}: ike {list(specs[ref].ike_proposals)} esp {list(specs[ref].esp_proposals)}"
                                for ref in peerings if ref in specs})
            details += tuple(proposals)
            action = "make spec.proposals of the peerings on both sides share at least one IKE and one ESP proposal"
        elif reason is Reason.TIMEOUT:
            silent = b if reporter == a.ref else a  # the side that did not answer
            refused = (silent.status or {}).get("counters", {}).get("refused_unknown_peer", 0)
            if refused:
                details += (f"{silent.ref}'s sidecar refused {refused} IKE request(s) from peers not in its map",)
            action = ("IKE (UDP 500 and 4500) does not get through between the pods: check NetworkPolicies and "
                      "that the other sidecar's peer map lists this pod")
        else:
            action = f"read the sidecars' logs: kubectl logs -n {a.namespace} {a.name} -c ipsec-mesh"
        summary = f"the last negotiation between {a.ref} and {b.ref} failed ({reporter}): {record.get('message', '')}"
        return self.verdict(reason, summary, action, traffic, details=details, **common)


def explain(facts: Facts, a: PodKey, b: PodKey) -> Verdict:
    """Is traffic between pods a and b encrypted, and if not, why (the most specific reason)."""
    return _Explainer(facts, a, b).run()


# ---- a pod and a remote cluster's peer ----------------------------------------------------


@dataclass(frozen=True)
class RemoteTarget:
    """`remote/NS/PEERING/NAME[/ADDRESS]` (a named remote), or a bare address in some remote's CIDRs."""

    peering: str | None = None
    remote: str | None = None
    address: str | None = None

    @property
    def ref(self) -> str:
        if self.peering is None:
            return str(self.address)
        return "/".join(["remote", self.peering, str(self.remote)] + ([self.address] if self.address else []))


def remotes_of(peering: PeeringFacts, spec: PeeringSpec | None) -> tuple[RemoteFacts, ...]:
    """The remote clusters a peering names: as the operator reported them, else from its spec."""
    if peering.remotes is not None:
        return peering.remotes
    if spec is None:
        return ()
    return tuple(RemoteFacts(r.name, r.cidrs, r.identities, r.trust) for r in spec.remotes)


def bundle_state(peering: PeeringFacts, remote: RemoteFacts, now: float) -> tuple[bool | None, str]:
    """(fresh?, what the operator says) about the trust bundle it holds for `remote`; None: not federated."""
    if remote.trust == "trustBundle":
        return None, (f"remote {remote.name}: trust bundle copied by hand (remote.trustBundle): nobody can tell "
                      "whether it is current; it must hold the remote mesh CA now in use")
    if remote.trust != "federation":
        return None, f"remote {remote.name}: pre-shared key (remote.pskSecretRef)"
    entry = peering.federation(remote.name)
    if entry is None:
        return False, (f"remote {remote.name}: federated, but the operator reports nothing about its bundle yet "
                       f"(TrustBundlesFresh unknown)")
    where = f"{entry.get('trustDomain')} from {entry.get('endpoint')}"
    fetched = entry.get("fetchedAt")
    ago = f"{now - fetched:.0f}s ago" if isinstance(fetched, (int, float)) and now else "never"
    if entry.get("fresh") is True:
        return True, f"remote {remote.name}: bundle of {where} fresh, fetched {ago} ({entry.get('authorities')} CA(s))"
    error = str(entry.get("lastError") or "no reason given")[:MAX_ERROR_TEXT]
    state = "never fetched, the members use the bootstrap bundle" if fetched is None else f"stale, fetched {ago}"
    return False, (f"remote {remote.name}: bundle of {where} {state}; {entry.get('failures', 0)} failed "
                   f"attempt(s), last: {error}")


class _RemoteExplainer(_Explainer):
    def __init__(self, facts: Facts, pod: PodKey, target: RemoteTarget):
        super().__init__(facts, pod, pod)
        self.target = target
        self.b_ref = target.ref

    def run(self) -> Verdict:
        problem = self._pods_problem((self.a_key,))
        if problem is not None:
            return problem
        pod = self.facts.pods[self.a_key]
        specs, _ = parsed_peerings(self.facts)
        found = self._governing(pod, specs)
        if isinstance(found, Verdict):
            return found
        peering, remote = found
        member_of = roles_of(pod, specs, self.facts).member_of
        if peering.ref not in member_of:
            return self.verdict(
                Reason.NO_PEERING,
                f"{pod.ref} is not a member of {peering.ref}: only the pods its selector picks get a policy for "
                f"remote {remote.name} ({', '.join(map(str, remote.cidrs))})",
                f"make {peering.ref}'s selector pick {pod.ref}, or create a peering that does", Traffic.PLAINTEXT,
                peerings=(peering.ref,))
        unusable = self._unusable((peering.ref,))
        enforcement = self._remote_enforcement(peering, specs)
        blocked = Traffic.BLOCKED if enforcement == "require" else Traffic.PLAINTEXT
        common = {"enforcement": enforcement, "peerings": (peering.ref,)}
        if unusable is not None:
            return self.verdict(Reason.PEERING_NOT_READY, unusable[0], unusable[1], blocked, **common)
        fresh, bundle = bundle_state(peering, remote, self.facts.collected_at)
        address = self.target.address
        wanted: AddressTest = (lambda ip: ip == address) if address else (lambda ip: _covers(remote, ip))
        towards = address or f"remote {remote.name} ({', '.join(map(str, remote.cidrs))})"
        details = (bundle,)
        sas = _sas_with(pod, wanted, self.facts.collected_at)
        if sas:
            first = sas[0]
            details = tuple(
                f"{sa.reported_by}: IKE {sa.ike_sa} with {sa.remote_id} {sa.ike_algorithm}; ESP {sa.esp_algorithm} "
                f"SPIs in {sa.inbound_spi} out {sa.outbound_spi}{' (UDP-encapsulated)' if sa.encap else ''}"
                for sa in sas) + details
            return self.verdict(Reason.ENCRYPTED, f"encrypted: ESP {first.esp_algorithm}, IKE {first.ike_algorithm}, "
                                f"peer {first.remote_id}", "nothing to do", Traffic.ENCRYPTED, details=details,
                                sas=tuple(sas), **common)
        stale = self._stale_map(pod)
        if stale is not None:
            details += (stale[0],)
        failures = _failures(pod, wanted)
        if failures:
            return self._remote_failed(pod, remote, failures, fresh, peering, specs, blocked, details, common)
        if _connecting(pod, wanted):
            return self.verdict(Reason.NEGOTIATING, f"IKE between {pod.ref} and {towards} is under way",
                                "ask again in a few seconds", blocked, details=details, **common)
        probe = address or "an address in the remote's CIDRs"
        if enforcement == "prefer":
            return self.verdict(
                Reason.PLAINTEXT_FALLBACK, f"no SA between {pod.ref} and {towards}, and enforcement is prefer: "
                "packets go in plaintext until IKE (started by the first packet) completes",
                "send traffic and ask again; set spec.enforcement: require to fail closed instead",
                Traffic.PLAINTEXT, details=details, **common)
        return self.verdict(
            Reason.NO_SA_YET, f"no SA between {pod.ref} and {towards} yet: none has been tried (IKE starts on the "
            "first packet)", f"send traffic, e.g. kubectl exec -n {pod.namespace} {pod.name} -- ping -c1 {probe}, "
            "and ask again", blocked, details=details, **common)

    def _governing(self, pod: PodFacts, specs: Mapping[str, PeeringSpec]
                   ) -> tuple[PeeringFacts, RemoteFacts] | Verdict:
        """The peering and remote that decide about the target, or why there is none."""
        target = self.target
        if target.peering is not None:
            peering = next((p for p in self.facts.peerings if p.ref == target.peering), None)
            if peering is None:
                return self.verdict(Reason.REMOTE_NOT_FOUND, f"IPsecPeering {target.peering} does not exist",
                                    f"check the name: kubectl get ipsecpeerings -n {target.peering.split('/')[0]}",
                                    Traffic.UNKNOWN)
            remotes = remotes_of(peering, specs.get(peering.ref))
            remote = next((r for r in remotes if r.name == target.remote), None)
            if remote is None:
                names = ", ".join(r.name for r in remotes) or "none"
                return self.verdict(Reason.REMOTE_NOT_FOUND,
                                    f"{peering.ref} names no remote {target.remote} (its remotes: {names})",
                                    f"kubectl get ipsecpeering -n {peering.namespace} {peering.name} -o yaml",
                                    Traffic.UNKNOWN, peerings=(peering.ref,))
            if target.address is not None and _covers(remote, target.address) is None:
                return self.verdict(
                    Reason.REMOTE_NOT_FOUND, f"{target.address} is outside remote {remote.name}'s CIDRs "
                    f"({', '.join(map(str, remote.cidrs))}): no policy of {peering.ref} covers it",
                    f"add the remote cluster's pod CIDR to remote.cidrs of {peering.ref}", Traffic.UNKNOWN,
                    peerings=(peering.ref,))
            return peering, remote
        member_of = roles_of(pod, specs, self.facts).member_of
        covering = sorted(((p, r, _covers(r, target.address)) for p in self.facts.peerings
                           for r in remotes_of(p, specs.get(p.ref)) if _covers(r, target.address) is not None),
                          key=lambda c: (c[0].ref not in member_of, -c[2], strictness(c[0], specs.get(c[0].ref))))
        if not covering:
            return self.verdict(
                Reason.NO_PEERING, f"no IPsecPeering names a remote cluster whose CIDRs hold {target.address}",
                f"to encrypt with a pod of another cluster, create a peering in {pod.namespace} whose selector picks "
                f"{pod.ref} and whose remote lists that cluster's pod CIDR (docs/cross-cluster.md)", Traffic.PLAINTEXT)
        return covering[0][0], covering[0][1]  # a member's peering first, then longest prefix, then precedence

    def _remote_enforcement(self, peering: PeeringFacts, specs: Mapping[str, PeeringSpec]) -> str:
        peer_map = (self.facts.peer_maps or {}).get(self.a_key)
        policy = peer_map.policy_for(self.target.address) if peer_map is not None and self.target.address else None
        return policy.enforcement if policy is not None else self._setting(peering.ref, specs, "enforcement")

    def _remote_failed(self, pod: PodFacts, remote: RemoteFacts, failures: list[tuple[str, Mapping[str, Any]]],
                       fresh: bool | None, peering: PeeringFacts, specs: Mapping[str, PeeringSpec],
                       traffic: Traffic, details: tuple[str, ...], common: dict[str, Any]) -> Verdict:
        _, record = max(failures, key=lambda f: f[1].get("at") or 0)
        reason = FAILURE_REASONS.get(str(record.get("reason")), Reason.NEGOTIATION_FAILED)
        details = tuple(f"{who}: {r.get('reason')} x{r.get('count', 1)}: {str(r.get('message', ''))[:MAX_ERROR_TEXT]}"
                        for who, r in failures) + details
        identities = ", ".join(remote.identities) or "none listed"
        other_side = ("the remote cluster's own peering must pick that pod and list this cluster's CIDRs and "
                      "identities (ask ipsec-mesh explain there, about this pod's address)")
        if reason is Reason.AUTH_FAILED and remote.trust == "federation" and not fresh:
            action = (f"the bundle of remote {remote.name} is not current: make its bundle endpoint reachable from "
                      "this operator and check the trust domain and bootstrap bundle (TrustBundlesFresh in "
                      f"kubectl describe ipsecpeering -n {peering.namespace} {peering.name}); then {other_side}")
        elif reason is Reason.AUTH_FAILED and remote.trust == "psk":
            action = AUTH_ACTIONS["psk"]
        elif reason is Reason.AUTH_FAILED:
            held = "the fetched bundle is fresh" if remote.trust == "federation" else "the copied trust bundle must be current"
            action = (f"{held}: the peer's certificate must chain to it and name one of remote.identities "
                      f"({identities}); {other_side}")
        elif reason is Reason.TIMEOUT:
            action = ("IKE (UDP 500 and 4500) gets no answer from the remote address: check the routes and "
                      f"firewalls between the clusters (no NAT of pod addresses), and that {other_side}")
        elif reason is Reason.NO_PROPOSAL_CHOSEN:
            action = "make spec.proposals of the peerings in both clusters share at least one IKE and one ESP proposal"
        else:
            action = f"read the sidecar's log: kubectl logs -n {pod.namespace} {pod.name} -c ipsec-mesh"
        summary = (f"the last negotiation between {pod.ref} and {self.target.ref} failed: "
                   f"{str(record.get('message', ''))[:MAX_ERROR_TEXT]}")
        return self.verdict(reason, summary, action, traffic, details=details, **common)


def _covers(remote: RemoteFacts, ip: str) -> int | None:
    try:
        return remote.covers(ip)
    except ValueError:
        return None  # not an address (a sidecar's record key, say): covered by nothing


def explain_remote(facts: Facts, pod: PodKey, target: RemoteTarget) -> Verdict:
    """Is traffic between a pod and a remote cluster's peer encrypted, and if not, why: which peering and
    remote govern it, whether that remote's trust bundle is fresh, what the pod's sidecar reports."""
    if target.address is not None:
        ipaddress.ip_address(target.address)  # the caller validated it; a bad one is a programming error
    return _RemoteExplainer(facts, pod, target).run()


# ---- a pod and a Service -------------------------------------------------------------


@dataclass(frozen=True)
class EndpointVerdict:
    address: str
    #: (service port, target port) pairs this address serves.
    ports: tuple[tuple[int, int], ...]
    ready: bool
    serving: bool
    terminating: bool
    #: The pod at the address, if the facts know one.
    pod: str | None
    #: The client's peer map lists the pod (the operator's rule): the sidecar translates to it.
    peer: bool
    #: The pair verdict client <-> pod; None where the address is no known pod.
    verdict: Verdict | None

    @property
    def encrypted(self) -> bool:
        return self.verdict is not None and self.verdict.encrypted


@dataclass(frozen=True)
class ServiceVerdict:
    pod: str
    service: str
    reason: Reason
    summary: str
    action: str
    traffic: Traffic
    cluster_ips: tuple[str, ...] = ()
    endpoints: tuple[EndpointVerdict, ...] = ()

    @property
    def encrypted(self) -> bool:
        return self.reason is Reason.ENCRYPTED

    def to_dict(self) -> dict[str, Any]:
        return {
            "pod": self.pod, "service": self.service, "reason": self.reason.value, "encrypted": self.encrypted,
            "summary": self.summary, "action": self.action, "traffic": self.traffic.value,
            "clusterIPs": list(self.cluster_ips),
            "endpoints": [{
                "address": e.address, "ports": [{"port": p, "targetPort": t} for p, t in e.ports],
                "ready": e.ready, "serving": e.serving, "terminating": e.terminating, "pod": e.pod, "peer": e.peer,
                "encrypted": e.encrypted, "verdict": None if e.verdict is None else e.verdict.to_dict(),
            } for e in self.endpoints],
        }


def _endpoints(facts: Facts, client: PodKey, service: ServiceFacts) -> tuple[EndpointVerdict, ...]:
    by_ip = {ip: pod for pod in facts.pods.values() for ip in pod.ips}
    specs, _ = parsed_peerings(facts)
    me = facts.pods.get(client)
    served: dict[str, list] = {}
    for port in service.entry.ports:
        for endpoint in port.endpoints:
            served.setdefault(str(endpoint.address), [endpoint, []])[1].append((port.port, endpoint.port))
    out = []
    for address, (endpoint, ports) in served.items():  # in the entry's order: by address
        pod = by_ip.get(address)
        peer = False
        if pod is not None and me is not None and pod.injected and pod.has_sidecar and pod.key != client:
            peer = bool(listing_peerings(me, roles_of(me, specs, facts), pod, roles_of(pod, specs, facts)))
        verdict = explain(facts, client, pod.key) if pod is not None and pod.key != client else None
        out.append(EndpointVerdict(address, tuple(ports), endpoint.ready, endpoint.serving, endpoint.terminating,
                                   pod.ref if pod is not None else None, peer, verdict))
    return tuple(out)


def _untranslated(facts: Facts, client: PodKey, ref: str) -> tuple[str, Traffic] | None:
    """Why the client's sidecar does not translate the Service as its map says, from its /status;
    None when it does, or when its status does not say (an older sidecar, no status)."""
    pod = facts.pods.get(client)
    services = ((pod.status if pod is not None else None) or {}).get("dataplane") or {}
    services = services.get("services") if isinstance(services, Mapping) else None
    listed = services.get("per_service") if isinstance(services, Mapping) else None
    if not isinstance(listed, Mapping):
        return None
    entry = listed.get(ref)
    if not isinstance(entry, Mapping):
        # Not in the map the sidecar runs: its calls go to the node's kube-proxy, unencrypted.
        return "its peer map does not list the Service (yet)", Traffic.PLAINTEXT
    if entry.get("translated") is True and entry.get("current") is True:
        return None
    error = str(entry.get("error") or services.get("last_error") or "no reason given")[:MAX_ERROR_TEXT]
    if entry.get("current") is True:
        return error, Traffic.BLOCKED  # the map in force has no usable endpoint: rejected in the pod
    return error, Traffic.UNKNOWN  # an earlier translation (or none) is still in force


def explain_service(facts: Facts, client: PodKey, key: PodKey) -> ServiceVerdict:
    """Are the pod's calls to the Service encrypted, and if not, why: to which endpoints, and what each pair says."""
    pod_ref, ref = "/".join(client), "/".join(key)
    service = facts.services.get(key)

    def verdict(reason: Reason, summary: str, action: str, traffic: Traffic, **extra: Any) -> ServiceVerdict:
        return ServiceVerdict(pod_ref, ref, reason, summary, action, traffic, **extra)

    if service is None:
        return verdict(Reason.SERVICE_NOT_FOUND, f"Service {ref} does not exist",
                       f"check the name: kubectl get services -n {key[0]}", Traffic.UNKNOWN)
    if service.entry is None:
        if service.skipped == "headless":
            return verdict(Reason.NOT_A_MESH_SERVICE, f"Service {ref} is headless: DNS answers with the pods' own "
                           "addresses, so calls go to pod IPs and nothing needs translating",
                           f"ask about the pods: ipsec-mesh explain {pod_ref} NS/POD", Traffic.UNKNOWN)
        return verdict(Reason.NOT_A_MESH_SERVICE, f"Service {ref} is {service.skipped}: the mesh does not translate "
                       "it, and calls to it leave in plaintext", "see docs/services.md (what the mesh covers)",
                       Traffic.PLAINTEXT)
    cluster_ips = tuple(str(ip) for ip in service.entry.cluster_ips)
    endpoints = _endpoints(facts, client, service)
    common = {"cluster_ips": cluster_ips, "endpoints": endpoints}
    if not endpoints:
        return verdict(Reason.NO_ENDPOINTS, f"Service {ref} has no endpoints: its selector matches no ready pod",
                       f"kubectl get endpointslices -n {key[0]} -l kubernetes.io/service-name={key[1]}",
                       Traffic.UNKNOWN, **common)
    peers = [e for e in endpoints if e.peer]
    if not peers:
        return verdict(
            Reason.NO_PEER_ENDPOINTS,
            f"no endpoint of {ref} is a peer of {pod_ref}: its peer map does not list the Service, so calls go "
            "through kube-proxy to a pod address the pod has no policy for",
            f"create an IPsecPeering whose selector picks {pod_ref} and whose peers pick the Service's pods "
            "(docs/ipsecpeering.md); ipsec-mesh explain for one endpoint pod says more", Traffic.PLAINTEXT, **common)
    untranslated = _untranslated(facts, client, ref)
    if untranslated is not None:
        error, traffic = untranslated
        return verdict(Reason.SERVICE_NOT_TRANSLATED,
                       f"the sidecar has not installed the translation: {error}",
                       f"check the sidecar of {pod_ref}: its /status dataplane.services and its log; a kernel "
                       "refusal names the missing nf_tables/nf_nat module (docs/services.md, Troubleshooting); "
                       "compare its peer_map_version with the operator's", traffic, **common)
    # kube-proxy and the sidecar send new connections to serving endpoints only.
    used = [e for e in endpoints if e.serving] or endpoints
    strangers = [e for e in used if not e.peer]
    if strangers:
        return verdict(
            Reason.ENDPOINTS_NOT_PEERS,
            f"{len(strangers)} of {len(used)} serving endpoint(s) of {ref} are not peers of {pod_ref}: calls the "
            f"sidecar sends to them ({', '.join(e.pod or e.address for e in strangers)}) get what any non-peer gets",
            f"make every pod behind {ref} a peer of {pod_ref}, or the Service's selector pick peers only",
            Traffic.PLAINTEXT, **common)
    unencrypted = [e for e in used if not e.encrypted]
    if unencrypted:
        first = unencrypted[0].verdict
        return verdict(Reason.ENDPOINT_NOT_ENCRYPTED,
                       f"{len(unencrypted)} of {len(used)} serving endpoint(s) of {ref} not encrypted; "
                       f"{first.b}: {first.summary}", first.action, first.traffic, **common)
    return verdict(Reason.ENCRYPTED, f"encrypted: {pod_ref}'s map lists {ref}, and every serving endpoint "
                   f"({len(used)}) is a peer with a live SA", "nothing to do", Traffic.ENCRYPTED, **common)
