"""What the hot path builds per IKE SA and per message, and that doing less changed nothing.

The responder's CPU per IKE SA is measured against charon (docs/benchmarks.md); these
tests pin the shortcuts taken for it: responders made when a kind of exchange first
arrives, one Prf object per PRF, a header parsed once, selections sharing one shape.
"""

from __future__ import annotations

import dataclasses

import pytest

from ipsec_mesh.ike import ExchangeType, NotifyType
from ipsec_mesh.ike import message as codec
from ipsec_mesh.ike.constants import EsnId, PayloadType, PrfId, ProtocolId, TransformType
from ipsec_mesh.ike.crypto import prf_for
from ipsec_mesh.ike.errors import CryptoError
from ipsec_mesh.ike.payloads import Message, NotifyPayload, Proposal, Transform
from ipsec_mesh.ike.proposals import parse_proposal, select
from tests.support.ikesim import Network, establish, pair


def _only_sa(node):
    assert len(node.established) == 1
    return node.established[0]


def test_an_ike_sa_makes_a_responder_only_for_the_kinds_of_exchange_it_answered():
    net = Network()
    a, b, a_cfg, _ = pair(net)  # the default proposals run one IKE_INTERMEDIATE
    establish(net, a, a_cfg)
    responder_side = _only_sa(b).tasks.responders
    assert set(responder_side) == {ExchangeType.IKE_SA_INIT, ExchangeType.IKE_INTERMEDIATE, ExchangeType.IKE_AUTH}
    # One object per kind: IKE_INTERMEDIATE finds what IKE_SA_INIT left on it.
    assert responder_side[ExchangeType.IKE_SA_INIT] is responder_side[ExchangeType.IKE_INTERMEDIATE]
    assert _only_sa(a).tasks.responders == {}  # the initiator answered nothing yet


def test_an_unknown_exchange_type_is_refused_and_makes_no_responder():
    net = Network()
    a, b, a_cfg, _ = pair(net)
    establish(net, a, a_cfg)
    sa = _only_sa(b)
    before = dict(sa.tasks.responders)
    request = Message(sa.spi_i, sa.spi_r, 99, True, False, sa.tasks.peer_mid, [])
    a_sa = _only_sa(a)
    net.delivered.clear()
    b.endpoint.receive(codec.encode(request, a_sa.protect_out), (b.address, 500), (a.address, 500), net.now)
    reply = b.endpoint.datagrams()
    assert len(reply) == 1
    answer = codec.decrypt(reply[0].data, codec.decode(reply[0].data), a_sa.protect_in)
    assert [(n.type) for n in answer.all(NotifyPayload)] == [NotifyType.INVALID_SYNTAX]
    assert sa.tasks.responders == before


def test_later_exchanges_get_their_responder_when_they_first_arrive():
    net = Network()
    a, b, a_cfg, _ = pair(net)
    establish(net, a, a_cfg)
    a.endpoint.rekey_child(next(iter(a.inbound)), net.now)
    net.settle()
    assert ExchangeType.CREATE_CHILD_SA in _only_sa(b).tasks.responders
    assert len(b.inbound) == 2 or len(b.inbound) == 1  # the old one may already be gone
    assert _only_sa(b).is_established


def test_one_prf_object_per_prf_and_an_unsupported_one_refused_every_time():
    assert prf_for(PrfId.HMAC_SHA2_256) is prf_for(int(PrfId.HMAC_SHA2_256))
    assert prf_for(PrfId.HMAC_SHA2_256) is not prf_for(PrfId.HMAC_SHA2_512)
    for _ in range(2):
        with pytest.raises(CryptoError):
            prf_for(2)  # HMAC-SHA1 as a PRF: MUST NOT
        with pytest.raises(CryptoError):
            prf_for(9999)


def _some_message() -> bytes:
    msg = Message(b"\x01" * 8, bytes(8), ExchangeType.IKE_SA_INIT, True, False, 0,
                  [NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED),
                   NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, data=b"s" * 20)])
    return codec.encode(msg)


