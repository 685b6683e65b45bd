"""Following a NAT rebind reported by the kernel (XFRM MAPPING) in the IKE core."""

from __future__ import annotations

from ipsec_mesh.ike import ChildSaEncapChanged, ExchangeType, IkeSaClosed, single_peer_lookup
from ipsec_mesh.ike import message as codec
from tests.support.ikesim import A, B, Network, child_config, establish, psk_config

PUBLIC = "192.0.2.7"


def natted_pair():
    """a behind a NAT (public 192.0.2.7, ports + 10000), b on a public address."""
    net = Network()
    net.nat[A] = (PUBLIC, 10000)
    a_cfg = psk_config("to-b", "a.mesh.test", "b.mesh.test", child_config(A, B))
    b_cfg = psk_config("to-a", "b.mesh.test", "a.mesh.test", child_config(B, PUBLIC))
    a = net.add("a", A, single_peer_lookup(a_cfg))
    b = net.add("b", B, single_peer_lookup(b_cfg))
    establish(net, a, a_cfg)
    return net, a, b


def test_a_port_rebind_moves_the_ike_sa_and_every_child_and_checks_liveness():
    net, a, b = natted_pair()
    sa_b = b.established[0]
    assert sa_b.remote == (PUBLIC, 14500)
    spi = next(iter(b.inbound))
    net.nat[A] = (PUBLIC, 30000)  # the NAT rebinds: a's port 4500 now shows as 34500
    sent_before = len(net.delivered)
    assert b.endpoint.nat_mapping_changed(spi, (PUBLIC, 34500), net.now) == "followed"
    net.settle()
    assert sa_b.remote == (PUBLIC, 34500)
    changed = b.of(ChildSaEncapChanged)
    assert [e.child.inbound_spi for e in changed] == [spi]
    assert changed[0].child.encap.remote_port == 34500 and changed[0].child.encap.local_port == 4500
    assert b.inbound[spi].encap.remote_port == 34500
    assert next(iter(b.outbound.values())).encap.remote_port == 34500
    # A liveness check went to the new port, and a answered it.
    to_a = [d for d in net.delivered[sent_before:] if d.remote == (PUBLIC, 34500)]
    assert to_a and codec.peek_header(to_a[0].data).exchange == ExchangeType.INFORMATIONAL
    assert not b.of(IkeSaClosed) and b.established
    # Reported again (rate-limited kernel events repeat): nothing more to do.
    assert b.endpoint.nat_mapping_changed(spi, (PUBLIC, 34500), net.now) == "unchanged"


def test_mappings_that_must_not_be_followed():
    net, a, b = natted_pair()
    spi_b = next(iter(b.inbound))
    sa_b = b.established[0]
    assert b.endpoint.nat_mapping_changed(spi_b, ("198.51.100.9", 14500), net.now) == "address-changed"
    assert b.endpoint.nat_mapping_changed(0xDEAD, (PUBLIC, 1), net.now) == "unknown-sa"
    # a's peer (b) is not behind a NAT: a port change of b is not a NAT rebind.
    spi_a = next(iter(a.inbound))
    assert a.endpoint.nat_mapping_changed(spi_a, (B, 4501), net.now) == "not-natted"
    net.settle()
    assert sa_b.remote == (PUBLIC, 14500) and not b.of(ChildSaEncapChanged) and not a.of(ChildSaEncapChanged)
