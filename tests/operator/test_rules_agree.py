"""The index (what the sidecars get) and `explain`/`peerings` (cli/pairing.py) order the peerings
that cover one pair by the same rule: seeded random peerings, many cases."""

from __future__ import annotations

import random

from ipsec_mesh_operator.cli.facts import PeeringFacts
from ipsec_mesh_operator.cli.pairing import strictness
from ipsec_mesh_operator.model.peering import parse_peering
from ipsec_mesh_operator.model.rules import precedence

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
