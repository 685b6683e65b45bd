"""The index (what the sidecars get) and `explain`/`peerings` (cli/pairing.py) apply the same peering
rules (model/rules.py): the same order among peerings covering one pair, and on seeded random meshes
the same members, peers, consent, governing peering, enforcement and auth for every pair of pods."""

from __future__ import annotations

import random
from collections import Counter

from ipsec_mesh.meshapi import AuthKind, PskKey
from ipsec_mesh_operator.cli.diagnose import Reason, explain
from ipsec_mesh_operator.cli.facts import Facts, PeeringFacts, PodFacts
from ipsec_mesh_operator.cli.pairing import parsed_peerings, roles_of, strictness
from ipsec_mesh_operator.controller.index import MeshIndex, PodInfo
from ipsec_mesh_operator.model.peering import parse_peering
from ipsec_mesh_operator.model.rules import precedence
from ipsec_mesh_operator.model.settings import NAMESPACE_NAME_LABEL

# Names that share prefixes, so that "ns/name" as one string and (ns, name) as a pair can disagree.
NAMES = ["a", "a-b", "a0", "ab", "b", "a.b"]


def random_peering(rng: random.Random):
    namespace, name = rng.choice(NAMES), rng.choice(NAMES)
    spec = {"selector": {"matchLabels": {"app": "x"}}, "peers": [{"podSelector": {}}],
            "enforcement": rng.choice(["require", "prefer"]), "tfcPadding": rng.random() < 0.5}
    parsed = parse_peering(namespace, name, spec)
    return PeeringFacts(namespace, name, spec), parsed


def test_explain_orders_covering_peerings_as_the_index_does():
    rng = random.Random(1212)
    for _ in range(2000):
        peerings = [random_peering(rng) for _ in range(rng.randint(2, 6))]
        by_index = [f"{s.namespace}/{s.name}" for s in sorted((s for _, s in peerings), key=precedence)]
        by_explain = [f"{f.namespace}/{f.name}" for f, _ in sorted(peerings, key=lambda p: strictness(*p))]
        assert by_explain == by_index, peerings


# ---- random meshes: for every pair of pods, the index's peer maps and explain say the same -------------

NAMESPACES = ["front", "back", "data"]
APPS = ["web", "api", "db"]


