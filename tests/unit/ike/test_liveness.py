"""Dead peer detection counts inbound ESP as a sign of life, not only IKE (issue 14)."""

from __future__ import annotations

from ipsec_mesh.ike.constants import ExchangeType
from ipsec_mesh.ike.events import ChildSaDeleted, ChildSaInboundQuery
from tests.support.ikesim import Network
from tests.unit.ike.test_engine import B, establish, exchanges, pair

DPD = 5.0
DOWN = 40 * DPD  # far longer than the check and all its retransmissions (~ DPD + 80 s)


class InboundCounter:
    """The kernel's inbound byte count: grows while the peer's kernel sends ESP."""

    def __init__(self):
        self.value = 0
        self.flowing = True

    def __call__(self, spi: int) -> int:
        if self.flowing:
            self.value += 100
        return self.value


def sidecar_b_down(net: Network, b) -> None:
    """b's IKE process is gone (nothing in, nothing out); its kernel may still send ESP."""
    net.drop = lambda d: B in (d.local[0], d.remote[0])
    b.endpoint.next_timer = lambda: None


def setup(counter: InboundCounter | None):
    net = Network()
    a, b, a_cfg, _ = pair(net, a_kwargs={"dpd_delay": DPD})
    if counter is not None:
        a.inbound_bytes = counter
    establish(net, a, a_cfg)
    return net, a, b


def test_inbound_esp_keeps_the_sas_while_the_peers_sidecar_is_down():
    counter = InboundCounter()
    net, a, b = setup(counter)
    informational = exchanges(net).count(ExchangeType.INFORMATIONAL)
    sidecar_b_down(net, b)
    net.run(DOWN)
    assert a.established and a.inbound and a.outbound and not a.of(ChildSaDeleted)
    assert not a.closed_reasons()
    assert len(a.of(ChildSaInboundQuery)) >= DOWN / DPD - 1  # asked about once per DPD delay
    assert exchanges(net).count(ExchangeType.INFORMATIONAL) == informational  # no check was needed


def test_when_esp_stops_too_the_peer_is_found_dead():
    counter = InboundCounter()
    net, a, b = setup(counter)
    sidecar_b_down(net, b)
    net.run(3 * DPD)
    assert a.established
    counter.flowing = False  # the peer's pod is gone, kernel and all
    net.run(DOWN)
    assert a.closed_reasons() == ["dead-peer"] and not a.inbound and not a.outbound


def test_a_live_peer_with_esp_flowing_needs_no_liveness_check():
    net, a, b = setup(InboundCounter())
    b.inbound_bytes = InboundCounter()  # both ways
    before = exchanges(net).count(ExchangeType.INFORMATIONAL)
    net.run(DOWN)
    assert a.established and b.established
    assert exchanges(net).count(ExchangeType.INFORMATIONAL) == before


def test_without_esp_a_live_peer_still_answers_the_check():
    counter = InboundCounter()
    counter.flowing = False
    net, a, b = setup(counter)
    net.run(12 * DPD)
    assert a.established and b.established
    assert exchanges(net).count(ExchangeType.INFORMATIONAL) >= 10  # the checks went out


def test_without_answers_liveness_rests_on_ike_alone():
    """Data plane `none`: queries go unanswered, the check goes out as before."""
    net, a, b = setup(None)
    sidecar_b_down(net, b)
    net.run(DOWN)
    assert a.closed_reasons() == ["dead-peer"]
    assert a.of(ChildSaInboundQuery)  # it asked once per due check, then checked


def test_an_answer_for_an_unknown_sa_changes_nothing():
    net, a, b = setup(InboundCounter())
    assert a.endpoint.child_inbound_bytes(0xDEAD, 10**6, net.now) == "unknown-sa"
    spi = next(iter(a.inbound))
    assert a.endpoint.child_inbound_bytes(spi, 0, net.now) == "silent"
    assert a.endpoint.child_inbound_bytes(spi, 1, net.now) == "alive"
    assert a.endpoint.child_inbound_bytes(spi, 1, net.now) == "silent"
