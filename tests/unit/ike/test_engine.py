"""The IKE engine against itself, in memory: every exchange, both roles, loss and collisions."""

from __future__ import annotations

import pytest

from ipsec_mesh.ike import (
    ChildSaDeleted,
    ChildSaInstallInbound,
    ChildSaInstallOutbound,
    ExchangeType,
    IkeSaEstablished,
    NegotiationFailed,
    NotifyType,
    single_peer_lookup,
)
from ipsec_mesh.ike import message as codec
from tests.support.ikesim import PSK, A, B, Network, child_config, establish, exchanges, keys_match, pair, psk_config


def test_psk_establishes_ike_and_child_sa():
    net = Network()
    a, b, a_cfg, _ = pair(net)
    establish(net, a, a_cfg)
    assert len(a.established) == 1 and len(b.established) == 1
    assert a.up_count() == 1 and b.up_count() == 1
    up_a = a.of(IkeSaEstablished)[0]
    assert up_a.remote_id == "fqdn:b.mesh.test" or up_a.remote_id.endswith("b.mesh.test")
    assert len(a.inbound) == 1 and len(a.outbound) == 1 and len(b.inbound) == 1
    assert keys_match(a, b)
    info = next(iter(a.inbound.values()))
    assert info.mode == "transport" and info.esn and info.encap is None
    # No NAT between them, and neither side may believe there is one.
    assert next(iter(b.inbound.values())).encap is None
    assert not any(sa.nat_local or sa.nat_remote for n in (a, b) for sa in n.established)
    assert exchanges(net) == [ExchangeType.IKE_SA_INIT] * 2 + [ExchangeType.IKE_INTERMEDIATE] * 2 \
        + [ExchangeType.IKE_AUTH] * 2


ALGORITHMS = [
    ("aes128gcm16-prfsha256-x25519", "aes128gcm16-esn"),
    ("aes256gcm16-prfsha384-ecp256", "aes256gcm16-noesn"),
    ("chacha20poly1305-prfsha512-ecp384", "chacha20poly1305-esn"),
    ("aes256gcm16-prfsha256-modp2048", "aes256gcm16-esn"),
    ("chacha20poly1305-prfsha256-x25519-ke1_mlkem768", "chacha20poly1305-esn"),
    ("aes256gcm16-prfsha256-ecp256-ke1_mlkem768", "aes128gcm16-esn"),
]


@pytest.mark.parametrize("ike,esp", ALGORITHMS)
def test_every_algorithm_establishes_with_matching_keys(ike, esp):
    net = Network()
    a_child = child_config(A, B, esp=esp)
    a, b, a_cfg, _ = pair(net, a_kwargs={"ike": ike}, b_kwargs={"ike": ike}, a_child=a_child,
                          b_child=child_config(B, A, esp=esp))
    establish(net, a, a_cfg)
    up = a.of(IkeSaEstablished)[0]
    assert up.algorithm == b.of(IkeSaEstablished)[0].algorithm
    assert up.algorithm.split("-")[0] == ike.split("-")[0]
    assert ("mlkem768" in up.algorithm) == ("mlkem768" in ike)
    info = next(iter(a.inbound.values()))
    assert info.algorithm.startswith(esp.split("-")[0]) and info.esn == esp.endswith("-esn")
    assert keys_match(a, b)
    # The intermediate exchange happens exactly when an additional key exchange was agreed.
    assert (ExchangeType.IKE_INTERMEDIATE in exchanges(net)) == ("ke1_" in ike)


def test_hybrid_falls_back_to_classic_when_the_responder_has_no_mlkem():
    net = Network()
    a, b, a_cfg, _ = pair(net, b_kwargs={"ike": "aes256gcm16-prfsha256-x25519"})
    establish(net, a, a_cfg)
    assert a.of(IkeSaEstablished)[0].algorithm == "aes256gcm16-prfsha256-x25519"
    assert ExchangeType.IKE_INTERMEDIATE not in exchanges(net)


