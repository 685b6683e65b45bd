"""IKEv2 message codec: round trips, known encodings, errors, SK protection, strongSwan traffic."""

from __future__ import annotations

import ipaddress
import shutil
import struct
import subprocess

import pytest

from ipsec_mesh.ike import message
from ipsec_mesh.ike.constants import (
    AuthMethod,
    CertEncoding,
    EncrId,
    ExchangeType,
    IdType,
    KeId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
    TsType,
)
from ipsec_mesh.ike.errors import (
    IkeError,
    IntegrityError,
    InvalidMajorVersion,
    ParseError,
    UnsupportedCriticalPayload,
)
from ipsec_mesh.ike.payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    ConfigAttribute,
    CpPayload,
    DeletePayload,
    EapPayload,
    EncryptedFragment,
    EncryptedPayload,
    IdiPayload,
    IdrPayload,
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
    payload_type_of,
)
from tests.unit.ike.codec_helpers import AesGcmProtector, flip, load_capture, protector

SPI_I, SPI_R = bytes.fromhex("0102030405060708"), bytes.fromhex("1112131415161718")


def make_message(payloads, exchange=ExchangeType.IKE_AUTH, *, initiator=True, response=False,
                 message_id=1) -> Message:
    return Message(SPI_I, SPI_R, exchange, initiator, response, message_id, list(payloads))


def ike_proposal(number=1, spi=b"") -> Proposal:
    return Proposal(number, ProtocolId.IKE, spi, (
        Transform(TransformType.ENCR, EncrId.AES_GCM_16, 256),
        Transform(TransformType.ENCR, EncrId.AES_GCM_16, 128),
        Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
        Transform(TransformType.KE, KeId.CURVE25519),
    ))


def esp_proposal(number: int) -> Proposal:
    return Proposal(number, ProtocolId.ESP, b"\xc0\x01\x02\x03", (
        Transform(TransformType.ENCR, EncrId.CHACHA20_POLY1305),
        Transform(TransformType.ESN, 1),
        Transform(TransformType.ESN, 0),
    ))


SELECTORS = [
    TrafficSelector.for_network("10.1.0.0/16"),
    TrafficSelector.for_address("10.0.0.7", ip_protocol=6, start_port=443, end_port=443),
    TrafficSelector.for_network("fd00:1::/64"),
    TrafficSelector(TsType.TS_IPV6_ADDR_RANGE, 17, 0, 65535,
                    ipaddress.IPv6Address("2001:db8::1"), ipaddress.IPv6Address("2001:db8::ff")),
]

EVERY_PAYLOAD = [
    SaPayload([ike_proposal()]),
    SaPayload([ike_proposal(1), ike_proposal(2, spi=b"\xaa" * 8), esp_proposal(3)]),
    KePayload(KeId.CURVE25519, bytes(range(32))),
    IdiPayload(IdType.ID_FQDN, b"pod-a.ns.mesh"),
    IdrPayload(IdType.ID_IPV6_ADDR, ipaddress.IPv6Address("fd00::5").packed),
    CertPayload(CertEncoding.X509_SIGNATURE, b"\x30\x82" + b"c" * 300),
    CertReqPayload(CertEncoding.X509_SIGNATURE, b"h" * 40),
    AuthPayload(AuthMethod.DIGITAL_SIGNATURE, b"\x07sigalg" + b"s" * 64),
    NoncePayload(b"n" * 16),
    NoncePayload(b"N" * 256),
    NotifyPayload(NotifyType.COOKIE, data=b"cookie-value"),
    NotifyPayload(NotifyType.REKEY_SA, ProtocolId.ESP, b"\x01\x02\x03\x04"),
    NotifyPayload(60000, ProtocolId.NONE, b"", b"private"),
    DeletePayload(ProtocolId.IKE, []),
    DeletePayload(ProtocolId.ESP, [b"\x00\x00\x00\x01", b"\xff\xff\xff\xfe"]),
    DeletePayload(ProtocolId.AH, [b"abcd"]),
    VendorIdPayload(b"ipsec-mesh"),
    TsiPayload(SELECTORS),
    TsrPayload([SELECTORS[0]]),
    TsrPayload([]),
    CpPayload(1, [ConfigAttribute(1, b""), ConfigAttribute(8, b"\x00" * 17)]),
    EapPayload(b"\x01\x02\x00\x05\x01"),
    UnknownPayload(200, False, b"opaque"),
]