def test_decoding_with_the_header_already_peeked_gives_the_same_message():
    data = _some_message()
    assert codec.decode(data, codec.peek_header(data)) == codec.decode(data)


def test_a_message_in_a_bytearray_decodes_to_bytes_fields():
    data = _some_message()
    msg = codec.decode(bytearray(data))
    assert msg == codec.decode(data)
    assert all(type(n.data) is bytes for n in msg.all(NotifyPayload))


def _esp_offer(spi: bytes, number: int = 1) -> Proposal:
    return Proposal(number, ProtocolId.ESP, spi, (Transform(TransformType.ENCR, 20, 256),
                                                  Transform(TransformType.ESN, EsnId.ESN)))


def test_selections_from_the_same_offer_share_one_shape_and_keep_their_own_spi():
    ours = [parse_proposal("aes256gcm16-esn", ProtocolId.ESP)]
    first = select([_esp_offer(b"\x00\x00\x01\x00")], ours)
    second = select([_esp_offer(b"\x00\x00\x02\x00", number=1)], ours)
    assert (first.spi, second.spi) == (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")
    assert first.shape is second.shape
    assert first.shape == dataclasses.replace(first, number=1, spi=b"")
    assert first.describe() == "aes256gcm16-esn"
    assert first.to_payload(b"\x00\x00\x09\x00").transforms == first.transforms()


def test_a_selection_changed_by_replace_does_not_keep_the_old_shape():
    ours = [parse_proposal("aes256gcm16-esn", ProtocolId.ESP)]
    placed = select([_esp_offer(b"\x00\x00\x01\x00")], ours)
    changed = dataclasses.replace(placed, key_bits=128)
    assert changed.shape.key_bits == 128
    assert changed.describe() == "aes128gcm16-esn"
    assert changed.to_payload(b"\x00\x00\x01\x00").transforms[0].key_length == 128


def test_the_header_packed_in_one_call_still_refuses_what_does_not_fit():
    good = Message(b"\x01" * 8, b"\x02" * 8, ExchangeType.IKE_AUTH, True, True, 7, [])
    header = codec.header_for(good, 46, 28)
    assert codec.peek_header(header) == codec.Header(b"\x01" * 8, b"\x02" * 8, 46, 0x20, ExchangeType.IKE_AUTH,
                                                     0x28, 7, 28)
    for bad in (dataclasses.replace(good, spi_r=b"\x02" * 7), dataclasses.replace(good, message_id=1 << 32),
                dataclasses.replace(good, exchange=256)):
        with pytest.raises(ValueError):
            codec.header_for(bad, 46, 28)


# -- work done once per configuration, not per IKE SA ------------------------------------

def test_the_psk_key_pad_is_computed_once_per_psk_and_prf_and_the_memo_stays_bounded(monkeypatch):
    from ipsec_mesh.ike import auth

    monkeypatch.setattr(auth, "_PADDED_KEYS", {})
    prf = prf_for(PrfId.HMAC_SHA2_256)
    pads = []

    def counting(key: bytes, data: bytes) -> bytes:
        if data == auth.KEY_PAD:
            pads.append(key)
        return prf(key, data)

    psk = b"p" * 32
    ours = auth.PskCredential(psk).auth_data(counting, b"octets")
    assert ours == prf(prf(psk, auth.KEY_PAD), b"octets")  # RFC 7296 section 2.15, unchanged
    auth.verify_auth(auth.AuthPayload(2, ours), b"octets", counting, psks=(psk,))
    assert auth.PskCredential(psk).auth_data(counting, b"other") == prf(prf(psk, auth.KEY_PAD), b"other")
    assert pads == [psk]  # three AUTH values, one key pad
    for i in range(3 * auth._PADDED_KEYS_MAX):
        auth.PskCredential(bytes([i]) * 16).auth_data(counting, b"octets")
        assert len(auth._PADDED_KEYS) <= auth._PADDED_KEYS_MAX
    assert auth.PskCredential(psk).auth_data(prf, b"octets") == ours


def test_the_same_transforms_are_encoded_once_and_a_mutable_list_every_time(monkeypatch):
    from ipsec_mesh.ike import payload_codec
    from ipsec_mesh.ike.payloads import SaPayload

    encoded = []
    original = payload_codec._encode_transforms

    def counting(transforms):
        encoded.append(tuple(transforms))
        return original(transforms)

    monkeypatch.setattr(payload_codec, "_encode_transforms", counting)
    monkeypatch.setattr(payload_codec, "_ENCODED_TRANSFORMS", {})
    transforms = (Transform(TransformType.ENCR, 20, 256), Transform(TransformType.ESN, EsnId.ESN))
    bodies = [payload_codec.encode_body(SaPayload([Proposal(1, ProtocolId.ESP, spi, transforms)]))
              for spi in (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")]
    assert len(encoded) == 1
    for body, spi in zip(bodies, (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00"), strict=True):
        assert payload_codec.decode_body(PayloadType.SA, body).proposals == [Proposal(1, ProtocolId.ESP, spi, transforms)]
    as_list = list(transforms)
    first = payload_codec.encode_body(SaPayload([Proposal(1, ProtocolId.ESP, b"\x00" * 4, as_list)]))
    as_list[1] = Transform(TransformType.ESN, EsnId.NO_ESN)
    second = payload_codec.encode_body(SaPayload([Proposal(1, ProtocolId.ESP, b"\x00" * 4, as_list)]))
    assert first != second and len(encoded) == 3


def test_a_repeated_decoded_offer_is_matched_without_hashing_its_transforms(monkeypatch):
    from ipsec_mesh.ike import payload_codec, proposals
    from ipsec_mesh.ike.payloads import SaPayload

    ours = [parse_proposal("aes256gcm16-esn", ProtocolId.ESP)]
    offer = SaPayload([Proposal(1, ProtocolId.ESP, b"\x00\x00\x01\x00",
                                (Transform(TransformType.ENCR, 20, 256), Transform(TransformType.ESN, EsnId.ESN)))])
    wire_body = payload_codec.encode_body(offer)
    first = select(payload_codec.decode_body(PayloadType.SA, wire_body).proposals, ours)
    hashed = []
    monkeypatch.setattr(Transform, "__hash__", lambda self: hashed.append(self) or 0)
    again = select(payload_codec.decode_body(PayloadType.SA, wire_body).proposals, ours)
    assert again == first and again.shape is first.shape
    assert hashed == []
    assert len(proposals._CHOICES_BY_ID) <= 256


def test_the_same_selectors_are_intersected_once_with_the_same_answer(monkeypatch):
    from ipsec_mesh.ike import selectors
    from ipsec_mesh.ike.payloads import TrafficSelector

    computed = []
    original = selectors._intersect
    monkeypatch.setattr(selectors, "_intersect", lambda a, b: computed.append((a, b)) or original(a, b))
    host, net = TrafficSelector.for_address("10.0.0.1"), TrafficSelector.for_network("10.0.0.0/24")
    other, udp = TrafficSelector.for_address("10.0.1.1"), TrafficSelector.for_address("10.0.0.1", 17, 53, 53)
    pairs = [(host, net), (net, host), (host, other), (udp, net), (net, udp), (host, net), (host, other)]
    assert [selectors.intersect(a, b) for a, b in pairs] == [original(a, b) for a, b in pairs]
    assert selectors.intersect(host, net) == host and selectors.intersect(host, other) is None
    assert len(computed) == 5  # the repeated pairs were answered from the memo
    equal_copy = TrafficSelector.for_address("10.0.0.1")  # equal, another object: computed again
    assert selectors.intersect(equal_copy, net) == host and len(computed) == 6
    for i in range(3 * 256):
        selectors.intersect(TrafficSelector.for_address(f"10.1.{i // 256}.{i % 256}"), net)
        assert len(selectors._INTERSECTIONS) <= 256


def test_a_received_identity_is_validated_once_per_distinct_payload(monkeypatch):
    from ipsec_mesh.ike import identity as identity_module
    from ipsec_mesh.ike.constants import IdType
    from ipsec_mesh.ike.errors import IdentityError
    from ipsec_mesh.ike.payloads import IdiPayload

    checked = []
    original = identity_module._VALIDATORS[IdType.ID_FQDN]
    monkeypatch.setitem(identity_module._VALIDATORS, IdType.ID_FQDN,
                        lambda t, data: checked.append(data) or original(t, data))
    monkeypatch.setattr(identity_module, "_RECEIVED", {})
    payload = IdiPayload(IdType.ID_FQDN, b"peer.pod.mesh.test")
    first = identity_module.Identity.from_payload(payload)
    assert identity_module.Identity.from_payload(IdiPayload(IdType.ID_FQDN, b"peer.pod.mesh.test")) == first
    assert checked == [b"peer.pod.mesh.test"] and str(first) == "fqdn:peer.pod.mesh.test"
    for bad in (b"-bad-.test", b"*.mesh.test"):  # refused every time, never memoised
        for _ in range(2):
            with pytest.raises(IdentityError):
                identity_module.Identity.from_payload(IdiPayload(IdType.ID_FQDN, bad))
    assert checked.count(b"-bad-.test") == 2
    for i in range(3 * 256):
        identity_module.Identity.from_payload(IdiPayload(IdType.ID_FQDN, f"p{i}.mesh.test".encode()))
        assert len(identity_module._RECEIVED) <= 256


def test_next_timer_is_the_earliest_of_every_deadline_the_sa_and_its_children_hold():
    net = Network()
    a, b, a_cfg, _ = pair(net)
    establish(net, a, a_cfg)
    sa = _only_sa(b)
    child = next(iter(sa.children.values()))
    sa.config = dataclasses.replace(sa.config, dpd_delay=0)
    deadlines = [(sa, "rekey_at", 50.0), (sa, "expire_at", 60.0), (sa, "keepalive_at", 70.0),
                 (child, "rekey_at", 40.0), (child, "expire_at", 45.0), (child, "activity_check_at", 55.0)]
    for absent in range(len(deadlines)):  # each one missing in turn: the earliest of the others
        for i, (obj, name, at) in enumerate(deadlines):
            setattr(obj, name, None if i == absent else at)
        assert sa.next_timer() == min(at for i, (_, _, at) in enumerate(deadlines) if i != absent)
    for obj, name, _ in deadlines:
        setattr(obj, name, None)
    assert sa.next_timer() is None
    sa.config = dataclasses.replace(sa.config, dpd_delay=30)
    assert sa.next_timer() == sa.last_received + 30


def test_a_peers_signature_hash_list_is_parsed_once_per_distinct_list():
    from ipsec_mesh.ike import wire
    from ipsec_mesh.ike.exchanges import ike_init

    def parse(data: bytes):
        notify = NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS, data=data)
        return ike_init._parse_hash_algorithms(Message(b"i" * 8, bytes(8), ExchangeType.IKE_SA_INIT, True, False, 0,
                                                       [notify]))

    first = parse(b"\x00\x02\x00\x03\x00\x05")
    assert first == {2, 3, 5} and parse(b"\x00\x02\x00\x03\x00\x05") is first
    assert parse(b"\x00\x02\x00") == frozenset()  # odd length: none announced
    for i in range(3 * wire.MEMO_SIZE):
        assert parse(i.to_bytes(2, "big")) == {i}
        assert len(ike_init._HASH_ALGORITHM_SETS) <= wire.MEMO_SIZE