def test_no_common_proposal_fails_cleanly_on_both_ends():
    net = Network()
    a, b, a_cfg, _ = pair(net, a_kwargs={"ike": "aes128gcm16-prfsha512-ecp384"},
                          b_kwargs={"ike": "aes256gcm16-prfsha256-x25519"})
    establish(net, a, a_cfg)
    assert not a.established and not b.established
    fail_a = a.of(NegotiationFailed)[0]
    assert fail_a.notify == NotifyType.NO_PROPOSAL_CHOSEN and "NO_PROPOSAL_CHOSEN" in fail_a.reason
    fail_b = b.of(NegotiationFailed)[0]
    assert "no common proposal" in fail_b.reason and "aes128gcm16" in fail_b.reason


def test_invalid_ke_payload_makes_the_initiator_retry_with_the_wanted_group():
    net = Network()
    a, b, a_cfg, _ = pair(net, a_kwargs={"ike": "aes256gcm16-prfsha256-x25519-ecp256"},
                          b_kwargs={"ike": "aes256gcm16-prfsha256-ecp256"})
    establish(net, a, a_cfg)
    assert a.of(IkeSaEstablished)[0].algorithm == "aes256gcm16-prfsha256-ecp256"
    assert exchanges(net)[:4] == [ExchangeType.IKE_SA_INIT] * 4


def test_wrong_psk_fails_with_authentication_failed_on_both_ends():
    net = Network()
    a, b, a_cfg, _ = pair(net, b_kwargs={"psk": b"another key entirely, 32 bytes!!"})
    establish(net, a, a_cfg)
    assert not a.established and not b.established
    assert a.of(NegotiationFailed)[0].notify == NotifyType.AUTHENTICATION_FAILED
    assert b.of(NegotiationFailed)[0].notify == NotifyType.AUTHENTICATION_FAILED
    assert not a.inbound and not b.inbound


def test_psk_rotation_overlap_accepts_either_key():
    net = Network()
    new = b"the next key in the rotation, 32"
    # During a rotation both ends accept both keys; a already signs with the new one.
    a, b, a_cfg, _ = pair(net, a_kwargs={"psk": new, "peer_psks": (PSK, new)}, b_kwargs={"peer_psks": (PSK, new)})
    establish(net, a, a_cfg)
    assert a.established and b.established


def test_wrong_identity_is_refused():
    net = Network()
    a_cfg = psk_config("to-b", "mallory.mesh.test", "b.mesh.test", child_config(A, B))
    b_cfg = psk_config("to-a", "b.mesh.test", "a.mesh.test", child_config(B, A))
    a = net.add("a", A, single_peer_lookup(a_cfg))
    b = net.add("b", B, single_peer_lookup(b_cfg))
    establish(net, a, a_cfg)
    assert not b.established
    assert "mallory.mesh.test" in b.of(NegotiationFailed)[0].reason


def test_unknown_peer_is_refused_without_state():
    net = Network()
    a_cfg = psk_config("to-b", "a.mesh.test", "b.mesh.test", child_config(A, B))
    b_cfg = psk_config("to-a", "b.mesh.test", "a.mesh.test", child_config(B, A))
    a = net.add("a", A, single_peer_lookup(a_cfg))
    b = net.add("b", B, single_peer_lookup(b_cfg, ["10.9.9.9"]))
    establish(net, a, a_cfg)
    net.run(30)
    assert not b.endpoint.sas and b.endpoint.counters["refused_unknown_peer"] >= 1
    assert a.closed_reasons() == ["timeout"]


def test_childless_ike_sa():
    net = Network()
    a, b, a_cfg, _ = pair(net, a_kwargs={"childless": "force"})
    establish(net, a, a_cfg)
    assert a.established and b.established and not a.inbound and not b.inbound


