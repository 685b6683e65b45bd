"""A restarted peer keeps the kernel's SAs until new ones exist (issue 14): the IKE side."""

from __future__ import annotations

from ipsec_mesh.ike import message as codec
from ipsec_mesh.ike.config import single_peer_lookup
from ipsec_mesh.ike.constants import ExchangeType
from ipsec_mesh.ike.events import ChildSaDeleted, ChildSaInstallOutbound
from tests.support.ikesim import A, B, Network, establish, pair


def established_pair():
    net = Network()
    a, b, a_cfg, _ = pair(net)
    establish(net, a, a_cfg)
    return net, a, b, a_cfg


def test_the_peer_sends_on_the_new_child_only_once_the_restarted_side_can_receive_on_it():
    net, a, b, a_cfg = established_pair()
    old_in_b = set(b.inbound)
    # kill -9 and a new instance at the same address: no IKE state, the kernel's SAs remain.
    restarted = net.add("a2", A, single_peer_lookup(a_cfg))
    restarted.inbound, restarted.outbound = dict(a.inbound), dict(a.outbound)
    seen_when_b_sends: list[bool] = []
    apply = b.apply

    def record(event):
        if isinstance(event, ChildSaInstallOutbound):
            seen_when_b_sends.append(event.child.outbound_spi in restarted.inbound)
        apply(event)

    b.apply = record
    restarted.endpoint.initiate(a_cfg, (A, 500), (B, 500), net.now, a_cfg.children[0], replaces_kernel_sas=True)
    net.settle()
    assert seen_when_b_sends == [True], "b sent on the new CHILD_SA before a could receive on it"
    assert [e.reason for e in b.of(ChildSaDeleted) if e.inbound_spi in old_in_b] == ["replaced"]
    sent = [codec.peek_header(d.data).exchange for d in net.delivered if d.local[0] == A]
    assert sent[-1] == ExchangeType.INFORMATIONAL  # the restarted side's "installed"
    assert len(b.established) == 1 and len(restarted.established) == 1


def test_a_peer_that_kept_nothing_gets_our_traffic_at_once():
    """A restarted peer without IPSEC_MESH_KEPT_SAS (another IKE stack, or ours without SAs
    left) has nothing to receive on: the new CHILD_SA sends as soon as it exists."""
    net, a, b, a_cfg = established_pair()
    restarted = net.add("a2", A, single_peer_lookup(a_cfg))
    restarted.endpoint.initiate(a_cfg, (A, 500), (B, 500), net.now, a_cfg.children[0])
    net.settle()
    assert len(b.of(ChildSaInstallOutbound)) == 2
    sent = [codec.peek_header(d.data).exchange for d in net.delivered if d.local[0] == A]
    assert sent[-1] == ExchangeType.IKE_AUTH  # no confirmation needed, none sent


def test_an_unconfirmed_handover_sends_after_the_retransmission_budget():
    net, a, b, a_cfg = established_pair()
    restarted = net.add("a2", A, single_peer_lookup(a_cfg))
    net.drop = lambda d: d.local[0] == A and codec.peek_header(d.data).exchange == ExchangeType.INFORMATIONAL
    restarted.endpoint.initiate(a_cfg, (A, 500), (B, 500), net.now, a_cfg.children[0], replaces_kernel_sas=True)
    net.settle()
    answered = net.now
    assert len(b.of(ChildSaInstallOutbound)) == 1  # only the first CHILD_SA's
    budget = sum(a_cfg.retransmit.delays())
    net.run(budget - 0.5)
    assert len(b.of(ChildSaInstallOutbound)) == 1
    net.run(1.0)
    assert len(b.of(ChildSaInstallOutbound)) == 2 and net.now - answered <= budget + 0.5
