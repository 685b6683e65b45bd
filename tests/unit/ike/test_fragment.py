"""RFC 7383 fragmentation and reassembly."""

from __future__ import annotations

import random

import pytest

from ipsec_mesh.ike import message
from ipsec_mesh.ike.constants import AuthMethod, ExchangeType, IdType, NotifyType, PayloadType
from ipsec_mesh.ike.errors import FragmentError, IntegrityError, ParseError
from ipsec_mesh.ike.fragment import Reassembler, encode_fragments, encode_protected, fragment_overhead
from ipsec_mesh.ike.payloads import (
    AuthPayload,
    CertPayload,
    EncryptedFragment,
    IdiPayload,
    IdrPayload,
    Message,
    NotifyPayload,
)
from tests.unit.ike.codec_helpers import AesGcmProtector, flip, load_capture, protector

SPI_I, SPI_R = b"I" * 8, b"R" * 8


def big_message(message_id: int = 1, cert_size: int = 1500) -> Message:
    return Message(SPI_I, SPI_R, ExchangeType.IKE_AUTH, True, False, message_id, [
        IdiPayload(IdType.ID_FQDN, b"pod-a.mesh"),
        CertPayload(4, bytes(i % 251 for i in range(cert_size))),
        NotifyPayload(NotifyType.INITIAL_CONTACT),
        AuthPayload(AuthMethod.DIGITAL_SIGNATURE, b"s" * 80),
    ])


def feed(reassembler: Reassembler, datagrams: list[bytes]) -> list:
    return [reassembler.add(d, message.decode(d), protector()) for d in datagrams]


def test_fragments_respect_size_and_carry_rfc7383_fields():
    msg = big_message()
    fragments = encode_fragments(msg, protector(), 300)
    assert len(fragments) > 5
    for number, datagram in enumerate(fragments, start=1):
        assert len(datagram) <= 300
        header = message.peek_header(datagram)
        assert header.next_payload == PayloadType.SKF and header.message_id == msg.message_id
        [frag] = message.decode(datagram).payloads
        assert isinstance(frag, EncryptedFragment)
        assert (frag.number, frag.total) == (number, len(fragments))
        assert frag.first_inner == (PayloadType.IDi if number == 1 else PayloadType.NONE)
    # every fragment but the last is filled to the limit
    assert all(len(d) == 300 for d in fragments[:-1])
    # separately encrypted: distinct IVs
    assert len({d[36:44] for d in fragments}) == len(fragments)


@pytest.mark.parametrize("order", ["in order", "reversed", "shuffled"])
def test_reassembly_in_any_order(order):
    msg = big_message()
    fragments = encode_fragments(msg, protector(), 256)
    if order == "reversed":
        fragments.reverse()
    elif order == "shuffled":
        random.Random(7).shuffle(fragments)
    results = feed(Reassembler(), fragments)
    assert results[:-1] == [None] * (len(fragments) - 1)
    assert results[-1] == msg


def test_duplicates_are_dropped():
    msg = big_message()
    fragments = encode_fragments(msg, protector(), 400)
    reassembler = Reassembler()
    doubled = [f for frag in fragments[:-1] for f in (frag, frag)] + [fragments[-1]]
    results = feed(reassembler, doubled)
    assert results[-1] == msg and results.count(None) == len(doubled) - 1
    assert reassembler.pending == 0


def test_one_lost_fragment_leaves_the_message_incomplete():
    fragments = encode_fragments(big_message(), protector(), 300)
    reassembler = Reassembler()
    assert feed(reassembler, fragments[:2] + fragments[3:]) == [None] * (len(fragments) - 1)
    assert reassembler.pending == 1
    assert feed(reassembler, [fragments[2]]) == [big_message()]  # the retransmitted one completes it


def test_small_message_is_one_fragment_and_empty_message_works():
    for msg in (big_message(cert_size=10),
                Message(SPI_I, SPI_R, ExchangeType.INFORMATIONAL, False, True, 9, [])):
        fragments = encode_fragments(msg, protector(), 1280)
        assert len(fragments) == 1
        assert feed(Reassembler(), fragments) == [msg]


def test_encode_protected_fragments_only_when_needed_and_allowed():
    msg = big_message()
    whole = message.encode(msg, protector())
    assert encode_protected(msg, protector(), len(whole), True) == [whole]
    assert encode_protected(msg, protector(), 500, False) == [whole]
    fragments = encode_protected(msg, protector(), len(whole) - 1, True)
    assert len(fragments) == 2 and all(len(f) < len(whole) for f in fragments)
    assert feed(Reassembler(), fragments)[-1] == msg


def test_too_small_max_datagram_is_refused():
    with pytest.raises(ValueError):
        encode_fragments(big_message(), protector(), fragment_overhead(protector()))
    assert len(encode_fragments(big_message(cert_size=1), protector(),
                                fragment_overhead(protector()) + 1)) > 50


