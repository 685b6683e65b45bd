"""PeerSet: one governing peering per peer network, shared by IKE lookups and kernel policies."""

from pathlib import Path

from ipsec_mesh.agent.config import IkeSettings, parse_agent_config
from ipsec_mesh.agent.peers import PeerSet

PSK = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA=="


def peering(name: str, enforcement: str, cidr: str) -> dict:
    return {"name": name, "authentication": "psk", "psk": [{"id": "k", "value": PSK}], "enforcement": enforcement,
            "peers": [{"name": f"{name}-peers", "addresses": [cidr], "identities": [f"*.{name}.mesh.test"]}]}


def peer_set(*peerings: dict) -> PeerSet:
    document = {"peerMap": {"local": {"identity": "a.default.pod.mesh.test", "addresses": ["10.0.0.1"]},
                            "peerings": list(peerings)}}
    return PeerSet(parse_agent_config(document, Path(".")).peer_map, IkeSettings())


def test_a_network_named_by_two_peerings_is_governed_by_one_and_require_wins(caplog):
    peers = peer_set(peering("lax", "prefer", "10.9.0.0/16"), peering("strict", "require", "10.9.0.0/16"),
                     peering("other", "prefer", "10.8.0.0/16"))
    governing = {str(e.network): e.policy.name for e in peers.entries}
    assert governing == {"10.9.0.0/16": "strict", "10.8.0.0/16": "other"}
    assert peers.entry_for("10.9.1.1").policy.name == "strict"
    assert peers.lookup("10.0.0.1", "10.9.1.1").name.startswith("strict")
    assert "10.9.0.0/16 is in peerings lax and strict: strict governs it" in caplog.text


def test_between_equals_the_first_in_the_map_governs():
    peers = peer_set(peering("first", "require", "10.9.0.0/16"), peering("second", "require", "10.9.0.0/16"))
    assert [e.policy.name for e in peers.entries] == ["first"]
    assert peers.entry_for("10.9.1.1").policy.name == "first"


def test_inactivity_reaches_the_child_config_unless_a_rekey_would_always_come_first():
    def inactivity(lifetimes: dict | None) -> float:
        p = peering("p", "require", "10.9.0.0/16")
        if lifetimes is not None:
            p["lifetimes"] = lifetimes
        return peer_set(p).lookup("10.0.0.1", "10.9.1.1").children[0].lifetime.inactivity

    assert inactivity(None) == 900  # the default, 15 minutes
    assert inactivity({"inactivity": "30s"}) == 30
    assert inactivity({"inactivity": "0s"}) == 0  # off
    assert inactivity({"child": "60s"}) == 0  # 15 minutes could never pass between rekeys: not applied
    assert inactivity({"child": "60s", "inactivity": "47s"}) == 47  # rekeys begin at 48 s