def test_child_proposal_mismatch_keeps_the_ike_sa():
    net = Network()
    a, b, a_cfg, _ = pair(net, a_child=child_config(A, B, esp="aes128gcm16-esn"),
                          b_child=child_config(B, A, esp="chacha20poly1305-esn"))
    establish(net, a, a_cfg)
    assert a.established and b.established and not a.inbound and not b.inbound
    from ipsec_mesh.ike import ChildSaFailed
    assert a.of(ChildSaFailed)[0].notify == NotifyType.NO_PROPOSAL_CHOSEN


def test_traffic_selectors_outside_the_config_are_refused():
    net = Network()
    a, b, a_cfg, _ = pair(net, a_child=child_config(A, "10.0.0.99"))
    establish(net, a, a_cfg)
    from ipsec_mesh.ike import ChildSaFailed
    assert a.established and a.of(ChildSaFailed)[0].notify == NotifyType.TS_UNACCEPTABLE


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_child_rekey_either_side_keeps_keys_and_order(initiator):
    net = Network()
    a, b, a_cfg, _ = pair(net)
    establish(net, a, a_cfg)
    node = a if initiator == "a" else b
    old_spi = next(iter(node.inbound))
    assert node.endpoint.rekey_child(old_spi, net.now)
    net.settle()
    assert len(a.inbound) == 1 and len(b.inbound) == 1 and old_spi not in node.inbound
    assert keys_match(a, b)
    for n in (a, b):
        kinds = [type(e).__name__ for e in n.events if type(e) in (ChildSaInstallInbound, ChildSaInstallOutbound,
                                                                   ChildSaDeleted)]
        # Zero-loss order: new inbound before new outbound, old removed last.
        assert kinds == ["ChildSaInstallInbound", "ChildSaInstallOutbound", "ChildSaInstallInbound",
                         "ChildSaInstallOutbound", "ChildSaDeleted"]
        assert n.of(ChildSaDeleted)[0].reason == "rekeyed"
        assert n.of(ChildSaInstallInbound)[1].rekey_of is not None


def test_child_rekey_collision_leaves_exactly_one_child():
    net = Network()
    a, b, a_cfg, _ = pair(net)
    establish(net, a, a_cfg)
    a.endpoint.rekey_child(next(iter(a.inbound)), net.now)
    b.endpoint.rekey_child(next(iter(b.inbound)), net.now)
    net.settle()
    net.run(10)
    assert len(a.inbound) == 1 and len(b.inbound) == 1 and len(a.outbound) == 1 and len(b.outbound) == 1
    assert keys_match(a, b)
    sa_a, sa_b = a.established[0], b.established[0]
    assert len(sa_a.children) == 1 and len(sa_b.children) == 1


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_ike_rekey_either_side_moves_children(initiator):
    net = Network()
    a, b, a_cfg, _ = pair(net)
    establish(net, a, a_cfg)
    node = a if initiator == "a" else b
    old = node.established[0].label
    child_spis = set(a.inbound)
    assert node.endpoint.rekey_ike(old, net.now)
    net.settle()
    assert len(a.established) == 1 and len(b.established) == 1
    assert a.established[0].label == b.established[0].label != old
    assert set(a.inbound) == child_spis and keys_match(a, b)
    assert "rekeyed" in a.closed_reasons() and "rekeyed" in b.closed_reasons()
    # The new IKE SA works: a CHILD_SA rekey over it completes.
    node.endpoint.rekey_child(next(iter(node.inbound)), net.now)
    net.settle()
    assert keys_match(a, b) and len(a.inbound) == 1


def test_ike_rekey_collision_leaves_exactly_one_ike_sa():
    net = Network()
    a, b, a_cfg, _ = pair(net)
    establish(net, a, a_cfg)
    a.endpoint.rekey_ike(a.established[0].label, net.now)
    b.endpoint.rekey_ike(b.established[0].label, net.now)
    net.settle()
    net.run(60)
    assert len(a.established) == 1 and len(b.established) == 1
    assert a.established[0].label == b.established[0].label
    assert len(a.established[0].children) == 1 and keys_match(a, b)


