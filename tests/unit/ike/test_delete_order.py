"""Zero loss when a CHILD_SA is deleted: the deleting side stops sending on it first.

The simulator sends one ESP packet per node after every IKE step on the SA that node's
kernel would pick (the newest outbound) and removes inbound SAs at once on delete (no
grace period), so a packet sent on an SA the peer has already dropped counts as lost.
"""

from __future__ import annotations

import pytest

from ipsec_mesh.ike.events import ChildSaDeleted, ChildSaOutboundRetired
from tests.ikesim import Network
from tests.unit.ike.test_engine import establish, pair


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
    # A plain delete: after the retire nothing is sent, so nothing can be lost either.
    node.endpoint.delete_child(next(iter(node.inbound)), net.now, "deleted")
    net.settle()
    assert net.esp_lost == [] and not a.outbound and not b.outbound and not a.inbound and not b.inbound
