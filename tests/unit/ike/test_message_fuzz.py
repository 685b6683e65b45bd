"""Property and fuzz tests: hostile bytes raise only IkeError; generated messages round-trip."""

from __future__ import annotations

import ipaddress
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsec_mesh.ike import message
from ipsec_mesh.ike import payloads as pl
from ipsec_mesh.ike.constants import ExchangeType, PayloadType, ProtocolId, TsType
from ipsec_mesh.ike.errors import IkeError, IntegrityError
from ipsec_mesh.ike.fragment import Reassembler, encode_fragments
from tests.unit.ike.codec_helpers import protector

# Fixed budgets keep this file near 5 s on an idle machine; IKE_FUZZ_SCALE=50 runs a long campaign.
_SCALE = int(os.environ.get("IKE_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=400 * _SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=150 * _SCALE, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])

u8, u16 = st.integers(0, 0xFF), st.integers(0, 0xFFFF)
small_bytes = st.binary(max_size=40)
KNOWN_TYPES = sorted(int(t) for t in PayloadType if t != PayloadType.NONE)

transforms = st.builds(pl.Transform, st.integers(1, 255), u16, st.none() | u16)


@st.composite
def proposals(draw, number: int):
    protocol = draw(st.sampled_from([ProtocolId.IKE, ProtocolId.ESP, ProtocolId.AH]))
    spi_len = draw(st.sampled_from([0, 8])) if protocol == ProtocolId.IKE else 4
    return pl.Proposal(number, protocol, draw(st.binary(min_size=spi_len, max_size=spi_len)),
                    tuple(draw(st.lists(transforms, min_size=1, max_size=6))))


@st.composite
def sa_payloads(draw):
    count = draw(st.integers(1, 4))
    numbers = range(1, count + 1) if count > 1 else [draw(st.integers(1, 255))]
    return pl.SaPayload([draw(proposals(n)) for n in numbers])


@st.composite
def selectors(draw):
    v6 = draw(st.booleans())
    size = 16 if v6 else 4
    start, end = (ipaddress.ip_address(draw(st.binary(min_size=size, max_size=size))) for _ in range(2))
    ts_type = TsType.TS_IPV6_ADDR_RANGE if v6 else TsType.TS_IPV4_ADDR_RANGE
    return pl.TrafficSelector(ts_type, draw(u8), draw(u16), draw(u16), start, end)


@st.composite
def delete_payloads(draw):
    protocol = draw(st.sampled_from([ProtocolId.IKE, ProtocolId.ESP, ProtocolId.AH]))
    if protocol == ProtocolId.IKE:
        return pl.DeletePayload(protocol, [])
    return pl.DeletePayload(protocol, draw(st.lists(st.binary(min_size=4, max_size=4), max_size=8)))


unknown_types = st.integers(1, 255).filter(lambda t: t not in KNOWN_TYPES)

payload_strategy = st.one_of(
    sa_payloads(),
    st.builds(pl.KePayload, u16, small_bytes),
    st.builds(pl.IdiPayload, u8, small_bytes),
    st.builds(pl.IdrPayload, u8, small_bytes),
    st.builds(pl.CertPayload, u8, small_bytes),
    st.builds(pl.CertReqPayload, u8, small_bytes),
    st.builds(pl.AuthPayload, u8, small_bytes),
    st.builds(pl.NoncePayload, st.binary(min_size=16, max_size=256)),
    st.builds(pl.NotifyPayload, u16, u8, st.binary(max_size=16), small_bytes),
    delete_payloads(),
    st.builds(pl.VendorIdPayload, small_bytes),
    st.builds(pl.TsiPayload, st.lists(selectors(), max_size=4)),
    st.builds(pl.TsrPayload, st.lists(selectors(), max_size=4)),
    st.builds(pl.CpPayload, u8, st.lists(st.builds(pl.ConfigAttribute, st.integers(0, 0x7FFF), small_bytes),
                                      max_size=4)),
    st.builds(pl.EapPayload, small_bytes),
    st.builds(pl.UnknownPayload, unknown_types, st.just(False), small_bytes),
)

messages = st.builds(
    pl.Message,
    st.binary(min_size=8, max_size=8), st.binary(min_size=8, max_size=8),
    st.sampled_from(list(ExchangeType)) | u8, st.booleans(), st.booleans(),
    st.integers(0, 0xFFFFFFFF), st.lists(payload_strategy, max_size=8),
)


def mutate(data: bytes, draw) -> bytes:
    """Truncate, flip bits or overwrite bytes of a valid datagram."""
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "extend"]))
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if kind == "extend":
        return data + draw(st.binary(min_size=1, max_size=8))
    index = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        return data[:index] + bytes([data[index] ^ (1 << draw(st.integers(0, 7)))]) + data[index + 1:]
    return data[:index] + draw(st.binary(min_size=1, max_size=4)) + data[index + 4:]