@pytest.mark.parametrize("deleter", ["a", "b"])
def test_delete_child_either_side(deleter):
    net = Network()
    a, b, a_cfg, _ = pair(net)
    establish(net, a, a_cfg)
    node = a if deleter == "a" else b
    node.endpoint.delete_child(next(iter(node.inbound)), net.now)
    net.settle()
    assert not a.inbound and not b.inbound and not a.outbound and not b.outbound
    assert a.established and b.established


@pytest.mark.parametrize("deleter", ["a", "b"])
def test_delete_ike_either_side(deleter):
    net = Network()
    a, b, a_cfg, _ = pair(net)
    establish(net, a, a_cfg)
    node = a if deleter == "a" else b
    node.endpoint.delete_ike(node.established[0].label, net.now)
    net.settle()
    assert not a.endpoint.sas and not b.endpoint.sas
    assert not a.inbound and not b.inbound
    other = b if deleter == "a" else a
    assert other.closed_reasons() == ["deleted-by-peer"]


def test_dead_peer_detection_closes_the_sa():
    net = Network()
    a, b, a_cfg, _ = pair(net, a_kwargs={"dpd_delay": 5.0})
    establish(net, a, a_cfg)
    net.drop = lambda d: d.remote[0] == A  # b's answers are lost from now on
    net.run(60)
    assert a.closed_reasons() == ["dead-peer"] and not a.inbound


def test_dpd_keeps_a_live_sa():
    net = Network()
    a, b, a_cfg, _ = pair(net, a_kwargs={"dpd_delay": 5.0})
    establish(net, a, a_cfg)
    net.run(60)
    assert a.established and b.established
    assert exchanges(net).count(ExchangeType.INFORMATIONAL) >= 10


def test_retransmission_survives_loss_of_first_messages():
    net = Network()
    a, b, a_cfg, _ = pair(net)
    lost = {A: 0, B: 0}
    budget = {A: 2, B: 1}  # with 3 retransmissions, 4 tries: 2 lost requests + 1 lost response fit

    def drop_first_few(d):
        sender = d.local[0]
        if lost[sender] < budget[sender]:
            lost[sender] += 1
            return True
        return False

    net.drop = drop_first_few
    establish(net, a, a_cfg)
    net.run(30)
    assert a.established and b.established and keys_match(a, b)
    assert len(b.endpoint.sas) == 1


def test_duplicated_and_reordered_datagrams_make_one_sa():
    net = Network(seed=7)
    a, b, a_cfg, _ = pair(net)
    net.duplicate = lambda d: True
    net.reorder = True
    establish(net, a, a_cfg)
    net.run(20)
    assert len(a.established) == 1 and len(b.established) == 1 and keys_match(a, b)
    assert a.up_count() == 1 and b.up_count() == 1


def test_give_up_after_retransmissions():
    net = Network()
    a, b, a_cfg, _ = pair(net)
    net.drop = lambda d: True
    establish(net, a, a_cfg)
    net.run(120)
    assert a.closed_reasons() == ["timeout"]
    sent = [d for d in a.endpoint.datagrams()]
    assert not sent and not a.endpoint.sas


def test_simultaneous_initiation_ends_with_one_ike_sa():
    net = Network()
    a, b, a_cfg, b_cfg = pair(net)
    a.endpoint.initiate(a_cfg, (A, 500), (B, 500), net.now, a_cfg.children[0])
    b.endpoint.initiate(b_cfg, (B, 500), (A, 500), net.now, b_cfg.children[0])
    net.settle()
    net.run(30)
    assert len(a.established) == 1 and len(b.established) == 1
    assert a.established[0].label == b.established[0].label
    assert len(a.inbound) == 1 and len(b.inbound) == 1 and keys_match(a, b)
    assert "superseded" in a.closed_reasons() + b.closed_reasons()


