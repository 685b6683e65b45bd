"""`initiate: peers`: connect to every pod peer of the peer map at start and to each one a new
map adds, without listing addresses (what a mesh wants when no first packet should wait for IKE)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ipsec_mesh.agent.config import parse_agent_config
from ipsec_mesh.agent.dataplane import NullDataPlane
from ipsec_mesh.agent.peers import PeerSet
from ipsec_mesh.agent.runtime import Agent
from ipsec_mesh.meshapi.errors import PeerMapError
from tests.agent.test_agent_loopback import agent_document, wait_for


def _document(local: str, remotes: list[str], initiate) -> dict:
    doc = agent_document(local, remotes[0], initiate=False)
    peering = doc["peerMap"]["peerings"][0]
    peering["peers"] = [{"name": f"p{i}", "addresses": [f"{r}/32"],
                         "identities": [f"{r.replace('.', '-')}.default.pod.mesh.test"]}
                        for i, r in enumerate(remotes)]
    # A network peer (a remote cluster's pod CIDR) names no one to connect to.
    peering["peers"].append({"name": "cidr", "addresses": ["10.77.0.0/16"],
                             "identities": ["*.remote.pod.mesh.test"]})
    doc["initiate"] = initiate
    return doc


def _agent(local: str, remotes: list[str], initiate="peers") -> Agent:
    config = parse_agent_config(_document(local, remotes, initiate), Path("."))
    return Agent(config, NullDataPlane(), PeerSet(config.peer_map, config.ike))


def _established_with(agent: Agent) -> set[str]:
    return {sa.remote[0] for sa in agent.endpoint.sas.values() if sa.state.name == "ESTABLISHED" and sa.children}


def test_initiate_peers_parses_and_other_words_are_refused():
    config = parse_agent_config(_document("127.0.0.1", ["127.0.0.2"], "peers"), Path("."))
    assert config.initiate_peers and config.initiate == ()
    assert not parse_agent_config(_document("127.0.0.1", ["127.0.0.2"], []), Path(".")).initiate_peers
    with pytest.raises(PeerMapError, match="initiate"):
        parse_agent_config(_document("127.0.0.1", ["127.0.0.2"], "everyone"), Path("."))


def test_pod_peers_are_the_single_address_peers():
    config = parse_agent_config(_document("127.0.0.1", ["127.0.0.2", "127.0.0.3"], "peers"), Path("."))
    assert PeerSet(config.peer_map, config.ike).pod_peers() == ("127.0.0.2", "127.0.0.3")


async def test_every_pod_peer_is_connected_at_start_and_when_a_map_adds_one():
    b = _agent("127.0.0.2", ["127.0.0.1", "127.0.0.3"], initiate=[])
    c = _agent("127.0.0.3", ["127.0.0.1", "127.0.0.2"], initiate=[])
    a = _agent("127.0.0.1", ["127.0.0.2"])
    for agent in (b, c, a):
        await agent.start()
    try:
        await wait_for(lambda: _established_with(a) == {"127.0.0.2"})
        assert _established_with(c) == set()
        # A new map that adds c: a connects to c (b, already up, is left alone).
        grown = parse_agent_config(_document("127.0.0.1", ["127.0.0.2", "127.0.0.3"], "peers"), Path("."))
        a.replace_peers(PeerSet(grown.peer_map, grown.ike))
        await wait_for(lambda: _established_with(a) == {"127.0.0.2", "127.0.0.3"})
        assert a.metrics.ike_established.values[()] == 2
    finally:
        for agent in (a, b, c):
            await agent.stop()


async def test_without_initiate_peers_a_new_map_connects_to_no_one():
    b = _agent("127.0.0.2", ["127.0.0.1"], initiate=[])
    a = _agent("127.0.0.1", ["127.0.0.2"], initiate=[])
    for agent in (b, a):
        await agent.start()
    try:
        grown = parse_agent_config(_document("127.0.0.1", ["127.0.0.2", "127.0.0.3"], []), Path("."))
        a.replace_peers(PeerSet(grown.peer_map, grown.ike))
        assert not a.endpoint.sas
    finally:
        for agent in (a, b):
            await agent.stop()


async def test_a_pod_peer_that_did_not_answer_is_tried_again_until_it_does():
    """Under load (a whole mesh starting at once) both ends' first tries can time out; each
    end of the pair tries again after a backoff instead of leaving the pair down for good."""
    doc = _document("127.0.0.1", ["127.0.0.2"], "peers")
    doc["ike"].update({"retransmitTimeout": 1, "retransmitTries": 0})
    config = parse_agent_config(doc, Path("."))
    a = Agent(config, NullDataPlane(), PeerSet(config.peer_map, config.ike))
    a.connect_retry_base = 0.2
    b = _agent("127.0.0.2", ["127.0.0.1"], initiate=[])
    await a.start()
    try:
        await wait_for(lambda: a.metrics.ike_closed.values.get(("timeout",), 0) >= 1, 5)
        await b.start()  # only now: a's first try is gone
        await wait_for(lambda: _established_with(a) == {"127.0.0.2"}, 10)
    finally:
        await a.stop()
        await b.stop()


async def test_two_ends_with_initiate_peers_negotiate_one_ike_sa_not_two():
    """The lower address connects at once; the higher one waits, finds the SA the lower one
    set up and starts nothing: half the handshakes of both initiating (a mesh of N pods
    starting at once does N(N-1)/2, not N(N-1))."""
    low, high = _agent("127.0.0.1", ["127.0.0.2"]), _agent("127.0.0.2", ["127.0.0.1"])
    high.connect_retry_base = 0.5
    await high.start()
    await low.start()
    try:
        await wait_for(lambda: _established_with(low) == {"127.0.0.2"} and _established_with(high) == {"127.0.0.1"})
        await asyncio.sleep(1.0)  # past the higher end's wait
        assert low.metrics.ike_established.values[()] == 1 and high.metrics.ike_established.values[()] == 1
        assert [sa.initiator for sa in high.endpoint.sas.values()] == [False]
    finally:
        await low.stop()
        await high.stop()


async def test_the_higher_address_connects_when_the_lower_one_does_not():
    low = _agent("127.0.0.1", ["127.0.0.2"], initiate=[])
    high = _agent("127.0.0.2", ["127.0.0.1"])
    high.connect_retry_base = 0.2
    await low.start()
    await high.start()
    try:
        await wait_for(lambda: _established_with(high) == {"127.0.0.1"}, 10)
        assert [sa.initiator for sa in high.endpoint.sas.values()] == [True]
    finally:
        await low.stop()
        await high.stop()
