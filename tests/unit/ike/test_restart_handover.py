"""A restarted peer keeps the kernel's SAs until new ones exist (issue 14): the IKE side."""

from __future__ import annotations

import random

import pytest

from ipsec_mesh.ike import message as codec
from ipsec_mesh.ike.config import single_peer_lookup
from ipsec_mesh.ike.constants import ExchangeType
from ipsec_mesh.ike.events import ChildSaDeleted, ChildSaInstallOutbound
from tests.support.ikesim import A, B, Network, establish, pair, psk_config


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


def restarted_with_kept_sas(net, a, a_cfg, name="a2"):
    """`a` killed (-9) and started again at the same address: no IKE state, the kernel's SAs
    remain and carry traffic until a new CHILD_SA sends; ESP arriving on its inbound SAs is
    counted (the kernel's counters, which answer the core's inbound-bytes queries)."""
    restarted = net.add(name, a.address, single_peer_lookup(a_cfg))
    restarted.inbound, restarted.outbound = dict(a.inbound), dict(a.outbound)
    restarted.kept_outbound = set(a.outbound)
    restarted.inbound_bytes = lambda spi: 100 * net.esp_received.get((a.address, spi), 0)
    # What the agent says at start (the data plane's inherited peers).
    restarted.endpoint.kernel_sas_kept(B if a.address == A else A, net.now + a_cfg.retransmit.kept_sas_limit())
    return restarted


def first_ike_auth_answer_from(address: str):
    """Drops the first IKE_AUTH response `address` sends (the peer retransmits its request)."""
    dropped: list[bytes] = []

    def drop(d) -> bool:
        header = codec.peek_header(d.data) if d.data != b"\xff" else None
        if (not dropped and d.local[0] == address and header is not None
                and header.exchange == ExchangeType.IKE_AUTH and header.is_response):
            dropped.append(d.data)
            return True
        return False
    return drop


def test_a_restarted_responder_sends_on_the_new_child_only_once_the_initiating_peer_can_receive_on_it():
    """The surviving peer initiates the replacement IKE SA (its own reasons: an ACQUIRE, a
    reconnect, a restart of its own). As responder, the restarted side kept sending on its
    kept outbound SA until it has evidence the peer installed the new CHILD_SA: ESP on the new
    inbound SA. Its first IKE_AUTH answer is lost, so the peer installs 2 s later; before the
    fix every packet the restarted side sent on the new SA meanwhile was lost at the peer."""
    net = Network()
    a, b, a_cfg, b_cfg = pair(net)
    establish(net, a, a_cfg)
    restarted = restarted_with_kept_sas(net, a, a_cfg)
    kept_out = set(restarted.outbound)
    net.esp_probes = True
    net.drop = first_ike_auth_answer_from(A)
    b.endpoint.initiate(b_cfg, (B, 500), (A, 500), net.now, b_cfg.children[0])
    net.run(10)
    assert net.esp_lost == [], f"lost at the peer: {len(net.esp_lost)}"
    assert restarted.sending_spi() not in kept_out, "the restarted side never switched to the new CHILD_SA"
    assert keys_match_for(restarted, b)
    # The restarted side answered with INITIAL_CONTACT: the peer dropped its stale IKE SA
    # (its SAs kept as `replaced`), never the new one by the duplicate-SA rule.
    assert b.closed_reasons() == ["stale"] and len(b.established) == 1
    assert [e.reason for e in b.of(ChildSaDeleted)] == ["replaced"]


def test_a_restarted_responder_whose_peer_sends_nothing_switches_after_the_inbound_only_limit():
    """No ESP from the peer on the new CHILD_SA and no request: the restarted side sends on
    its kept SA until the bound every inbound-only CHILD_SA has, then on the new one."""
    net = Network()
    a, b, a_cfg, b_cfg = pair(net)
    establish(net, a, a_cfg)
    restarted = restarted_with_kept_sas(net, a, a_cfg)
    kept_out = set(restarted.outbound)
    b.endpoint.initiate(b_cfg, (B, 500), (A, 500), net.now, b_cfg.children[0])
    net.settle()
    answered = net.now
    assert restarted.sending_spi() in kept_out and len(restarted.of(ChildSaInstallOutbound)) == 0
    limit = sum(a_cfg.retransmit.delays())
    net.run(limit - 1.0)
    assert restarted.sending_spi() in kept_out
    net.run(2.0)
    assert restarted.sending_spi() not in kept_out and net.now - answered <= limit + 1.0
    assert keys_match_for(restarted, b)