def test_cookies_when_forced():
    net = Network()
    a, b, a_cfg, _ = pair(net, endpoint_kwargs={"cookie_threshold": 0})
    establish(net, a, a_cfg)
    assert a.established and b.established
    assert b.endpoint.counters["cookies_sent"] == 1 and b.endpoint.counters["cookie_valid"] == 1
    assert exchanges(net)[:4] == [ExchangeType.IKE_SA_INIT] * 4


def test_flood_of_ike_sa_init_is_bounded_and_legit_peer_still_connects():
    from ipsec_mesh.ike.constants import ProtocolId
    from ipsec_mesh.ike.payloads import KePayload, Message, NoncePayload, SaPayload
    from ipsec_mesh.ike.proposals import engine_default_ike_proposals
    net = Network()
    a, b, a_cfg, _ = pair(net, endpoint_kwargs={"cookie_threshold": 5, "cookie_threshold_per_source": 100,
                                                "half_open_limit": 20})
    proposal = engine_default_ike_proposals()[1].to_payload(1)
    from ipsec_mesh.ike.keyexchange import start_key_exchange
    ke = start_key_exchange(31).public_data
    for i in range(200):
        flood = Message(i.to_bytes(8, "big"), bytes(8), ExchangeType.IKE_SA_INIT, True, False, 0,
                        [SaPayload([proposal]), KePayload(31, ke), NoncePayload(bytes(32))])
        b.endpoint.receive(codec.encode(flood), (B, 500), (A, 40000 + i), net.now)
    assert len(b.endpoint.sas) <= 5
    assert b.endpoint.counters["cookies_sent"] >= 190
    b.endpoint.datagrams()
    establish(net, a, a_cfg)
    assert a.established
    del ProtocolId


def test_fragmentation_of_large_messages():
    net = Network()
    a, b, a_cfg, _ = pair(net, a_kwargs={"fragment_size": 576}, b_kwargs={"fragment_size": 576})
    establish(net, a, a_cfg)
    assert a.established and b.established
    # ML-KEM-768's 1184-byte key cannot fit in 576 bytes: IKE_INTERMEDIATE went in fragments.
    intermediate = [d for d in net.delivered if codec.peek_header(d.data).exchange == ExchangeType.IKE_INTERMEDIATE]
    assert len(intermediate) > 2 and all(len(d.data) <= 576 - 28 for d in intermediate)


def test_forced_udp_encapsulation_moves_to_4500():
    net = Network()
    a, b, a_cfg, _ = pair(net, a_kwargs={"force_encap": True})
    establish(net, a, a_cfg)
    info = next(iter(a.inbound.values()))
    assert info.encap is not None and info.encap.local_port == 4500 and info.encap.remote_port == 4500
    assert next(iter(b.inbound.values())).encap is not None
    auth = [d for d in net.delivered if codec.peek_header(d.data).exchange == ExchangeType.IKE_AUTH]
    assert all(d.local[1] == 4500 and d.remote[1] == 4500 for d in auth)


def test_no_nat_is_seen_by_either_side_without_one():
    # RFC 7296 §2.23: the hashes in the IKE_SA_INIT request cover SPIr = 0, as in its header.
    net = Network()
    a, b, a_cfg, _ = pair(net)
    establish(net, a, a_cfg)
    for node in (a, b):
        sa = node.established[0]
        assert not sa.nat_local and not sa.nat_remote
        assert next(iter(node.inbound.values())).encap is None


