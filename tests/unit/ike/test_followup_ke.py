"""RFC 9370 additional key exchanges on rekeys (IKE_FOLLOWUP_KE), ours against ours in memory."""

from __future__ import annotations

import pytest

from ipsec_mesh.ike import (
    ChildSaDeleted,
    ChildSaFailed,
    ChildSaInstallInbound,
    ChildSaInstallOutbound,
    Datagram,
    ExchangeType,
    NotifyType,
)
from ipsec_mesh.ike import message as codec
from tests.support.ikesim import A, B, Network, child_config, establish, exchanges, keys_match, pair

HYBRID_ESP = "aes256gcm16-x25519-ke1_mlkem768-esn"
CLASSIC_ESP = "aes256gcm16-x25519-esn"
RESPONSE_FLAG = 0x20



def followups(sa):
    """The responder's pending follow-up state of an IKE SA, by link data."""
    return sa.tasks.responder(ExchangeType.IKE_FOLLOWUP_KE).pending

def hybrid_pair(net: Network, *, b_ike: str | None = None, b_esp: str = HYBRID_ESP):
    a, b, a_cfg, b_cfg = pair(net, a_child=child_config(A, B, esp=f"{HYBRID_ESP},{CLASSIC_ESP}"),
                              b_child=child_config(B, A, esp=b_esp),
                              b_kwargs={"ike_proposals": _ike(b_ike)} if b_ike else None)
    establish(net, a, a_cfg)
    assert a.established and b.established and keys_match(a, b)
    net.delivered.clear()
    return a, b


def _ike(text: str):
    from ipsec_mesh.ike.constants import ProtocolId
    from ipsec_mesh.ike.proposals import parse_proposal

    return tuple(parse_proposal(p, ProtocolId.IKE) for p in text.split(","))


def is_followup(d: Datagram, *, response: bool) -> bool:
    if d.data == b"\xff":
        return False
    header = codec.peek_header(d.data)
    return header.exchange == ExchangeType.IKE_FOLLOWUP_KE and bool(header.flags & RESPONSE_FLAG) == response


def followup_messages(net: Network) -> set[tuple[int, bool]]:
    """(message ID, is response) of every IKE_FOLLOWUP_KE message seen, fragments counted once."""
    headers = [codec.peek_header(d.data) for d in net.delivered if d.data != b"\xff"]
    return {(h.message_id, bool(h.flags & RESPONSE_FLAG)) for h in headers
            if h.exchange == ExchangeType.IKE_FOLLOWUP_KE}


def node(a, b, name: str):
    return a if name == "a" else b


def the_sa(n):
    assert len(n.established) == 1
    return n.established[0]


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_ike_rekey_runs_the_mlkem_exchange_in_ike_followup_ke(initiator):
    net = Network()
    a, b = hybrid_pair(net)
    old = the_sa(a).label
    children = set(a.inbound)
    assert node(a, b, initiator).endpoint.rekey_ike(old, net.now)
    net.settle()
    seen = exchanges(net)
    first_followup = seen.index(ExchangeType.IKE_FOLLOWUP_KE)
    assert ExchangeType.CREATE_CHILD_SA in seen[:first_followup]
    assert len(followup_messages(net)) == 2  # one request and its response (the request may be fragmented)
    new_a, new_b = the_sa(a), the_sa(b)
    assert new_a.label == new_b.label != old
    assert "ke1_mlkem768" in new_a.selected.describe()
    assert new_a.keys.sk_d == new_b.keys.sk_d and new_a.keys.sk_ei == new_b.keys.sk_ei
    assert set(a.inbound) == children and keys_match(a, b)
    assert len(new_a.children) == len(new_b.children) == 1
    assert not followups(new_a) and not followups(new_b)
    # The new IKE SA works, and its children rekey over it (with their own follow-up).
    assert node(a, b, initiator).endpoint.rekey_child(next(iter(node(a, b, initiator).inbound)), net.now)
    net.settle()
    assert keys_match(a, b) and len(a.inbound) == 1


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_child_rekey_with_pfs_runs_ike_followup_ke_and_keeps_zero_loss_order(initiator):
    net = Network()
    a, b = hybrid_pair(net)
    n = node(a, b, initiator)
    old_spi = next(iter(n.inbound))
    assert n.endpoint.rekey_child(old_spi, net.now)
    net.settle()
    seen = exchanges(net)
    assert seen[:2] == [ExchangeType.CREATE_CHILD_SA] * 2 and seen[2] == ExchangeType.IKE_FOLLOWUP_KE
    assert len(followup_messages(net)) == 2
    assert len(a.inbound) == 1 and len(b.inbound) == 1 and old_spi not in n.inbound
    assert keys_match(a, b)
    for each in (a, b):
        child = next(iter(each.inbound.values()))
        assert "mlkem768" in child.algorithm
        kinds = [type(e).__name__ for e in each.events
                 if type(e) in (ChildSaInstallInbound, ChildSaInstallOutbound, ChildSaDeleted)]
        assert kinds == ["ChildSaInstallInbound", "ChildSaInstallOutbound", "ChildSaInstallInbound",
                         "ChildSaInstallOutbound", "ChildSaDeleted"]


