"""Hostile input into an endpoint with an established SA: nothing escapes, nothing is lost.

Two kinds of input: mutations of real datagrams (unauthenticated garbage, which must be
dropped), and well-formed messages that are correctly encrypted with the peer's keys
but carry random payloads (an authenticated but misbehaving peer), which must be answered
or refused without losing the SA.
"""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsec_mesh.ike import message as codec
from ipsec_mesh.ike import single_peer_lookup
from ipsec_mesh.ike.constants import ExchangeType, ProtocolId, TransformType, TsType
from ipsec_mesh.ike.payloads import (
    DeletePayload,
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Proposal,
    SaPayload,
    TrafficSelector,
    Transform,
    TsiPayload,
    TsrPayload,
    UnknownPayload,
    VendorIdPayload,
)
from tests.support.ikesim import Network, child_config, keys_match, psk_config

A, B = "10.0.0.1", "10.0.0.2"
_state: dict = {}


def world():
    """One established pair for the whole module (hypothesis examples share it)."""
    if "net" not in _state:
        net = Network()
        a_cfg = psk_config("to-b", "a.mesh.test", "b.mesh.test", child_config(A, B), dpd_delay=0)
        b_cfg = psk_config("to-a", "b.mesh.test", "a.mesh.test", child_config(B, A), dpd_delay=0)
        a = net.add("a", A, single_peer_lookup(a_cfg))
        b = net.add("b", B, single_peer_lookup(b_cfg))
        a.endpoint.initiate(a_cfg, (A, 500), (B, 500), net.now, a_cfg.children[0])
        net.settle()
        a.endpoint.rekey_child(next(iter(a.inbound)), net.now)
        net.settle()
        _state.update(net=net, a=a, b=b, samples=[d.data for d in net.delivered])
    return _state["net"], _state["a"], _state["b"]


def b_is_healthy() -> bool:
    net, a, b = world()
    return len(b.established) == 1 and len(b.inbound) == 1 and b.established[0].state.value == "established"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, 50), cut=st.integers(0, 2000), flips=st.lists(st.tuples(st.integers(0, 2000),
       st.integers(1, 255)), max_size=4), junk=st.binary(max_size=64))
def test_mutated_datagrams_are_dropped_without_harm(index, cut, flips, junk):
    net, a, b = world()
    samples = _state["samples"]
    data = bytearray(samples[index % len(samples)])
    for pos, mask in flips:
        if data:
            data[pos % len(data)] ^= mask
    data = bytes(data[:cut]) + junk if cut < len(data) else bytes(data) + junk
    b.endpoint.receive(data, (B, 500), (A, 500), net.now)
    b.endpoint.receive(bytes(data), (B, 4500), (A, 4500), net.now)
    b.endpoint.datagrams()
    assert b_is_healthy()


addresses = st.ip_addresses(v=4).map(str)
selectors = st.builds(lambda s, e, p: TrafficSelector(TsType.TS_IPV4_ADDR_RANGE, p, 0, 65535,
                                                      ipaddress.ip_address(min(s, e, key=ipaddress.ip_address)),
                                                      ipaddress.ip_address(max(s, e, key=ipaddress.ip_address))),
                      addresses, addresses, st.integers(0, 255))
transforms = st.builds(Transform, st.sampled_from(list(TransformType)), st.integers(0, 40),
                       st.one_of(st.none(), st.sampled_from([128, 192, 256])))
proposals = st.builds(lambda n, proto, spi, ts: Proposal(n, proto, spi, tuple(ts)), st.integers(1, 3),
                      st.sampled_from([ProtocolId.ESP, ProtocolId.IKE]),
                      st.sampled_from([b"", b"\x01\x02\x03\x04", bytes(range(8))]),
                      st.lists(transforms, max_size=6))
payload = st.one_of(
    st.builds(NotifyPayload, st.integers(1, 65535), st.sampled_from(list(ProtocolId)),
              st.sampled_from([b"", b"\x00\x00\x00\x01", bytes(8)]), st.binary(max_size=16)),
    st.builds(lambda spis: DeletePayload(ProtocolId.ESP, spis), st.lists(st.binary(min_size=4, max_size=4),
                                                                          max_size=3)),
    st.builds(lambda ps: SaPayload(ps), st.lists(proposals, min_size=1, max_size=3)),
    st.builds(NoncePayload, st.binary(min_size=16, max_size=64)),
    st.builds(KePayload, st.sampled_from([14, 19, 31, 36, 99]), st.binary(max_size=70)),
    st.builds(lambda s: TsiPayload(s), st.lists(selectors, min_size=1, max_size=2)),
    st.builds(lambda s: TsrPayload(s), st.lists(selectors, min_size=1, max_size=2)),
    st.builds(VendorIdPayload, st.binary(max_size=16)),
    st.builds(UnknownPayload, st.integers(60, 200), st.booleans(), st.binary(max_size=16)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exchange=st.sampled_from([ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL,
                                 ExchangeType.IKE_AUTH, ExchangeType.IKE_SA_INIT, 99]),
       payloads=st.lists(payload, max_size=6), response=st.booleans(), mid_offset=st.integers(-1, 2))
def test_authenticated_hostile_requests_never_cost_the_sa(exchange, payloads, response, mid_offset):
    net, a, b = world()
    sa_a, sa_b = a.established[0], b.established[0]
    mid = (sa_b.tasks.peer_mid if not response else sa_b.tasks.next_mid) + mid_offset
    msg = Message(sa_a.spi_i, sa_a.spi_r, exchange, True, response, max(mid, 0), payloads)
    try:
        data = codec.encode(msg, sa_a.protect_out)
    except (ValueError, OverflowError):
        return  # not encodable (e.g. a selector range the codec refuses to build)
    b.endpoint.receive(data, (B, 500), (A, 500), net.now)
    answers = b.endpoint.datagrams()
    _state["answered"] = _state.get("answered", 0) + len(answers)
    for d in answers:
        a.endpoint.receive(d.data, (A, 500), (B, 500), net.now)
        a.endpoint.datagrams()
    for node in (a, b):
        for event in node.endpoint.events():
            node.apply(event)
    assert b.established, "the SA must survive any authenticated request except an IKE delete"
    b.endpoint.tick(net.now)
    b.endpoint.datagrams()


def test_after_the_fuzzing_the_sa_still_rekeys():
    net, a, b = world()
    # The hostile requests reached the state machine (b answered many of them).
    assert _state.get("answered", 0) > 20  # of 300 examples; typically 40-80
    sa_a, sa_b = a.established[0], b.established[0]
    sa_a.tasks.next_mid = sa_b.tasks.peer_mid  # the fuzzer spoke for a; a resumes after the last ID b took
    spi = next(iter(a.inbound))
    assert a.endpoint.rekey_child(spi, net.now)
    net.run(30)
    assert a.established and b.established
    assert spi not in a.inbound and len(a.inbound) == 1 and keys_match(a, b)