@pytest.mark.parametrize("payload", EVERY_PAYLOAD, ids=lambda pl: type(pl).__name__)
def test_every_payload_round_trips_in_clear(payload):
    msg = make_message([payload, NoncePayload(b"x" * 32)])
    assert message.decode(message.encode(msg)) == msg


def test_all_payloads_in_one_message_round_trip_in_clear_and_protected():
    msg = make_message(EVERY_PAYLOAD)
    assert message.decode(message.encode(msg)) == msg
    data = message.encode(msg, protector())
    assert message.decrypt(data, message.decode(data), protector()) == msg


def test_flags_map_to_initiator_and_response_bits():
    for initiator, response, flags in [(True, False, 0x08), (False, True, 0x20), (True, True, 0x28)]:
        data = message.encode(make_message([], initiator=initiator, response=response))
        header = message.peek_header(data)
        assert data[19] == flags and header.flags == flags
        assert (header.is_initiator, header.is_response) == (initiator, response)
        decoded = message.decode(data)
        assert (decoded.is_initiator, decoded.is_response) == (initiator, response)


# -- byte-exact encodings worked out by hand from RFC 7296 figures ------------------

def test_header_and_sa_known_encoding():
    msg = make_message([SaPayload([Proposal(1, ProtocolId.IKE, b"", (
        Transform(TransformType.ENCR, EncrId.AES_GCM_16, 256),
        Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
        Transform(TransformType.KE, KeId.CURVE25519)))])],
        exchange=ExchangeType.IKE_SA_INIT, message_id=0)
    expected = bytes.fromhex(
        "0102030405060708" "1112131415161718"  # SPIs
        "21" "20" "22" "08" "00000000" "00000044"  # next SA, v2.0, IKE_SA_INIT, I, id 0, 68 bytes
        "00" "00" "0028"  # SA: last payload, 40 bytes
        "00" "00" "0024" "01" "01" "00" "03"  # last proposal, 36 bytes, #1, IKE, no SPI, 3 transforms
        "03" "00" "000c" "01" "00" "0014" "800e" "0100"  # more, 12 bytes, ENCR 20, KEY_LENGTH(TV)=256
        "03" "00" "0008" "02" "00" "0005"  # more, PRF_HMAC_SHA2_256
        "00" "00" "0008" "04" "00" "001f"  # last, KE 31 (X25519)
    )
    assert message.encode(msg) == expected
    assert message.decode(expected) == msg


def test_simple_payload_known_encodings():
    spi_a, spi_b = bytes.fromhex("c0000001"), bytes.fromhex("c0000002")
    cases = [
        (KePayload(31, b"\xab" * 4), "22", "0000000c" "001f0000" "abababab"),
        (IdiPayload(IdType.ID_FQDN, b"a.b"), "23", "0000000b" "02000000" "612e62"),
        (AuthPayload(AuthMethod.SHARED_KEY_MIC, b"\x01\x02"), "27", "0000000a" "02000000" "0102"),
        (NotifyPayload(NotifyType.REKEY_SA, ProtocolId.ESP, spi_a), "29",
         "0000000c" "03" "04" "4009" "c0000001"),
        (NotifyPayload(NotifyType.INVALID_KE_PAYLOAD, data=b"\x00\x1f"), "29",
         "0000000a" "00" "00" "0011" "001f"),
        (DeletePayload(ProtocolId.ESP, [spi_a, spi_b]), "2a",
         "00000010" "03" "04" "0002" "c0000001" "c0000002"),
        (DeletePayload(ProtocolId.IKE, []), "2a", "00000008" "01" "00" "0000"),
        (TsiPayload([TrafficSelector.for_network("10.0.0.0/24", 6, 80, 80)]), "2c",
         "00000018" "01000000" "07" "06" "0010" "0050" "0050" "0a000000" "0a0000ff"),
        (CpPayload(2, [ConfigAttribute(1, b"\x0a\x00\x00\x05")]), "2f",
         "00000010" "02000000" "0001" "0004" "0a000005"),
    ]
    for payload, ptype, body in cases:
        data = message.encode(make_message([payload]))
        assert data[16] == int(ptype, 16)
        assert data[28:] == bytes.fromhex(body), payload
        assert message.decode(data).payloads == [payload]