def test_nat_between_peers_is_detected_and_keepalives_flow():
    net = Network()
    net.nat[A] = ("192.0.2.7", 10000)
    a_cfg = psk_config("to-b", "a.mesh.test", "b.mesh.test", child_config(A, B), keepalive_interval=5.0)
    # b knows a by the address it sees: the NAT's (RFC 7296 §2.23.1 substitution in transport mode).
    b_cfg = psk_config("to-a", "b.mesh.test", "a.mesh.test", child_config(B, "192.0.2.7"))
    from ipsec_mesh.ike.config import single_peer_lookup as lookup
    a = net.add("a", A, lookup(a_cfg))
    b = net.add("b", B, lookup(b_cfg))
    establish(net, a, a_cfg)
    assert a.established and b.established
    sa_a, sa_b = a.established[0], b.established[0]
    assert sa_a.nat_local and not sa_a.nat_remote and sa_b.nat_remote
    assert next(iter(b.inbound.values())).encap.remote_port == 14500
    # Each side installs its own view: a its private address, b the NAT's public one.
    assert str(next(iter(a.inbound.values())).local_ts[0].start_addr) == A
    assert str(next(iter(b.inbound.values())).remote_ts[0].start_addr) == "192.0.2.7"
    net.run(30)
    assert any(d.data == b"\xff" for d in net.delivered)


# -- certificates ---------------------------------------------------------------------

def cert_pair(net, key_type="p256", *, b_pki=None, b_dns=None, **kwargs):
    from tests.support.ikesim import cert_config
    from tests.support.pki import MeshPki
    pki = MeshPki()
    leaf_a = pki.issue("a", key_type=key_type, dns=["a.pod.mesh.test"])
    other = b_pki or pki
    leaf_b = other.issue("b", key_type=key_type, dns=[b_dns or "b.pod.mesh.test"])
    a_cfg = cert_config("to-b", leaf_a, pki, "b.pod.mesh.test", child_config(A, B), local_id="a.pod.mesh.test",
                        **kwargs)
    b_cfg = cert_config("to-a", leaf_b, pki, "a.pod.mesh.test", child_config(B, A), local_id="b.pod.mesh.test",
                        **kwargs)
    a = net.add("a", A, single_peer_lookup(a_cfg))
    b = net.add("b", B, single_peer_lookup(b_cfg))
    return a, b, a_cfg


@pytest.mark.parametrize("key_type", ["p256", "p384", "ed25519", "rsa"])
def test_certificate_auth_every_key_type(key_type):
    net = Network()
    a, b, a_cfg = cert_pair(net, key_type)
    establish(net, a, a_cfg)
    assert a.established and b.established and keys_match(a, b)
    assert a.established[0].remote_id is not None and "b.pod.mesh.test" in str(a.established[0].remote_id)


def test_untrusted_certificate_is_refused():
    from tests.support.pki import MeshPki
    net = Network()
    a, b, a_cfg = cert_pair(net, b_pki=MeshPki(trust_domain="evil.test"))
    establish(net, a, a_cfg)
    assert not a.established
    assert a.of(NegotiationFailed)[0].notify == NotifyType.AUTHENTICATION_FAILED
    # a told b (INFORMATIONAL AUTHENTICATION_FAILED), so b does not keep a half-trusted SA.
    net.run(10)
    assert not b.established and "auth-failed" in b.closed_reasons()


def test_certificate_not_matching_the_identity_is_refused():
    net = Network()
    a, b, a_cfg = cert_pair(net, b_dns="someone-else.pod.mesh.test")
    establish(net, a, a_cfg)
    assert not a.established
    assert "does not match" in a.of(NegotiationFailed)[0].reason


def test_certificates_with_fragmentation():
    net = Network()
    a, b, a_cfg = cert_pair(net, "rsa", fragment_size=700)
    establish(net, a, a_cfg)
    assert a.established and b.established
    auth = [d for d in net.delivered if codec.peek_header(d.data).exchange == ExchangeType.IKE_AUTH]
    assert len(auth) > 2


def test_stale_partial_reassemblies_are_forgotten():
    net = Network()
    a, b, a_cfg, _ = pair(net)
    establish(net, a, a_cfg)
    sa = b.established[0]
    sa.tasks.reassembly = {(0, False): object(), (sa.tasks.peer_mid, False): object(), (7, True): object()}
    sa.tasks.forget_stale_fragments()
    # Requests below the next expected ID can never be processed; responses to nothing neither.
    assert list(sa.tasks.reassembly) == [(sa.tasks.peer_mid, False)]