def test_keys_exist_only_after_the_last_followup():
    net = Network()
    a, b = hybrid_pair(net)
    held = []
    net.drop = lambda d: is_followup(d, response=False) and not held and held.append(d) is None
    a.endpoint.rekey_child(next(iter(a.inbound)), net.now)
    net.settle()
    # The CREATE_CHILD_SA is answered, the follow-up was lost: nobody has installed anything yet.
    assert held and len(a.inbound) == 1 and len(b.inbound) == 1
    assert len(followups(the_sa(b))) == 1
    net.drop = lambda d: False
    net.run(10)  # the initiator retransmits the follow-up
    assert len(a.inbound) == 1 and len(b.inbound) == 1 and keys_match(a, b)
    assert not followups(the_sa(b))


@pytest.mark.parametrize("response", [False, True])
@pytest.mark.parametrize("what", ["ike", "child"])
def test_lost_followup_message_is_retransmitted(what, response):
    net = Network()
    a, b = hybrid_pair(net)
    lost = []

    def drop_first(d):
        if is_followup(d, response=response) and not lost:
            lost.append(d)
            return True
        return False

    net.drop = drop_first
    old = the_sa(a).label
    if what == "ike":
        a.endpoint.rekey_ike(old, net.now)
    else:
        a.endpoint.rekey_child(next(iter(a.inbound)), net.now)
    net.run(20)
    assert lost
    assert len(a.inbound) == 1 and len(b.inbound) == 1 and keys_match(a, b)
    assert the_sa(a).label == the_sa(b).label
    assert (the_sa(a).label != old) == (what == "ike")
    assert len(followup_messages(net)) == 2  # the same exchange, retransmitted


@pytest.mark.parametrize("what", ["ike", "child"])
def test_classic_peer_rekeys_without_followups(what):
    net = Network()
    a, b = hybrid_pair(net, b_ike="aes256gcm16-prfsha256-x25519", b_esp=CLASSIC_ESP)
    assert "mlkem" not in the_sa(a).selected.describe()
    old = the_sa(a).label
    if what == "ike":
        a.endpoint.rekey_ike(old, net.now)
    else:
        a.endpoint.rekey_child(next(iter(a.inbound)), net.now)
    net.settle()
    assert ExchangeType.CREATE_CHILD_SA in exchanges(net)
    assert ExchangeType.IKE_FOLLOWUP_KE not in exchanges(net)
    assert len(a.inbound) == 1 and keys_match(a, b) and the_sa(a).label == the_sa(b).label
    assert (the_sa(a).label != old) == (what == "ike")
    assert "mlkem" not in next(iter(a.inbound.values())).algorithm