def test_ipv6_selector_known_encoding():
    ts = TrafficSelector.for_network("fd00::/120")
    data = message.encode(make_message([TsrPayload([ts])]))
    assert data[28:].hex() == ("00000030" "01000000" "08" "00" "0028" "0000" "ffff"
                               "fd000000000000000000000000000000"
                               "fd0000000000000000000000000000ff")


def test_encrypted_payload_known_layout():
    msg = make_message([NoncePayload(b"n" * 16)])
    data = message.encode(msg, protector())
    plaintext = bytes.fromhex("00000014") + b"n" * 16 + b"\x00"  # inner chain + pad length 0
    assert data[16] == PayloadType.SK and len(data) == 28 + 4 + 8 + len(plaintext) + 16
    assert data[28:32] == bytes([PayloadType.NONCE, 0]) + (len(data) - 28).to_bytes(2, "big")
    iv = data[32:40]
    assert iv == (1).to_bytes(8, "big")
    # RFC 5282: AAD = IKE header + SK generic header; the rest is IV || ciphertext || ICV.
    assert AesGcmProtector(bytes(range(32)) + b"salt").open(iv, data[:32], data[40:]) == plaintext


# -- hostile and malformed input --------------------------------------------------

def clear_bytes(*payloads) -> bytes:
    return message.encode(make_message(payloads))


def with_chain(first_type: int, chain: bytes) -> bytes:
    """A header (right length) followed by a hand-made payload chain."""
    return message.header_for(make_message([]), first_type, 28 + len(chain)) + chain


def test_peek_header_rejects_short_long_and_bad_length():
    good = clear_bytes(NoncePayload(b"n" * 16))
    assert message.peek_header(good).length == len(good)
    for bad in [good[:27], good[:-1], good + b"\x00", b""]:
        with pytest.raises(ParseError):
            message.peek_header(bad)
    with pytest.raises(ParseError):
        message.peek_header(good[:24] + (len(good) + 1).to_bytes(4, "big") + good[28:])


def test_major_version_is_checked_and_minor_ignored():
    good = clear_bytes()
    for version in (0x10, 0x30):
        with pytest.raises(InvalidMajorVersion) as err:
            message.decode(good[:17] + bytes([version]) + good[18:])
        assert err.value.notify == NotifyType.INVALID_MAJOR_VERSION
    assert message.decode(good[:17] + b"\x21" + good[18:]) == message.decode(good)


def payload_bytes(body: bytes, next_type: int = 0, flags: int = 0) -> bytes:
    return bytes([next_type, flags]) + (4 + len(body)).to_bytes(2, "big") + body


def test_nonce_length_limits():
    for size in (15, 257):
        with pytest.raises(ParseError):
            message.decode(with_chain(PayloadType.NONCE, payload_bytes(b"n" * size)))
        with pytest.raises(ValueError):
            message.encode(make_message([NoncePayload(b"n" * size)]))


def test_unknown_payloads_critical_and_not():
    data = with_chain(150, b"\x00\x80\x00\x05z")
    with pytest.raises(UnsupportedCriticalPayload) as err:
        message.decode(data)
    assert err.value.payload_type == 150 and err.value.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
    kept = message.decode(with_chain(150, b"\x28\x00\x00\x05z" + b"\x00\x00\x00\x14" + b"n" * 16))
    assert kept.payloads == [UnknownPayload(150, False, b"z"), NoncePayload(b"n" * 16)]
    # a known payload with the critical bit is simply parsed
    assert message.decode(with_chain(PayloadType.NONCE, b"\x00\x80\x00\x14" + b"n" * 16)).payloads \
        == [NoncePayload(b"n" * 16)]


def test_unknown_critical_payload_inside_sk_is_reported_after_decryption():
    data = message.encode(make_message([UnknownPayload(151, True, b"")]), protector())
    with pytest.raises(UnsupportedCriticalPayload):
        message.decrypt(data, message.decode(data), protector())