def test_both_sides_initiating_at_once_after_a_restart_lose_nothing():
    """The restarted side initiates (as the agent does at start) while the peer initiates too,
    and our answer to the peer's IKE_AUTH is lost once: two IKE SAs, and the duplicate-SA rule
    deletes ours only once the peer's CHILD_SA sends here (before: ours was deleted at once
    while it carried our traffic, and the peer dropped what was in flight)."""
    net = Network()
    a, b, a_cfg, b_cfg = pair(net)
    establish(net, a, a_cfg)
    restarted = restarted_with_kept_sas(net, a, a_cfg)
    net.esp_probes = True
    net.drop = first_ike_auth_answer_from(A)
    restarted.endpoint.initiate(a_cfg, (A, 500), (B, 500), net.now, a_cfg.children[0], replaces_kernel_sas=True)
    b.endpoint.initiate(b_cfg, (B, 500), (A, 500), net.now, b_cfg.children[0])
    net.run(10)
    assert net.esp_lost == [], f"lost: {len(net.esp_lost)}"
    assert len(restarted.established) == 1 and len(b.established) == 1
    assert restarted.closed_reasons() == ["superseded"]
    assert keys_match_for(restarted, b)


def both_restarted(a_after: float, drop=None, latency: float = 0.01):
    """Both sides restarted with their SAs kept (the VM's both-sides test): the peer's new
    instance initiates while we are still down (its IKE_SA_INIT retransmitted every 1, 2, 4 s),
    we come up `a_after` s later and initiate too; `drop` may lose datagrams after that, and
    each IKE datagram takes `latency` s (a loaded machine's processing time).
    Every node sends ESP every 0.1 s from then on, each on the newest SA its kernel has."""
    net = Network()
    a, b, a_cfg, b_cfg = pair(net)
    establish(net, a, a_cfg)
    net.latency = latency
    b2 = restarted_with_kept_sas(net, b, b_cfg, name="b2")
    down = [True]
    net.drop = lambda d: down[0] and d.remote[0] == A
    b2.endpoint.initiate(b_cfg, (B, 500), (A, 500), net.now, b_cfg.children[0], replaces_kernel_sas=True)
    net.run(a_after)
    restarted = restarted_with_kept_sas(net, a, a_cfg)
    down[0] = False
    net.drop = drop or (lambda d: False)
    restarted.endpoint.initiate(a_cfg, (A, 500), (B, 500), net.now, a_cfg.children[0], replaces_kernel_sas=True)
    net.run_with_traffic(20)
    return net, restarted, b2


def test_a_peer_restarted_too_and_initiating_first_loses_nothing():
    """Each answers the other's IKE_AUTH as a restarted responder."""
    net, restarted, b2 = both_restarted(1.5)
    assert net.esp_delivered > 10 and net.esp_lost == [], f"lost: {len(net.esp_lost)}"
    assert len(restarted.established) == 1 and len(b2.established) == 1
    assert keys_match_for(restarted, b2) and keys_match_for(b2, restarted)


def test_both_restarted_the_duplicate_goes_only_once_the_winner_sends_on_both_sides():
    """We come up just after the peer's first retransmission: our IKE SA is up first, then
    we answer the peer's. Before: the duplicate rule deleted ours at once, before the
    peer had installed the winner (its IKE_AUTH answer still in flight), and we sent on the
    winner at once: the peer had no SA to send on and dropped what we sent."""
    net, restarted, b2 = both_restarted(1.02)
    assert net.esp_lost == [] and net.esp_gaps == [], f"lost {len(net.esp_lost)}, no SA {len(net.esp_gaps)}"
    assert len(restarted.established) == 1 and len(b2.established) == 1
    assert keys_match_for(restarted, b2) and keys_match_for(b2, restarted)


def test_both_restarted_and_our_answer_to_the_crossing_ike_sa_is_lost():
    """As above with our IKE_AUTH answer to the peer's IKE SA lost once (the peer retransmits
    1 s later): until it arrives, the IKE SA we initiated carries the traffic both ways.
    Before: 1 s of traffic lost in each direction."""
    net, restarted, b2 = both_restarted(2.8, drop=first_ike_auth_answer_from(A))
    assert net.esp_lost == [] and net.esp_gaps == [], f"lost {len(net.esp_lost)}, no SA {len(net.esp_gaps)}"
    assert len(restarted.established) == 1 and len(b2.established) == 1
    assert keys_match_for(restarted, b2) and keys_match_for(b2, restarted)