def only_ike_errors(call) -> None:
    try:
        call()
    except IkeError:
        pass


def decode_and_decrypt(data: bytes) -> None:
    msg = message.decode(data)
    if msg.payloads and isinstance(msg.payloads[-1], pl.EncryptedPayload):
        message.decrypt(data, msg, protector())


# -- round trips ------------------------------------------------------------------

@ROUND_TRIP
@given(messages)
def test_generated_messages_round_trip_in_clear(msg):
    assert message.decode(message.encode(msg)) == msg


@ROUND_TRIP
@given(messages)
def test_generated_messages_round_trip_protected(msg):
    data = message.encode(msg, protector())
    assert message.decrypt(data, message.decode(data), protector()) == msg


@ROUND_TRIP
@given(messages, st.integers(100, 400), st.randoms(use_true_random=False))
def test_generated_messages_round_trip_fragmented(msg, max_datagram, rnd):
    fragments = encode_fragments(msg, protector(), max_datagram)
    assert all(len(f) <= max_datagram for f in fragments)
    rnd.shuffle(fragments)
    reassembler = Reassembler(max_fragments=1000)
    results = [reassembler.add(f, message.decode(f), protector()) for f in fragments]
    assert results[-1] == msg


# -- hostile input ----------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_ike_errors(data):
    only_ike_errors(lambda: message.peek_header(data))
    only_ike_errors(lambda: decode_and_decrypt(data))


@FUZZ
@given(st.sampled_from(KNOWN_TYPES + [7, 200]), st.binary(max_size=300))
def test_valid_header_with_arbitrary_chain_raises_only_ike_errors(first_type, chain):
    data = message.header_for(pl.Message(b"i" * 8, b"r" * 8, 35, True, False, 1), first_type,
                              28 + len(chain)) + chain
    only_ike_errors(lambda: decode_and_decrypt(data))


@FUZZ
@given(messages, st.booleans(), st.data())
def test_mutated_messages_raise_only_ike_errors(msg, protect, data):
    datagram = message.encode(msg, protector() if protect else None)
    only_ike_errors(lambda: decode_and_decrypt(mutate(datagram, data.draw)))


@FUZZ
@given(st.sampled_from(KNOWN_TYPES + [0, 150]), st.binary(max_size=300))
def test_authenticated_garbage_raises_only_parse_errors(first_inner, plaintext):
    """The parser behind the ICV check: a peer with the keys can send anything."""
    msg = pl.Message(b"i" * 8, b"r" * 8, 35, True, False, 1)
    sealer = protector()
    payload_len = 4 + sealer.iv_len + len(plaintext) + sealer.icv_len
    aad = (message.header_for(msg, PayloadType.SK, 28 + payload_len)
           + bytes([first_inner, 0]) + payload_len.to_bytes(2, "big"))
    iv = sealer.next_iv()
    data = aad + iv + sealer.seal(iv, aad, plaintext)
    try:
        decode_and_decrypt(data)
    except IntegrityError:
        assert not plaintext  # only a ciphertext too short to hold a pad length byte
    except IkeError:
        pass


@FUZZ
@given(messages, st.data())
def test_mutated_fragments_raise_only_ike_errors(msg, data):
    fragments = encode_fragments(msg, protector(), 150)
    reassembler = Reassembler()
    index = data.draw(st.integers(0, len(fragments) - 1))
    fragments[index] = mutate(fragments[index], data.draw)
    for fragment in fragments:
        only_ike_errors(lambda: reassembler.add(fragment, message.decode(fragment), protector()))
