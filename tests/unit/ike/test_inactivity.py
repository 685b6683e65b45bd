"""Idle CHILD_SAs are retired (issue 14): the core decides from the kernel's packet counts."""

from __future__ import annotations

from ipsec_mesh.ike.config import single_peer_lookup
from ipsec_mesh.ike.events import ChildSaActivityQuery, ChildSaDeleted, IkeSaClosed
from tests.support.ikesim import A, B, Network, child_config, establish, psk_config

IDLE = 60.0


def idle_pair(*, b_inactivity: float = IDLE):
    net = Network()
    a_cfg = psk_config("to-b", "a.mesh.test", "b.mesh.test", child_config(A, B, inactivity=IDLE))
    b_cfg = psk_config("to-a", "b.mesh.test", "a.mesh.test", child_config(B, A, inactivity=b_inactivity))
    a = net.add("a", A, single_peer_lookup(a_cfg))
    b = net.add("b", B, single_peer_lookup(b_cfg))
    return net, a, b, a_cfg


class Counter:
    """A kernel packet count per CHILD_SA that the test moves."""

    def __init__(self):
        self.value = 0

    def __call__(self, spi: int) -> int:
        return self.value


def test_an_idle_pair_is_torn_down_after_the_inactivity_time_and_not_before():
    net, a, b, a_cfg = idle_pair()
    a.packets = b.packets = Counter()
    establish(net, a, a_cfg)
    start = net.now
    net.run(IDLE - 1)
    assert a.established and b.established and a.of(ChildSaActivityQuery)
    net.run(IDLE / 2 + 2)
    assert not a.established and not b.established
    assert not a.endpoint.sas and not b.endpoint.sas
    assert not a.inbound and not a.outbound and not b.inbound and not b.outbound
    closed = {e.reason for e in a.of(IkeSaClosed) + b.of(IkeSaClosed)}
    assert "inactive" in closed, closed
    assert net.now - start <= IDLE * 1.5 + 1


def test_traffic_keeps_it_and_the_last_packet_starts_the_count():
    net, a, b, a_cfg = idle_pair()
    counter = Counter()
    a.packets = b.packets = counter
    establish(net, a, a_cfg)
    for _ in range(20):  # 10 inactivity times of traffic: a packet every 7 s
        counter.value += 1
        net.run(7)
    assert a.established and b.established and not a.of(ChildSaDeleted)
    net.run(IDLE - 1)
    assert a.established, "deleted sooner than the inactivity time after the last packet"
    net.run(IDLE)
    assert not a.established and not b.established


def test_only_the_idle_child_goes_when_another_carries_traffic():
    net, a, b, a_cfg = idle_pair()
    establish(net, a, a_cfg)
    busy = next(iter(a.inbound))
    sa = a.established[0]
    second = child_config(A, B, name="other", inactivity=IDLE)
    from ipsec_mesh.ike.exchanges.create_child import ChildCreateTask

    sa.queue(ChildCreateTask(second), net.now)
    a.endpoint._touch(sa)
    a.endpoint._collect()
    net.settle()
    assert len(a.inbound) == 2
    counts = {busy: 0}

    def packets(spi):
        counts[busy] = counts.get(busy, 0) + 1  # `busy` sends between any two queries
        return counts[spi] if spi in counts else 0

    a.packets = packets
    net.run(IDLE * 2)
    assert a.established and b.established
    assert list(a.inbound) == [busy]
    assert [e.reason for e in a.of(ChildSaDeleted)] == ["inactive"]


def test_without_answers_nothing_is_retired():
    """Data plane `none`: no kernel to ask, so nothing is ever found idle."""
    net, a, b, a_cfg = idle_pair()
    establish(net, a, a_cfg)
    net.run(IDLE * 5)
    assert a.established and b.established and a.of(ChildSaActivityQuery)


def test_the_next_packet_after_retirement_negotiates_again():
    net, a, b, a_cfg = idle_pair()
    a.packets = b.packets = Counter()
    establish(net, a, a_cfg)
    net.run(IDLE * 2)
    assert not a.established
    a.endpoint.acquire(a_cfg, (A, 500), (B, 500), net.now, a_cfg.children[0])  # the kernel's ACQUIRE
    net.settle()
    assert a.established and b.established and len(a.inbound) == 1 and len(b.inbound) == 1


def test_a_packet_during_the_retirement_gets_new_sas_and_never_an_sa_being_deleted():
    """The outbound halves go before the Delete leaves: a packet in that round trip meets
    the policy (the kernel holds it and raises an ACQUIRE), not an SA the peer removes."""
    from ipsec_mesh.ike.events import ChildSaOutboundRetired

    net, a, b, a_cfg = idle_pair(b_inactivity=0)  # only a retires
    a.packets = Counter()
    establish(net, a, a_cfg)
    old = next(iter(a.outbound))
    for _ in range(200):
        net.step()
        if a.of(ChildSaOutboundRetired):
            break
    assert a.sending_spi() is None and old not in a.outbound  # nothing to send on: ACQUIRE
    assert b.established  # the Delete has not arrived yet
    a.endpoint.acquire(a_cfg, (A, 500), (B, 500), net.now, a_cfg.children[0])
    net.settle()
    assert len(a.established) == 1 and len(b.established) == 1
    assert a.sending_spi() is not None and a.sending_spi() != old
    assert a.sending_spi() in b.inbound