def keys_match_for(restarted, b) -> bool:
    """The restarted side sends on an SA the peer receives on, with the same key."""
    spi = restarted.sending_spi()
    return spi in b.inbound and b.inbound[spi].keys.inbound == restarted.outbound[spi].keys.outbound


def test_both_restarted_the_loser_of_the_peer_is_never_switched_on_once_the_winner_sends():
    """The duplicate-SA rule deletes the peer's IKE SA (its initiator does, once the winner
    sends there). Here its CHILD_SA still waited for our ESP on our side when the winner
    began to send: it stops waiting instead of switching its outbound half on. Before, it
    switched on after the winner (ESP from the peer on it): the newest SA, so our kernel sent
    there, not on the winner the peer waits to see ESP on, until the peer's Delete came."""
    net, restarted, b2 = both_restarted(0.777, latency=0.05)
    final = set(b2.outbound)
    switched = ["winner" if e.child.outbound_spi in final else "loser" for e in b2.of(ChildSaInstallOutbound)]
    assert switched == ["winner"]
    assert net.esp_lost == [] and net.esp_gaps == []
    assert len(restarted.established) == 1 and len(b2.established) == 1 and b2.closed_reasons() == ["deleted-by-peer"]


@pytest.mark.parametrize("seed", range(16))
def test_both_restarted_at_any_moment_lose_nothing(seed):
    """We come up at a moment drawn from the peer's retransmission schedule, with IKE slow or
    fast (before the fix of fad8ac3: 4 of these 16 lost ESP or had a moment with no SA to send on)."""
    rng = random.Random(seed)
    a_after = rng.choice([rng.uniform(0, 0.05), rng.uniform(0.95, 1.1), rng.uniform(2.9, 3.1), rng.uniform(0, 3)])
    net, restarted, b2 = both_restarted(a_after, latency=rng.choice([0.01, 0.05, 0.2]))
    assert net.esp_lost == [] and net.esp_gaps == [], f"lost {len(net.esp_lost)}, no SA {len(net.esp_gaps)}"
    assert len(restarted.established) == 1 and len(b2.established) == 1
    assert len(restarted.outbound) == 1 and len(b2.outbound) == 1
    assert keys_match_for(restarted, b2) and keys_match_for(b2, restarted)


def children_sending_at_once_after_our_handover(seconds_later: float) -> int:
    """We restarted and replaced our kept SAs (our CHILD_SA sends, the kept ones are gone);
    `seconds_later` the peer initiates another IKE SA with us (say, its liveness check gave
    ours up). Returns how many CHILD_SAs of ours began to send by the time its IKE_AUTH is answered."""
    net = Network()
    a, b, a_cfg, b_cfg = pair(net)
    establish(net, a, a_cfg)
    restarted = restarted_with_kept_sas(net, a, a_cfg)
    kept_out = set(restarted.outbound)
    restarted.endpoint.initiate(a_cfg, (A, 500), (B, 500), net.now, a_cfg.children[0], replaces_kernel_sas=True)
    net.settle()
    assert restarted.sending_spi() not in kept_out and not restarted.outbound.keys() & kept_out
    net.run(seconds_later)
    installed, up = len(restarted.of(ChildSaInstallOutbound)), b.up_count()
    b.endpoint.initiate(b_cfg, (B, 500), (A, 500), net.now, b_cfg.children[0])
    net.settle()
    assert b.up_count() == up + 1  # the peer's IKE SA is up (the duplicate rule then keeps one)
    return len(restarted.of(ChildSaInstallOutbound)) - installed


def test_a_peer_initiated_ike_sa_crossing_ours_during_the_kept_sa_bound_waits_for_the_peers_sign():
    """Within the kept-SA bound the peer's IKE SA may be the crossing one of a peer that
    restarted too: its CHILD_SA waits for the peer's sign (ours carries the traffic)."""
    assert children_sending_at_once_after_our_handover(1.0) == 0


def test_the_record_of_kept_sas_ends_with_the_kept_sa_bound():
    """Past the bound our kept SAs are gone and nothing crosses our replacement any more: a
    later peer-initiated IKE SA's CHILD_SA sends at once, as it would without the restart.
    Before, the record was never cleared and every such CHILD_SA waited for the peer's sign
    (up to the inbound-only limit) for the life of our IKE SA."""
    limit = psk_config("x", "a", "b", None).retransmit.kept_sas_limit()
    assert children_sending_at_once_after_our_handover(limit + 1.0) == 1