@pytest.mark.parametrize("what", ["ike", "child"])
def test_state_not_found_fails_the_rekey_cleanly_and_it_is_retried(what):
    net = Network()
    a, b = hybrid_pair(net)
    responder = the_sa(b)
    forgotten = []

    def forget_state(d):
        # The responder loses its follow-up state (e.g. it expired) just before the request arrives.
        if is_followup(d, response=False) and not forgotten:
            forgotten.append(dict(followups(responder)))
            followups(responder).clear()
        return False

    net.drop = forget_state
    old = the_sa(a).label
    old_children = set(a.inbound)
    if what == "ike":
        a.endpoint.rekey_ike(old, net.now)
    else:
        a.endpoint.rekey_child(next(iter(a.inbound)), net.now)
    net.settle()
    assert forgotten and forgotten[0]
    # Refused with STATE_NOT_FOUND: nothing changed, nothing half-installed, the SA lives on.
    assert len(followup_messages(net)) == 2
    assert the_sa(a).label == old and set(a.inbound) == old_children and keys_match(a, b)
    if what == "child":
        failed = a.of(ChildSaFailed)
        assert failed and failed[-1].notify == NotifyType.STATE_NOT_FOUND
    # The rekey is tried again later and then succeeds.
    net.run(120)
    assert the_sa(a).label == the_sa(b).label and keys_match(a, b) and len(a.inbound) == 1
    if what == "ike":
        assert the_sa(a).label != old
    else:
        assert set(a.inbound) != old_children


def test_unknown_link_is_answered_with_state_not_found():
    from ipsec_mesh.ike.errors import IkeError
    from ipsec_mesh.ike.payloads import KePayload, Message, NotifyPayload

    net = Network()
    a, b = hybrid_pair(net)
    sa = the_sa(b)
    request = Message(sa.spi_i, sa.spi_r, ExchangeType.IKE_FOLLOWUP_KE, True, False, sa.tasks.peer_mid,
                      [KePayload(35, b"\x00" * 1184),
                       NotifyPayload(NotifyType.ADDITIONAL_KEY_EXCHANGE, data=b"no such link")])
    with pytest.raises(IkeError) as refused:
        sa.tasks.responder(ExchangeType.IKE_FOLLOWUP_KE).respond(sa, request, b"", net.now)
    assert refused.value.notify == NotifyType.STATE_NOT_FOUND


def test_responder_forgets_state_the_initiator_never_uses():
    net = Network()
    a, b = hybrid_pair(net)
    net.drop = lambda d: is_followup(d, response=False)
    a.endpoint.rekey_child(next(iter(a.inbound)), net.now)
    net.settle()
    responder = the_sa(b)
    assert len(followups(responder)) == 1
    b_children = set(b.inbound)
    net.run(30)  # the initiator gives up (and closes its SA); the responder's state expires
    assert not followups(responder)
    assert set(b.inbound) == b_children  # the abandoned CHILD_SA was never installed


@pytest.mark.parametrize("b_late", [False, True], ids=["together", "b-followup-late"])
@pytest.mark.parametrize("what", ["ike", "child"])
def test_rekey_collision_with_pending_followups_resolves_by_create_child_sa_nonces(what, b_late):
    winners = set()
    for warmup in range(4):
        net = Network()
        a, b = hybrid_pair(net)
        for _ in range(warmup):  # vary the nonces, hence who wins
            a.endpoint.rekey_child(next(iter(a.inbound)), net.now)
            net.settle()
        sa_a, sa_b = the_sa(a), the_sa(b)
        net.delivered.clear()
        if b_late:
            # b's follow-up is lost once: a completes its rekey while b's is still pending on it.
            lost = []
            net.drop = lambda d: (is_followup(d, response=False) and d.local[0] == B and not lost
                                  and lost.append(d) is None)
        if what == "ike":
            a.endpoint.rekey_ike(sa_a.label, net.now)
            b.endpoint.rekey_ike(sa_b.label, net.now)
        else:
            a.endpoint.rekey_child(next(iter(a.inbound)), net.now)
            b.endpoint.rekey_child(next(iter(b.inbound)), net.now)
        net.settle()
        net.run(60)
        assert ExchangeType.IKE_FOLLOWUP_KE in exchanges(net)
        assert len(a.inbound) == len(b.inbound) == len(a.outbound) == len(b.outbound) == 1
        assert keys_match(a, b)
        new_a, new_b = the_sa(a), the_sa(b)
        assert new_a.label == new_b.label and len(new_a.children) == len(new_b.children) == 1
        assert not followups(new_a) and not followups(new_b)
        if what == "ike":
            winners.add("a" if new_a.initiator else "b")
        else:
            winners.add("a" if next(iter(new_a.children.values())).initiated_by_us else "b")
    assert winners == {"a", "b"}