@pytest.mark.parametrize("first_type, chain", [
    (PayloadType.NONCE, b"\x00\x00\x00\x03"),  # payload length < 4
    (PayloadType.NONCE, b"\x00\x00\x00\x40" + b"n" * 16),  # payload longer than the message
    (PayloadType.NONCE, b"\x00\x00\x00\x14" + b"n" * 16 + b"\x00"),  # trailing byte
    (PayloadType.NONCE, b"\x29\x00\x00\x14" + b"n" * 16),  # chain promises another payload
    (PayloadType.SK, b"\x00\x00\x00\x08abcd" + b"\x00\x00\x00\x14" + b"n" * 16),  # SK not last
    (PayloadType.SKF, b"\x00\x00\x00\x0c\x00\x03\x00\x02abcd"),  # fragment 3 of 2
    (PayloadType.SKF, b"\x00\x00\x00\x0c\x00\x00\x00\x02abcd"),  # fragment 0
    (PayloadType.SKF, b"\x00\x00\x00\x07\x00\x01\x00"),  # truncated SKF fields
    (PayloadType.DELETE, b"\x00\x00\x00\x0c\x01\x04\x00\x01abcd"),  # IKE delete with an SPI
    (PayloadType.DELETE, b"\x00\x00\x00\x10\x03\x08\x00\x01abcdefgh"),  # ESP SPI of 8 bytes
    (PayloadType.DELETE, b"\x00\x00\x00\x0c\x03\x04\x00\x02abcd"),  # count > SPIs
    (PayloadType.DELETE, b"\x00\x00\x00\x08\x07\x00\x00\x00"),  # unknown protocol
    (PayloadType.TSi, b"\x00\x00\x00\x18\x01\x00\x00\x00\x09\x00\x00\x10" + b"\x00" * 12),  # TS type 9
    (PayloadType.TSi, b"\x00\x00\x00\x18\x01\x00\x00\x00\x07\x00\x00\x28" + b"\x00" * 12),  # v4 len 40
    (PayloadType.TSi, b"\x00\x00\x00\x18\x02\x00\x00\x00\x07\x00\x00\x10" + b"\x00" * 12),  # count 2
    (PayloadType.TSi, b"\x00\x00\x00\x08\x21\x00\x00\x00"),  # 33 selectors claimed
    (PayloadType.KE, b"\x00\x00\x00\x06\x00\x1f"),  # KE body too short
    (PayloadType.NOTIFY, b"\x00\x00\x00\x0a\x03\x04\x40\x09ab"),  # SPI truncated
    (PayloadType.CP, b"\x00\x00\x00\x0c\x01\x00\x00\x00\x00\x01\x00\x09"),  # attribute truncated
    (PayloadType.SA, b"\x00\x00\x00\x04"),  # SA without proposals
])
def test_malformed_payloads_raise_parse_error(first_type, chain):
    with pytest.raises(ParseError):
        message.decode(with_chain(first_type, chain))


def sa_bytes(*proposals: bytes) -> bytes:
    body = b"".join((b"\x02" if i < len(proposals) - 1 else b"\x00") + b"\x00"
                    + (4 + len(prop)).to_bytes(2, "big") + prop for i, prop in enumerate(proposals))
    return with_chain(PayloadType.SA, b"\x00\x00" + (4 + len(body)).to_bytes(2, "big") + body)


def proposal_bytes(number: int, transforms: list[bytes], protocol=1, spi=b"") -> bytes:
    chain = b"".join((b"\x03" if i < len(transforms) - 1 else b"\x00") + b"\x00"
                     + (4 + len(t)).to_bytes(2, "big") + t for i, t in enumerate(transforms))
    return bytes([number, protocol, len(spi), len(transforms)]) + spi + chain


ENCR_GCM_256 = bytes.fromhex("01000014800e0100")
PRF_SHA256 = bytes.fromhex("02000005")