def test_tampered_fragment_fails_integrity_and_is_not_stored():
    fragments = encode_fragments(big_message(), protector(), 300)
    reassembler = Reassembler()
    bad = flip(fragments[1], len(fragments[1]) - 1)
    with pytest.raises(IntegrityError):
        feed(reassembler, [bad])
    assert reassembler.pending == 0
    with pytest.raises(IntegrityError):  # fragment header fields are authenticated too
        feed(reassembler, [flip(fragments[1], 33)])
    assert feed(reassembler, fragments)[-1] == big_message()


def test_too_many_fragments_and_too_many_bytes():
    fragments = encode_fragments(big_message(), protector(), 200)
    with pytest.raises(FragmentError):
        feed(Reassembler(max_fragments=len(fragments) - 1), fragments[:1])
    limited = Reassembler(max_total_bytes=500)
    with pytest.raises(FragmentError):
        feed(limited, fragments)
    assert limited.pending == 0


def test_inconsistent_totals():
    msg = big_message()
    coarse = encode_fragments(msg, protector(), 600)
    fine = encode_fragments(msg, protector(), 300)
    reassembler = Reassembler()
    feed(reassembler, fine[:2])
    with pytest.raises(FragmentError):  # fewer fragments: an older transmission
        feed(reassembler, coarse[:1])
    # more fragments: the sender re-fragmented smaller, reassembly restarts with them
    reassembler = Reassembler()
    feed(reassembler, coarse[:2])
    assert feed(reassembler, fine)[-1] == msg
    assert reassembler.pending == 0


def test_interleaved_messages_and_pending_limit():
    first, second = big_message(1), big_message(2, cert_size=900)
    a = encode_fragments(first, protector(), 300)
    b = encode_fragments(second, protector(), 300)
    reassembler = Reassembler(max_pending=2)
    interleaved = [f for pair in zip(a, b, strict=False) for f in pair] + a[len(b):] + b[len(a):]
    done = [r for r in feed(reassembler, interleaved) if r is not None]
    assert sorted(done, key=lambda m: m.message_id) == [first, second]
    # a third message evicts the oldest partial one
    feed(reassembler, a[:1])
    feed(reassembler, b[:1])
    feed(reassembler, encode_fragments(big_message(3), protector(), 300)[:1])
    assert reassembler.pending == 2
    assert feed(reassembler, a[1:])[-1] is None  # message 1 was forgotten; fragment 1 is missing


def test_add_needs_an_skf_payload():
    datagram = message.encode(big_message(), protector())
    with pytest.raises(ParseError):
        Reassembler().add(datagram, message.decode(datagram), protector())


def test_malformed_reassembled_chain_is_a_parse_error():
    fragments = encode_fragments(big_message(), protector(), 300)
    reassembler = Reassembler()
    feed(reassembler, fragments[1:])
    # the 14-byte IDi body read as a NONCE is too short: authenticated, but malformed
    with pytest.raises(ParseError):
        feed(reassembler, [flip_first_inner(fragments[0], PayloadType.NONCE)])
    assert reassembler.pending == 0


def flip_first_inner(datagram: bytes, new_type: int) -> bytes:
    """Fragment 1 re-sealed with another first-inner type (so it still authenticates)."""
    sealer = protector()
    outer = message.decode(datagram)
    frag = outer.payloads[-1]
    aad = datagram[:len(datagram) - len(frag.raw)]
    aad = aad[:28] + bytes([new_type]) + aad[29:]
    plaintext = sealer.open(frag.raw[:8], datagram[:len(datagram) - len(frag.raw)], frag.raw[8:])
    iv = sealer.next_iv()
    return aad + iv + sealer.seal(iv, aad, plaintext)


def test_strongswan_fragmented_ike_auth_reassembles():
    packets, keys = load_capture()
    fragments = [message.strip_non_esp_marker(pkt.payload) for pkt in packets
                 if pkt.src == "10.77.0.1" and pkt.dst_port == 4500]
    assert len(fragments) >= 2 and all(f is not None for f in fragments)
    for order in (fragments, fragments[::-1]):
        reassembler = Reassembler()
        results = [reassembler.add(f, message.decode(f), AesGcmProtector(keys["Sk_ei"])) for f in order]
        assert results[:-1] == [None] * (len(order) - 1)
        inner = results[-1]
        assert inner.exchange == ExchangeType.IKE_AUTH and inner.is_initiator and inner.message_id == 1
        assert inner.first(IdiPayload).data == b"initiator.test"
        assert inner.first(IdrPayload).data == b"responder.test"
        assert inner.first(AuthPayload).method == AuthMethod.SHARED_KEY_MIC
        assert inner.notify(NotifyType.INITIAL_CONTACT) is not None