TWO_EXTRA_IKE = "aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke2_ecp384"
TWO_EXTRA_ESP = "aes256gcm16-x25519-ke1_mlkem768-ke2_ecp384-esn"


def test_two_additional_key_exchanges_chain_their_links_and_feed_the_kdf(monkeypatch):
    from ipsec_mesh.ike import child as child_module
    from ipsec_mesh.ike.exchanges import ike_rekey

    seeds, keymats = [], []
    real_seed, real_keymat = ike_rekey.rekey_skeyseed, child_module.derive_child_keys

    def record_seed(prf, sk_d, shared, ni, nr, additional=()):
        seeds.append(tuple(len(s) for s in (shared,) + tuple(additional)))
        return real_seed(prf, sk_d, shared, ni, nr, additional)

    def record_keymat(prf, sk_d, ni, nr, encr_len, integ_len=0, secrets=()):
        keymats.append(tuple(len(s) for s in secrets))
        return real_keymat(prf, sk_d, ni, nr, encr_len, integ_len, secrets)

    monkeypatch.setattr(ike_rekey, "rekey_skeyseed", record_seed)
    monkeypatch.setattr(child_module, "derive_child_keys", record_keymat)
    net = Network()
    a, b, a_cfg, _ = pair(net, a_child=child_config(A, B, esp=TWO_EXTRA_ESP),
                          b_child=child_config(B, A, esp=TWO_EXTRA_ESP),
                          a_kwargs={"ike_proposals": _ike(TWO_EXTRA_IKE)},
                          b_kwargs={"ike_proposals": _ike(TWO_EXTRA_IKE)})
    establish(net, a, a_cfg)
    net.delivered.clear()
    b.endpoint.rekey_ike(the_sa(b).label, net.now)
    net.settle()
    assert len(followup_messages(net)) == 4  # two exchanges, the second linked by the first's response
    assert the_sa(a).label == the_sa(b).label and keys_match(a, b)
    # Both ends: SK(0) from X25519, then the ML-KEM-768 and ECP-384 secrets, in that order.
    assert seeds == [(32, 32, 48)] * 2
    net.delivered.clear()
    a.endpoint.rekey_child(next(iter(a.inbound)), net.now)
    net.settle()
    assert len(followup_messages(net)) == 4 and keys_match(a, b) and len(a.inbound) == 1
    assert keymats[-2:] == [(32, 32, 48)] * 2


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_new_child_sa_with_pfs_over_an_existing_ike_sa_runs_ike_followup_ke(initiator):
    net = Network()
    a, b, a_cfg, b_cfg = pair(net, a_child=child_config(A, B, esp=HYBRID_ESP),
                              b_child=child_config(B, A, esp=HYBRID_ESP))
    establish(net, a, a_cfg, child=False)
    assert a.established and b.established and not a.inbound and not b.inbound
    net.delivered.clear()
    if initiator == "a":
        a.endpoint.acquire(a_cfg, (A, 500), (B, 500), net.now, a_cfg.children[0])
    else:
        b.endpoint.acquire(b_cfg, (B, 500), (A, 500), net.now, b_cfg.children[0])
    net.settle()
    assert exchanges(net)[:3] == [ExchangeType.CREATE_CHILD_SA] * 2 + [ExchangeType.IKE_FOLLOWUP_KE]
    assert len(followup_messages(net)) == 2
    assert len(a.inbound) == len(b.inbound) == len(a.outbound) == len(b.outbound) == 1 and keys_match(a, b)
    assert "mlkem768" in next(iter(a.inbound.values())).algorithm