def test_sa_proposal_rules():
    good = proposal_bytes(1, [ENCR_GCM_256, PRF_SHA256])
    assert len(message.decode(sa_bytes(good)).payloads[0].proposals) == 1
    # an answer carries one proposal with the chosen number
    assert message.decode(sa_bytes(proposal_bytes(7, [PRF_SHA256]))).payloads[0].proposals[0].number == 7
    for bad in [
        sa_bytes(good, proposal_bytes(3, [PRF_SHA256])),  # numbering skips
        sa_bytes(proposal_bytes(0, [PRF_SHA256])),  # number 0
        sa_bytes(proposal_bytes(1, [])),  # no transforms
        sa_bytes(proposal_bytes(1, [PRF_SHA256], protocol=3)),  # ESP without SPI
        sa_bytes(proposal_bytes(1, [PRF_SHA256], spi=b"abcd")),  # IKE with 4-byte SPI
        sa_bytes(proposal_bytes(1, [bytes.fromhex("01000014000e00020100")])),  # KEY_LENGTH as TLV
        sa_bytes(proposal_bytes(1, [ENCR_GCM_256 + bytes.fromhex("800e0080")])),  # KEY_LENGTH twice
        sa_bytes(proposal_bytes(1, [bytes.fromhex("0100")])),  # transform shorter than 8
        sa_bytes(good[:-1]),  # truncated transform
    ]:
        with pytest.raises(ParseError):
            message.decode(bad)


def test_proposal_with_unknown_attribute_is_rejected_but_others_kept():
    unknown_attr = ENCR_GCM_256 + bytes.fromhex("8011" "0001")  # unknown TV attribute 17
    data = sa_bytes(proposal_bytes(1, [unknown_attr]), proposal_bytes(2, [ENCR_GCM_256]))
    [sa] = message.decode(data).payloads
    assert [prop.number for prop in sa.proposals] == [2]


def test_unknown_transform_type_is_kept_as_int():
    [sa] = message.decode(sa_bytes(proposal_bytes(1, [bytes.fromhex("f0000007")]))).payloads
    assert sa.proposals[0].transforms == (Transform(240, 7),)


def test_limits_on_counts():
    many = [NotifyPayload(NotifyType.INITIAL_CONTACT)] * (message.MAX_PAYLOADS + 1)
    with pytest.raises(ValueError):
        message.encode(make_message(many))
    chain = b"".join(b"\x29\x00\x00\x08\x00\x00\x40\x00" for _ in range(65))
    with pytest.raises(ParseError, match="more than 64 payloads"):
        message.decode(with_chain(PayloadType.NOTIFY, chain[:-8] + b"\x00" + chain[-7:]))
    too_many_proposals = sa_bytes(*[proposal_bytes(n, [PRF_SHA256]) for n in range(1, 66)])
    with pytest.raises(ParseError, match="proposals"):
        message.decode(too_many_proposals)
    with pytest.raises(ParseError, match="transforms"):
        message.decode(sa_bytes(proposal_bytes(1, [PRF_SHA256] * 65)))
    with pytest.raises(ParseError):
        message.peek_header(b"\x00" * 70000)


def test_encoder_refuses_impossible_objects():
    for payload in [DeletePayload(ProtocolId.ESP, [b"12345678"]), DeletePayload(ProtocolId.IKE, [b"a"]),
                    TsiPayload([TrafficSelector(TsType.TS_IPV4_ADDR_RANGE, 0, 0, 1,
                                                ipaddress.IPv6Address("::"), ipaddress.IPv6Address("::"))]),
                    SaPayload([]), KePayload(70000, b"")]:
        with pytest.raises(ValueError):
            message.encode(make_message([payload]))
    with pytest.raises(TypeError):
        message.encode(make_message([object()]))


# -- SK protection ----------------------------------------------------------------

def test_protected_round_trip_keeps_header_fields():
    msg = make_message([IdiPayload(IdType.ID_FQDN, b"a"), AuthPayload(2, b"m" * 32)],
                       exchange=ExchangeType.INFORMATIONAL, initiator=False, response=True,
                       message_id=0xFFFFFFFE)
    data = message.encode(msg, protector())
    outer = message.decode(data)
    assert isinstance(outer.payloads[-1], EncryptedPayload)
    assert outer.payloads[-1].first_inner == PayloadType.IDi
    assert message.decrypt(data, outer, protector()) == msg


def test_empty_protected_message_round_trips():
    msg = make_message([], exchange=ExchangeType.INFORMATIONAL)
    data = message.encode(msg, protector())
    assert message.decrypt(data, message.decode(data), protector()) == msg


