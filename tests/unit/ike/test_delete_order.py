"""Zero loss when a CHILD_SA is deleted: the deleting side stops sending on it first.

The simulator sends one ESP packet per node after every IKE step on the SA that node's
kernel would pick (the newest outbound) and removes inbound SAs at once on delete (no
grace period), so a packet sent on an SA the peer has already dropped counts as lost.
"""

from __future__ import annotations

import pytest

from ipsec_mesh.ike import ChildSaDeleted, ChildSaOutboundRetired
from tests.support.ikesim import Network, establish, pair


def _collision(honour_retire: bool, first: str) -> Network:
    net = Network()
    a, b, a_cfg, _ = pair(net)
    establish(net, a, a_cfg)
    net.esp_probes = True
    for node in (a, b):
        node.honour_retire = honour_retire
    order = (a, b) if first == "a" else (b, a)
    for node in order:
        assert node.endpoint.rekey_child(next(iter(node.inbound)), net.now)
    net.settle()
    net.run(10)
    return net


@pytest.mark.parametrize("first", ["a", "b"])
def test_rekey_collision_loses_no_esp(first):
    net = _collision(True, first)
    a, b = net.nodes.values()
    assert net.esp_delivered > 10
    assert net.esp_lost == []
    assert len(a.inbound) == len(b.inbound) == len(a.outbound) == len(b.outbound) == 1


@pytest.mark.parametrize("first", ["a", "b"])
def test_without_retiring_first_the_collision_loser_loses_esp(first):
    """The probe catches the old behaviour: sending until the peer's answer to our Delete."""
    net = _collision(False, first)
    assert net.esp_lost, "the simulator no longer detects the loss this fix is about"


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_rekey_and_delete_lose_no_esp(initiator):
    net = Network()
    a, b, a_cfg, _ = pair(net)
    establish(net, a, a_cfg)
    net.esp_probes = True
    node = a if initiator == "a" else b
    for _ in range(3):
        assert node.endpoint.rekey_child(next(iter(node.inbound)), net.now)
        net.settle()
    assert net.esp_delivered > 10 and net.esp_lost == []
    # Every retired outbound SA is retired before its delete, by the side that deletes it.
    retired = [e.outbound_spi for e in node.of(ChildSaOutboundRetired)]
    deleted = [e.outbound_spi for e in node.of(ChildSaDeleted)]
    assert len(retired) == 3 and retired == deleted
    order = [type(e) for e in node.events if type(e) in (ChildSaOutboundRetired, ChildSaDeleted)]
    assert order == [ChildSaOutboundRetired, ChildSaDeleted] * 3
    # Deleting the only CHILD_SA: nothing to fall back to, so it is not retired (that would
    # only start the outage early); what is in flight during the exchange relies on the
    # peer's grace period (none in the simulator: only that SA's packets may be lost).
    last = next(iter(node.inbound))
    last_out = node.inbound[last].outbound_spi
    node.endpoint.delete_child(last, net.now, "deleted")
    net.settle()
    assert len(node.of(ChildSaOutboundRetired)) == 3
    assert {spi for _, spi in net.esp_lost} <= {last, last_out}
    assert not a.outbound and not b.outbound and not a.inbound and not b.inbound


def test_the_last_sending_sa_is_never_retired():
    """Lost collision, then the replaced SA is deleted (e.g. it expired) while the peer's
    successor still waits for the peer's Delete: retiring it would leave no SA to send on."""
    from ipsec_mesh.ike import message as codec
    from ipsec_mesh.ike.constants import ExchangeType

    for first in ("a", "b"):
        net = _collision(True, first)
        a, b = net.nodes.values()
        assert net.esp_gaps == []
    # Build the exact case: a loses, and its old SA is deleted before b's Delete of it arrives.
    net = Network()
    a, b, a_cfg, _ = pair(net)
    establish(net, a, a_cfg)
    net.esp_probes = True
    hold = {"from": "everyone"}  # whose INFORMATIONAL requests (Deletes) the network drops

    def held(d) -> bool:
        header = codec.peek_header(d.data)
        if header.exchange != ExchangeType.INFORMATIONAL or header.is_response:
            return False
        return hold["from"] == "everyone" or d.local[0] == hold["from"]

    net.drop = held  # dropped requests are retransmitted by their sender
    a.endpoint.rekey_child(next(iter(a.inbound)), net.now)
    b.endpoint.rekey_child(next(iter(b.inbound)), net.now)

    def waiting(node):
        """The replaced SA (still sending) while the peer's successor waits for its Delete."""
        for sa in node.endpoint.sas.values():
            states = {c.state.value: spi for spi, c in sa.children.items() if not c.outbound_retired}
            if "rekeyed" in states and "inbound-only" in states:
                return states["rekeyed"]
        return None

    found = None
    for _ in range(500):
        net.step()
        found = next(((n, spi) for n in (a, b) if (spi := waiting(n)) is not None), None)
        if found:
            break
    assert found, "the collision did not leave a side waiting for the peer's Delete"
    loser, old = found
    winner = b if loser is a else a
    loser.endpoint.delete_child(old, net.now, "expired")  # e.g. its lifetime ran out
    hold["from"] = winner.address  # the loser's Deletes go through; the winner's Delete of `old` waits
    net.run(2.5)
    hold["from"] = None
    net.settle()
    net.run(10)
    assert net.esp_gaps == [], "a node had a CHILD_SA but no outbound SA to send on"
    assert len(a.inbound) == len(b.inbound) == len(a.outbound) == len(b.outbound) == 1
