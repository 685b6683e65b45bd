"""The memos of parse and proposal-matching results: exact, bounded against a peer that varies
its input, and never holding on to an error or to a field that changes per message."""

from __future__ import annotations

import ipaddress

import pytest

from ipsec_mesh.ike import payload_codec, proposals, wire
from ipsec_mesh.ike.constants import EncrId, EsnId, KeId, PayloadType, PrfId, ProtocolId, TransformType, TsType
from ipsec_mesh.ike.errors import ParseError
from ipsec_mesh.ike.payloads import Proposal, SaPayload, TrafficSelector, Transform, TsiPayload
from ipsec_mesh.ike.proposals import parse_proposal, select


def _ike_offer(number: int = 1, key_bits: int = 256, spi: bytes = b"", group: int = KeId.CURVE25519) -> Proposal:
    return Proposal(number, ProtocolId.IKE, spi, (
        Transform(TransformType.ENCR, EncrId.AES_GCM_16, key_bits),
        Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
        Transform(TransformType.KE, group)))


def _esp_offer(spi: bytes) -> Proposal:
    return Proposal(1, ProtocolId.ESP, spi, (Transform(TransformType.ENCR, EncrId.AES_GCM_16, 256),
                                             Transform(TransformType.ESN, EsnId.ESN)))


def _decode_sa(sa: SaPayload) -> SaPayload:
    return payload_codec.decode_body(PayloadType.SA, payload_codec.encode_body(sa))


def test_same_transforms_keep_each_messages_own_spi():
    spis = [bytes([i, 1, 2, 3]) for i in range(1, 6)]
    decoded = [_decode_sa(SaPayload([_esp_offer(spi)])).proposals[0] for spi in spis]
    assert [p.spi for p in decoded] == spis
    assert {p.transforms for p in decoded} == {_esp_offer(b"").transforms}


def test_a_peer_varying_its_offers_is_decoded_exactly_and_the_memo_stays_bounded():
    for i in range(3 * wire.MEMO_SIZE):
        offer = _ike_offer(key_bits=i + 1)
        assert _decode_sa(SaPayload([offer])).proposals == [offer]
        assert len(payload_codec._TRANSFORM_LISTS) <= wire.MEMO_SIZE


def test_a_malformed_transform_list_fails_every_time():
    good = bytearray(payload_codec.encode_body(SaPayload([_ike_offer()])))
    good[8] = 0  # the first transform claims to be the last while the proposal counts three
    for _ in range(2):
        with pytest.raises(ParseError, match="last-substructure"):
            payload_codec.decode_body(PayloadType.SA, bytes(good))


def test_selectors_are_decoded_exactly_and_the_memo_stays_bounded():
    base = ipaddress.ip_address("10.1.0.0")
    for i in range(3 * wire.MEMO_SIZE):
        ts = TrafficSelector.for_address(base + i, ip_protocol=i % 3, start_port=i, end_port=i)
        body = payload_codec.encode_body(TsiPayload([ts]))
        assert payload_codec.decode_body(PayloadType.TSi, body).selectors == [ts]
        assert len(payload_codec._SELECTORS) <= wire.MEMO_SIZE


def test_same_selector_bytes_under_another_protocol_are_not_confused():
    a = TrafficSelector.for_address("10.0.0.1", ip_protocol=6)
    b = TrafficSelector.for_address("10.0.0.1", ip_protocol=17)
    for ts in (a, b, a):
        assert payload_codec.decode_body(PayloadType.TSi, payload_codec.encode_body(TsiPayload([ts]))).selectors == [ts]
    assert a.ts_type == TsType.TS_IPV4_ADDR_RANGE


def test_selection_takes_number_and_spi_from_the_offer_it_answers():
    ours = [parse_proposal("aes256gcm16-prfsha256-x25519", ProtocolId.IKE)]
    first = select([_ike_offer(number=1)], ours)
    second = select([_ike_offer(number=1, group=KeId.ECP_256), _ike_offer(number=2, spi=b"\x01" * 8)], ours)
    assert (first.number, first.spi) == (1, b"")
    assert (second.number, second.spi) == (2, b"\x01" * 8)
    assert second == select([_ike_offer(number=2, spi=b"\x01" * 8)], ours)


def test_an_unacceptable_offer_stays_refused_and_the_choice_memo_stays_bounded():
    ours = [parse_proposal("aes256gcm16-prfsha256-x25519", ProtocolId.IKE)]
    for i in range(3 * wire.MEMO_SIZE):
        with pytest.raises(proposals.NoProposalChosen):
            select([_ike_offer(key_bits=i + 1000)], ours)
        assert len(proposals._CHOICES) <= wire.MEMO_SIZE
    assert select([_ike_offer()], ours).key_bits == 256