def sealed_datagram(msg: Message, plaintext: bytes, *, clear: list = ()) -> bytes:
    """Header, `clear` payloads, then SK around `plaintext` exactly as given (padding included)."""
    first_inner = message.encode_chain(msg.payloads)[0]
    clear_first, clear_chain = message.encode_chain(list(clear))
    if clear:  # the last clear payload points at SK
        last = len(clear_chain) - len(message.encode_chain(list(clear)[-1:])[1])
        clear_chain = clear_chain[:last] + bytes([PayloadType.SK]) + clear_chain[last + 1:]
    payload_len = 4 + 8 + len(plaintext) + 16
    aad = (message.header_for(msg, clear_first if clear else PayloadType.SK,
                              28 + len(clear_chain) + payload_len)
           + clear_chain + bytes([first_inner, 0]) + payload_len.to_bytes(2, "big"))
    sealer = protector()
    iv = sealer.next_iv()
    return aad + iv + sealer.seal(iv, aad, plaintext)


def inner_plaintext(msg: Message) -> bytes:
    return message.encode_chain(msg.payloads)[1]


def test_clear_payloads_before_sk_are_kept_first_and_authenticated():
    msg = make_message([NoncePayload(b"n" * 16)])
    clear = [VendorIdPayload(b"clear"), NotifyPayload(NotifyType.COOKIE, data=b"c")]
    data = sealed_datagram(msg, inner_plaintext(msg) + b"\x00", clear=clear)
    outer = message.decode(data)
    assert outer.payloads[:2] == clear
    assert message.decrypt(data, outer, protector()).payloads == clear + msg.payloads
    tampered = data.replace(b"clear", b"clean")
    with pytest.raises(IntegrityError):
        message.decrypt(tampered, message.decode(tampered), protector())


def test_every_tampered_byte_is_rejected():
    data = message.encode(make_message([NoncePayload(b"n" * 16)]), protector())
    structural = {16, 17, 24, 25, 26, 27, 30, 31}  # next payload, version, lengths: caught by decode
    for index in range(len(data)):
        for mask in (0x01, 0x80):
            tampered = flip(data, index, mask)
            try:
                msg = message.decode(tampered)
            except ParseError:
                assert index in structural, (index, mask)
                continue
            with pytest.raises(IntegrityError):
                message.decrypt(tampered, msg, protector())


def test_wrong_key_and_truncation_fail_integrity():
    data = message.encode(make_message([NoncePayload(b"n" * 16)]), protector())
    with pytest.raises(IntegrityError):
        message.decrypt(data, message.decode(data), AesGcmProtector(b"\x01" * 36))
    short = message.header_for(make_message([]), PayloadType.SK, 28 + 4 + 24) + b"\x00\x00\x00\x1c" + b"x" * 24
    with pytest.raises(IntegrityError):
        message.decrypt(short, message.decode(short), protector())


def test_padding_is_accepted_and_bad_padding_is_a_parse_error_after_authentication():
    msg = make_message([NoncePayload(b"n" * 16)])
    chain = inner_plaintext(msg)
    padded = sealed_datagram(msg, chain + b"\xee" * 5 + b"\x05")
    assert message.decrypt(padded, message.decode(padded), protector()) == msg
    for plaintext in (chain + b"\xff",  # pad length beyond the plaintext
                      chain + b"\x01",  # pad length eats the nonce: inner chain broken
                      b"\x00" * 3 + chain + b"\x00"):  # garbage inner chain
        sealed = sealed_datagram(msg, plaintext)
        with pytest.raises(ParseError):
            message.decrypt(sealed, message.decode(sealed), protector())


def test_nested_sk_inside_sk_is_a_parse_error():
    inner = EncryptedPayload(PayloadType.NONCE, b"x" * 30)
    data = message.encode(make_message([inner]), protector())
    with pytest.raises(ParseError):
        message.decrypt(data, message.decode(data), protector())


def test_decrypt_needs_an_sk_payload():
    data = clear_bytes(NoncePayload(b"n" * 16))
    with pytest.raises(ParseError):
        message.decrypt(data, message.decode(data), protector())


def test_received_sk_and_skf_reencode_as_received():
    for payload in (EncryptedPayload(PayloadType.IDi, b"r" * 40),
                    EncryptedFragment(PayloadType.NONE, 2, 3, b"r" * 40)):
        msg = make_message([payload])
        assert message.decode(message.encode(msg)) == msg


def test_strip_non_esp_marker():
    assert message.strip_non_esp_marker(b"\x00\x00\x00\x00ike") == b"ike"
    assert message.strip_non_esp_marker(b"\x00\x00\x10\x01esp") is None
    assert message.strip_non_esp_marker(b"\xff") is None