def random_pod_selector(rng: random.Random) -> dict:
    app, other = rng.sample(APPS, 2)
    return rng.choice([
        {},
        {"matchLabels": {"app": app}},
        {"matchLabels": {"app": app, "tier": rng.choice(["1", "2"])}},
        {"matchExpressions": [{"key": "app", "operator": "In", "values": [app, other]}]},
        {"matchExpressions": [{"key": "tier", "operator": "Exists"}]},
        {"matchLabels": {"app": app}, "matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]},
        {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": [app]}]},
    ])


def random_namespace_selector(rng: random.Random) -> dict:
    return rng.choice([
        {},
        {"matchLabels": {"team": rng.choice(["red", "blue"])}},
        {"matchLabels": {NAMESPACE_NAME_LABEL: rng.choice(NAMESPACES)}},
        {"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]},
        {"matchExpressions": [{"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": rng.sample(NAMESPACES, 2)}]},
    ])


def random_peering_spec(rng: random.Random) -> dict:
    peers = []
    for _ in range(rng.randint(1, 2)):
        peer = {"podSelector": random_pod_selector(rng)}
        if rng.random() < 0.6:
            peer["namespaceSelector"] = random_namespace_selector(rng)
        peers.append(peer)
    if rng.random() < 0.5:
        auth = {"type": "psk", "pskRotationInterval": rng.choice(["720h", "24h"]), "pskOverlap": "1h"}
    else:
        auth = {"type": "certificate", "certificateLifetime": rng.choice(["24h", "12h"])}
    spec = {"selector": random_pod_selector(rng), "peers": peers, "authentication": auth,
            "enforcement": rng.choice(["require", "prefer"])}
    if rng.random() < 0.5:
        spec["tfcPadding"] = rng.random() < 0.5
    return spec


def random_mesh(rng: random.Random):
    """Namespaces (some labelled, some not), pods with labels in each, peerings with selectors of both kinds."""
    namespaces = {}
    for ns in NAMESPACES:
        if rng.random() < 0.7:
            labels = {"team": rng.choice(["red", "blue"])}
            if rng.random() < 0.3:
                labels["env"] = "prod"
            if rng.random() < 0.3:
                labels[NAMESPACE_NAME_LABEL] = ns
            namespaces[ns] = labels
    pods = []
    for n in range(rng.randint(2, 7)):
        labels = {"app": rng.choice(APPS)}
        if rng.random() < 0.5:
            labels["tier"] = rng.choice(["1", "2"])
        pods.append((rng.choice(NAMESPACES), f"pod-{n}", labels, f"10.9.0.{n + 1}"))
    peerings = [(rng.choice(NAMESPACES), f"p{n}", random_peering_spec(rng)) for n in range(rng.randint(1, 5))]
    for ns, name, spec in list(peerings):
        if rng.random() < 0.4:  # the other side's consent: a peering there that lists these members
            there = rng.choice([n for n in NAMESPACES if n != ns])
            answer = random_peering_spec(rng)
            answer["peers"] = [{"podSelector": spec["selector"],
                                "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: ns}}}]
            peerings.append((there, f"{name}-consent", answer))
    return namespaces, pods, peerings


def index_of(namespaces, pods, peerings) -> MeshIndex:
    index = MeshIndex()
    for ns, labels in namespaces.items():
        index.set_namespace_labels(ns, labels)
    for ns, name, labels, ip in pods:
        index.upsert_pod(PodInfo(ns, name, f"uid-{name}", "default", labels, (ip,)))
    for ns, name, spec in peerings:
        parsed = parse_peering(ns, name, spec)
        index.upsert_peering(parsed)
        if parsed.auth is AuthKind.PSK:  # issued by the operator; without it a PSK peering lists no one
            index.set_psk_keys(parsed.key, (PskKey("k1", b"k" * 32),))
    return index


def facts_of(namespaces, pods, peerings) -> Facts:
    return Facts(
        pods={(ns, name): PodFacts(ns, name, labels, (ip,), injected=True, has_sidecar=True,
                                      status={"ready": True})
              for ns, name, labels, ip in pods},
        peerings=tuple(PeeringFacts(ns, name, spec) for ns, name, spec in peerings),
        namespaces=namespaces)


def listed(index: MeshIndex, x, y):
    """(governing peering, enforcement, auth) of the policy under which x's peer map lists y, or None."""
    found = [policy for policy in index.peer_map(x).policies if any(p.name == "/".join(y) for p in policy.peers)]
    assert len(found) <= 1, found  # a pair is listed once per map
    return (found[0].name, found[0].enforcement.value, found[0].auth.value) if found else None


def check_mesh(namespaces, pods, peerings) -> Counter:
    """Compare the index with explain on one mesh; count the kinds of pairs it had."""
    kinds: Counter = Counter()
    index, facts = index_of(namespaces, pods, peerings), facts_of(namespaces, pods, peerings)
    specs, invalid = parsed_peerings(facts)
    assert not invalid
    for pod in facts.pods.values():
        roles = roles_of(pod, specs, facts)
        assert roles.member_of == {f"{ns}/{name}" for ns, name in index.peerings_of(pod.key)
                                   if pod.key in index.members((ns, name))}
        assert roles.peer_of == {f"{ns}/{name}" for ns, name in index.peerings_of(pod.key)
                                 if pod.key in index.peer_pods((ns, name))}
    for a in facts.pods:
        for b in facts.pods:
            if a >= b:
                continue
            a_lists_b, b_lists_a = listed(index, a, b), listed(index, b, a)
            verdict = explain(facts, a, b)
            if a_lists_b is None and b_lists_a is None:
                assert verdict.reason is Reason.NO_PEERING, (a, b, verdict)
                kinds["none"] += 1
                continue
            if a_lists_b is not None and b_lists_a is not None:
                assert a_lists_b == b_lists_a, (a, b)  # both ends under the same peering and settings
                assert verdict.reason is not Reason.ONE_SIDED, (a, b, verdict)
                kinds["two-sided"] += 1
                kinds["cross-namespace"] += a[0] != b[0]
                kinds["several peerings"] += len(verdict.peerings) > 1
            else:
                assert verdict.reason is Reason.ONE_SIDED, (a, b, verdict, a_lists_b, b_lists_a)
                kinds["one-sided"] += 1
            governing, enforcement, auth = a_lists_b or b_lists_a
            assert verdict.peerings[0] == governing, (a, b, verdict.peerings, governing)
            assert verdict.enforcement == enforcement, (a, b)
            assert specs[verdict.peerings[0]].auth.value == auth, (a, b)
    return kinds


def test_index_and_explain_agree_on_random_meshes():
    rng = random.Random(1213)
    kinds: Counter = Counter()
    for case in range(600):
        mesh = random_mesh(rng)
        try:
            kinds.update(check_mesh(*mesh))
        except AssertionError as exc:
            raise AssertionError(f"case {case}: {mesh}") from exc
    # The generator made every kind of pair: two-sided (also across namespaces, also under several
    # peerings at once), one-sided and unpaired.
    assert min(kinds[k] for k in ("two-sided", "one-sided", "none", "cross-namespace", "several peerings")) >= 100, kinds