def test_a_repeated_offer_without_spis_is_parsed_once_and_each_payload_has_its_own_list(monkeypatch):
    parsed = []
    original = payload_codec._parse_sa
    monkeypatch.setattr(payload_codec, "_parse_sa", lambda body: parsed.append(body) or original(body))
    monkeypatch.setattr(payload_codec, "_SA_OFFERS", {})
    offer = SaPayload([_ike_offer(1), _ike_offer(2, key_bits=128)])
    first, second = _decode_sa(offer), _decode_sa(offer)
    assert first == second == offer and len(parsed) == 1
    first.proposals.clear()  # one message's payload list is its own
    assert _decode_sa(offer) == offer
    for spi in (b"\x00\x00\x01\x00", b"\x00\x00\x01\x00"):  # an SPI changes per SA: not kept
        assert _decode_sa(SaPayload([_esp_offer(spi)])).proposals[0].spi == spi
    assert len(parsed) == 3 and len(payload_codec._SA_OFFERS) == 1
    for i in range(3 * wire.MEMO_SIZE):
        assert _decode_sa(SaPayload([_ike_offer(key_bits=i + 1000)])).proposals[0].transforms[0].key_length == i + 1000
        assert len(payload_codec._SA_OFFERS) <= wire.MEMO_SIZE
    with pytest.raises(ParseError):  # an error is never kept
        payload_codec.decode_body(PayloadType.SA, payload_codec.encode_body(offer)[:-1])


def test_repeated_selectors_are_parsed_once_and_each_payload_has_its_own_list(monkeypatch):
    monkeypatch.setattr(payload_codec, "_TS_LISTS", {})
    ts = TrafficSelector.for_address("10.0.0.1")
    body = payload_codec.encode_body(TsiPayload([ts]))
    first = payload_codec.decode_body(PayloadType.TSi, body)
    parsed = []
    original = payload_codec._decode_selector
    monkeypatch.setattr(payload_codec, "_decode_selector", lambda r: parsed.append(r) or original(r))
    second = payload_codec.decode_body(PayloadType.TSi, body)
    assert first == second == TsiPayload([ts]) and first.selectors is not second.selectors
    assert payload_codec.decode_body(PayloadType.TSr, body).selectors == [ts]  # same bytes, TSr's class
    assert type(payload_codec.decode_body(PayloadType.TSr, body)).__name__ == "TsrPayload"
    assert parsed == []
    with pytest.raises(ParseError):
        payload_codec.decode_body(PayloadType.TSi, body[:-1])


def test_long_inputs_are_parsed_but_never_kept(monkeypatch):
    # A memo of 256 results keyed by 64 KiB inputs would hold tens of MB for a peer that
    # sends long payloads: only inputs up to wire.MEMO_MAX_INPUT bytes are kept.
    from ipsec_mesh.ike.constants import NotifyType
    from ipsec_mesh.ike.exchanges import ike_init
    from ipsec_mesh.ike.payloads import Message, NotifyPayload

    for name in ("_SA_OFFERS", "_TS_LISTS", "_TRANSFORM_LISTS"):
        monkeypatch.setattr(payload_codec, name, {})
    monkeypatch.setattr(ike_init, "_HASH_ALGORITHM_SETS", {})
    many = tuple(Transform(TransformType.ENCR, EncrId.AES_GCM_16, bits) for bits in range(1, 65))
    few = many[:8]
    long_offer = SaPayload([Proposal(1, ProtocolId.IKE, b"", many), Proposal(2, ProtocolId.IKE, b"", few)]
                           + [Proposal(n, ProtocolId.IKE, b"", many[n:n + 60]) for n in (3, 4)])
    assert len(payload_codec.encode_body(long_offer)) > wire.MEMO_MAX_INPUT
    assert _decode_sa(long_offer) == long_offer
    selectors = [TrafficSelector.for_address(f"2001:db8::{i:x}") for i in range(32)]
    body = payload_codec.encode_body(TsiPayload(selectors))
    assert len(body) > wire.MEMO_MAX_INPUT
    assert payload_codec.decode_body(PayloadType.TSi, body).selectors == selectors
    data = b"".join(i.to_bytes(2, "big") for i in range(17))  # 17 algorithms: parsed, not kept
    notify = NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS, data=data)
    assert len(ike_init._parse_hash_algorithms(Message(b"i" * 8, bytes(8), 34, True, False, 0, [notify]))) == 17
    assert payload_codec._SA_OFFERS == {} and payload_codec._TS_LISTS == {}
    assert all(len(raw) <= wire.MEMO_MAX_INPUT for _, raw in payload_codec._TRANSFORM_LISTS)
    assert len(payload_codec._TRANSFORM_LISTS) == 4  # each list of at most 64 transforms is short
    # A transform with a long (TLV) attribute: parsed (and refused: the attribute is unknown), not kept.
    attribute = (15).to_bytes(2, "big") + (2000).to_bytes(2, "big") + b"a" * 2000
    transform = bytes([0, 0]) + (8 + len(attribute)).to_bytes(2, "big") + bytes([1, 0, 0, 20]) + attribute
    proposal = bytes([1, 1, 0, 1]) + transform
    body = bytes([0, 0]) + (4 + len(proposal)).to_bytes(2, "big") + proposal
    assert payload_codec.decode_body(PayloadType.SA, body).proposals == []
    assert all(len(raw) <= wire.MEMO_MAX_INPUT for _, raw in payload_codec._TRANSFORM_LISTS)
    assert payload_codec._SA_OFFERS == {}
    assert ike_init._HASH_ALGORITHM_SETS == {}