# -- real strongSwan traffic (tests/data/strongswan/capture.sh) ----------------------

def test_strongswan_ike_sa_init_decodes_and_reencodes_byte_exact():
    packets, _ = load_capture()
    request, response = packets[0].payload, packets[1].payload
    req, resp = message.decode(request), message.decode(response)
    assert req.exchange == ExchangeType.IKE_SA_INIT and req.is_initiator and not req.is_response
    assert resp.is_response and not resp.is_initiator and resp.spi_i == req.spi_i
    assert req.spi_r == bytes(8) and resp.spi_r != bytes(8)
    [proposal] = req.first(SaPayload).proposals
    assert proposal.transforms == (Transform(TransformType.ENCR, EncrId.AES_GCM_16, 256),
                                   Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
                                   Transform(TransformType.KE, KeId.CURVE25519))
    assert req.first(KePayload).group == KeId.CURVE25519 and len(req.first(KePayload).data) == 32
    assert req.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
    assert len(req.notify(NotifyType.NAT_DETECTION_SOURCE_IP).data) == 20
    assert message.encode(req) == request and message.encode(resp) == response


def test_strongswan_ike_auth_response_decrypts_on_port_4500():
    packets, keys = load_capture()
    [response] = [pkt for pkt in packets if pkt.src == "10.77.0.2" and pkt.dst_port == 4500]
    data = message.strip_non_esp_marker(response.payload)
    assert data is not None
    outer = message.decode(data)
    assert isinstance(outer.payloads[-1], EncryptedPayload)
    with pytest.raises(IntegrityError):  # the initiator's key does not open the responder's message
        message.decrypt(data, outer, AesGcmProtector(keys["Sk_ei"]))
    inner = message.decrypt(data, outer, AesGcmProtector(keys["Sk_er"]))
    assert inner.exchange == ExchangeType.IKE_AUTH and inner.is_response and inner.message_id == 1
    assert inner.first(IdrPayload).data == b"responder.test"
    assert inner.first(AuthPayload).method == AuthMethod.SHARED_KEY_MIC
    assert len(inner.first(AuthPayload).data) == 32  # prf-HMAC-SHA2-256 output
    with pytest.raises(IkeError):
        message.decrypt(flip(data, len(data) - 20), message.decode(flip(data, len(data) - 20)),
                        AesGcmProtector(keys["Sk_er"]))


# -- independent check of our encoder: Wireshark's IKEv2 dissector ------------------

def pcap_of(datagrams: list[bytes]) -> bytes:
    """A pcap (LINKTYPE_IPV4) with each datagram as UDP 500 -> 500."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 228)
    for datagram in datagrams:
        udp = struct.pack("!HHHH", 500, 500, 8 + len(datagram), 0) + datagram
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + udp
        out += struct.pack("<IIII", 0, 0, len(ip), len(ip)) + ip
    return out


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_dissects_our_encoding_without_errors(tmp_path):
    well_formed = [pl for pl in EVERY_PAYLOAD if not isinstance(pl, (CertPayload, AuthPayload, EapPayload))]
    well_formed += [AuthPayload(AuthMethod.SHARED_KEY_MIC, b"m" * 32),
                    EapPayload(b"\x02\x07\x00\x09\x01user")]
    msg = make_message(well_formed)
    (tmp_path / "ours.pcap").write_bytes(pcap_of([message.encode(msg)]))
    result = subprocess.run(
        ["tshark", "-r", str(tmp_path / "ours.pcap"), "-T", "fields", "-E", "separator=|",
         "-e", "isakmp.typepayload", "-e", "_ws.expert", "-e", "isakmp.ts.type",
         "-e", "isakmp.notify.msgtype"],
        capture_output=True, text=True, timeout=120, check=True)
    types, expert, ts_types, notify_types = result.stdout.strip().split("|")
    substructures = {2, 3}  # proposals and transforms are listed too
    assert [int(t) for t in types.split(",") if int(t) not in substructures] == \
        [p_type for p_type in map(payload_type_of, well_formed)]
    assert expert == ""
    assert ts_types.split(",") == ["7", "7", "8", "8", "7"]
    assert notify_types.split(",") == [str(int(NotifyType.COOKIE)), str(int(NotifyType.REKEY_SA)), "60000"]
