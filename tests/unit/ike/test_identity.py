import ipaddress

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_mesh.ike import Identity, der
from ipsec_mesh.ike.constants import IdType
from ipsec_mesh.ike.errors import IdentityError
from ipsec_mesh.ike.identity import dn_text, name_equal
from ipsec_mesh.ike.payloads import IdiPayload, IdPayload, IdrPayload


@pytest.mark.parametrize("text, id_type, data", [
    ("fqdn:web-0.shop.pod.mesh.test", IdType.ID_FQDN, b"web-0.shop.pod.mesh.test"),
    ("email:alice@mesh.test", IdType.ID_RFC822_ADDR, b"alice@mesh.test"),
    ("ipv4:10.0.0.1", IdType.ID_IPV4_ADDR, bytes([10, 0, 0, 1])),
    ("ipv6:fd00::1", IdType.ID_IPV6_ADDR, ipaddress.IPv6Address("fd00::1").packed),
    ("keyid:0a0b0c", IdType.ID_KEY_ID, b"\x0a\x0b\x0c"),
])
def test_parse_typed_and_print_round_trip(text, id_type, data):
    identity = Identity.parse(text)
    assert (identity.id_type, identity.data) == (id_type, data)
    assert str(identity) == text
    assert Identity.parse(str(identity)) == identity


@pytest.mark.parametrize("text, id_type", [
    ("a.b.c", IdType.ID_FQDN),
    ("bob@example.org", IdType.ID_RFC822_ADDR),
    ("192.0.2.7", IdType.ID_IPV4_ADDR),
    ("2001:db8::7", IdType.ID_IPV6_ADDR),
    ("CN=moon,O=strongSwan", IdType.ID_DER_ASN1_DN),
])
def test_parse_infers_type_without_prefix(text, id_type):
    assert Identity.parse(text).id_type == id_type


def test_dn_parses_rfc4514_to_der_name():
    identity = Identity.parse("dn:CN=moon,O=strongSwan,C=CH")
    expected = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "strongSwan"),
        x509.NameAttribute(NameOID.COMMON_NAME, "moon"),
    ])
    assert identity.data == expected.public_bytes()
    assert str(identity) == "dn:CN=moon,O=strongSwan,C=CH"


@pytest.mark.parametrize("text", [
    "", "   ", "ipv4:300.1.1.1", "ipv4:fd00::1", "ipv6:10.0.0.1", "fqdn:bad..name", "fqdn:-bad.name",
    "fqdn:ünïcode.example", "fqdn:" + "a" * 64 + ".example", "fqdn:" + ".".join(["abcdefgh"] * 30),
    "dn:not a dn", "dn:C=TooLong", "keyid:zz", "keyid:", "email:@mesh.test", "email:a b@mesh.test",
    "email:alice@", "x@bad..domain",
])
def test_parse_rejects_junk_with_typed_error(text):
    with pytest.raises(IdentityError):
        Identity.parse(text)


def test_to_payload_direction_and_body():
    identity = Identity.parse("ipv4:10.1.2.3")
    idi, idr = identity.to_payload(True), identity.to_payload(False)
    assert type(idi) is IdiPayload and type(idr) is IdrPayload
    assert idi.body() == bytes([1, 0, 0, 0, 10, 1, 2, 3])
    assert Identity.from_payload(idr) == identity


@pytest.mark.parametrize("id_type, data", [
    (IdType.ID_IPV4_ADDR, b"\x0a\x00\x00"),
    (IdType.ID_IPV6_ADDR, b"\x00" * 4),
    (IdType.ID_FQDN, "é.example".encode()),
    (IdType.ID_FQDN, b""),
    (IdType.ID_FQDN, b"*.ns.mesh"),  # wildcards are patterns, never identities on the wire
    (IdType.ID_RFC822_ADDR, b"*@mesh.test"),
    (IdType.ID_DER_ASN1_DN, b"\x30\x05\x31\x03\x30\x01"),
    (IdType.ID_DER_ASN1_DN, b"\x30\x84\xff\xff\xff\xff"),
    (IdType.ID_DER_ASN1_DN, b"garbage"),
    (IdType.ID_DER_ASN1_DN, Identity.parse("dn:CN=*,O=x").data),
    (IdType.ID_DER_ASN1_GN, b"\x82\x03a.b"),
    (IdType.ID_KEY_ID, b""),
    (99, b"x"),
])
def test_from_payload_validates(id_type, data):
    with pytest.raises(IdentityError):
        Identity.from_payload(IdPayload(id_type, data))


def test_from_payload_accepts_printable_string_dn():
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "moon", _type=x509.name._ASN1Type.PrintableString)])
    identity = Identity.from_payload(IdPayload(IdType.ID_DER_ASN1_DN, name.public_bytes()))
    assert identity.data == name.public_bytes()
    assert identity.matches("dn:CN=MOON")  # same DN although the string types differ


@pytest.mark.parametrize("identity, pattern, expected", [
    ("fqdn:web-0.shop.pod.mesh.test", "fqdn:web-0.shop.pod.mesh.test", True),
    ("fqdn:Web-0.Shop.pod.mesh.test", "web-0.shop.pod.mesh.test", True),
    ("fqdn:web-0.shop.pod.mesh.test", "*.shop.pod.mesh.test", True),
    ("fqdn:a.b.shop.pod.mesh.test", "*.shop.pod.mesh.test", True),
    ("fqdn:shop.pod.mesh.test", "*.shop.pod.mesh.test", False),
    ("fqdn:web-0.evilshop.pod.mesh.test", "*.shop.pod.mesh.test", False),
    ("fqdn:web-0.shop.pod.mesh.test", "web-1.shop.pod.mesh.test", False),
    ("email:alice@Mesh.Test", "*@mesh.test", True),
    ("email:alice@mesh.test", "alice@mesh.test", True),
    ("email:Alice@mesh.test", "alice@mesh.test", False),  # local parts are case-sensitive
    ("email:alice@other.test", "*@mesh.test", False),
    ("email:alice@a.mesh.test", "*@*.mesh.test", True),
    ("ipv4:10.1.2.3", "10.1.2.3", True),
    ("ipv4:10.1.2.3", "10.0.0.0/8", True),
    ("ipv4:10.1.2.3", "ipv4:11.0.0.0/8", False),
    ("ipv6:fd00::5", "fd00::/64", True),
    ("ipv4:10.1.2.3", "10.1.2.4", False),
    ("ipv4:10.1.2.3", "fqdn:a.b", False),
    ("fqdn:a.b", "*", True),
    ("ipv6:fd00::5", "%any", True),
    ("dn:CN=moon,O=strongSwan", "dn:CN=Moon,  O=strongswan", False),  # not RFC 4514 syntax -> no match
    ("dn:CN=moon,O=strongSwan", "dn:CN=MOON,O=strongswan", True),
    ("dn:CN=moon,O=strongSwan", "dn:CN=*,O=strongSwan", True),
    ("dn:CN=moon,O=strongSwan", "dn:CN=*,O=other", False),
    ("dn:CN=moon,O=strongSwan", "dn:O=strongSwan,CN=moon", False),  # RDN order matters
    ("dn:CN=moon+OU=x,O=s", "dn:OU=x+CN=moon,O=s", True),  # inside an RDN it does not
    ("dn:CN=moon,O=strongSwan", "dn:CN=moon", False),
    ("keyid:0102", "keyid:0102", True),
])
def test_matches(identity, pattern, expected):
    assert Identity.parse(identity).matches(pattern) is expected
    try:
        as_identity = Identity.parse(pattern)
    except IdentityError:
        return
    assert Identity.parse(identity).matches(as_identity) is expected


@settings(max_examples=300, deadline=None)
@given(id_type=st.sampled_from([1, 2, 3, 5, 9, 10, 11, 0, 255]), data=st.binary(max_size=80))
def test_from_payload_never_leaks_untyped_errors(id_type, data):
    try:
        identity = Identity.from_payload(IdPayload(id_type, data))
    except IdentityError:
        return
    assert Identity.from_payload(identity.to_payload(True)) == identity
    str(identity)  # printable


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_parse_never_leaks_untyped_errors(text):
    try:
        identity = Identity.parse(text)
    except IdentityError:
        return
    assert identity.matches(identity) or identity.is_pattern()


# -- DER Names printed, validated and chained without cryptography.x509, as it did ------------
# attributes whose default string type is UTF8String (any text encodes)
_DN_OIDS = ["2.5.4.3", "2.5.4.10", "2.5.4.11", "2.5.4.7", "2.5.4.8", "2.5.4.9",
            "0.9.2342.19200300.100.1.1", "1.3.6.1.4.1.9.9"]
_DN_VALUE = st.text(alphabet=st.sampled_from(list("ab Z09é,+\\\"<>;#=*\0") + ["字"]), min_size=1, max_size=12)


@st.composite
def _x509_names(draw):
    rdns = []
    for _ in range(draw(st.integers(1, 4))):
        oids = draw(st.lists(st.sampled_from(_DN_OIDS), min_size=1, max_size=3, unique=True))
        rdns.append(x509.RelativeDistinguishedName(
            [x509.NameAttribute(x509.ObjectIdentifier(oid), draw(_DN_VALUE)) for oid in oids]))
    if draw(st.booleans()):
        rdns.append(x509.RelativeDistinguishedName([x509.NameAttribute(x509.NameOID.COUNTRY_NAME, "CH")]))
    return x509.Name(rdns)


@settings(max_examples=300, deadline=None)
@given(_x509_names())
def test_dn_text_and_validation_are_cryptographys(name):
    data = name.public_bytes()
    parsed = x509.Name.from_bytes(data)  # multi-valued RDNs in DER (sorted) order, as we read them
    assert dn_text(data) == parsed.rfc4514_string()
    assert Identity.validated(IdType.ID_DER_ASN1_DN, data).value_text() == parsed.rfc4514_string()


@settings(max_examples=100, deadline=None)
@given(_x509_names(), st.booleans())
def test_name_equal_is_cryptographys_name_equality(name, printable):
    # the same names with other string types compare equal, as cryptography's Name does
    retyped = x509.Name([x509.RelativeDistinguishedName([
        x509.NameAttribute(a.oid, a.value, x509.name._ASN1Type.BMPString if not printable
                           else x509.name._ASN1Type.UTF8String) for a in rdn]) for rdn in name.rdns])
    assert name_equal(name.public_bytes(), retyped.public_bytes()) == (name == retyped)
    shorter = x509.Name(name.rdns[:-1]) if len(name.rdns) > 1 else x509.Name([])
    assert name_equal(name.public_bytes(), shorter.public_bytes()) == (name == shorter)


@pytest.mark.parametrize("attributes", [
    [("2.5.4.6", "CHE")],  # countryName must be 2 characters
    [("2.5.4.3", "")],  # commonName 1..64
    [("2.5.4.3", "x" * 65)],
    [("2.5.4.3", "a"), ("2.5.4.3", "a")],  # the same attribute twice in one RDN
])
def test_dn_validation_refuses_what_cryptographys_name_refused(attributes):
    with pytest.raises(ValueError):  # what cryptography.x509 said before
        x509.RelativeDistinguishedName([x509.NameAttribute(x509.ObjectIdentifier(o), v) for o, v in attributes])
    rdn = der.encode_set(*(der.encode_sequence(der.encode_oid(o), der.encode_tlv(0x0C, v.encode()))
                           for o, v in attributes))
    with pytest.raises(IdentityError):
        Identity.validated(IdType.ID_DER_ASN1_DN, der.encode_sequence(rdn))


def _cryptographys_dn(text: str) -> bytes | None:
    """What Identity.parse made of RFC 4514 text when cryptography.x509 parsed it (None: refused)."""
    try:
        data = x509.Name.from_rfc4514_string(text.strip()).public_bytes()  # parse strips the text
        return Identity.validated(IdType.ID_DER_ASN1_DN, data).data
    except (ValueError, IdentityError):
        return None


def _ours(text: str) -> bytes | None:
    try:
        return Identity.parse("dn:" + text).data
    except IdentityError:
        return None


_RFC4514_PIECES = st.sampled_from(["CN", "O", "OU", "C", "DC", "UID", "STREET", "cn", "2.5.4.3", "1.2.840.113549.1.9.1",
                                   "3.1", "0.39", "=", ",", "+", "\\", "\\,", "\\+", "\\ ", "\\\\", "\\c3\\a9", "\\zz",
                                   "\\00", "#", "#61", "#c3", "#6162", " ", "a", "é", "字", '"', "<", ";", "CH", "x" * 65])


@settings(max_examples=800, deadline=None)
@given(st.lists(_RFC4514_PIECES, max_size=12).map("".join))
def test_rfc4514_text_parses_as_cryptography_parsed_it(text):
    assert _ours(text) == _cryptographys_dn(text)


_RFC4514_TYPES = st.sampled_from(["CN", "O", "OU", "C", "DC", "UID", "STREET", "L", "ST", "2.5.4.3", "2.5.4.5",
                                  "1.2.840.113549.1.9.1", "1.3.6.1.4.1.311.60.2.1.3", "2.5.4.46", "1.2.3.4"])
_RFC4514_VALUES = st.lists(st.sampled_from(["a", "é", "字", "\\,", "\\+", "\\ ", "\\\\", "\\c3\\a9", "\\00", "#6162",
                                            "#c3a9", " ", "=", "#", "CH", "x" * 30, '\\"', "\\<", "\\;", "@", "'"]),
                           max_size=3).map("".join)
_RFC4514_NAMES = st.lists(st.lists(st.tuples(_RFC4514_TYPES, _RFC4514_VALUES), min_size=1, max_size=2),
                          min_size=1, max_size=3).map(
    lambda rdns: ",".join("+".join(f"{t}={v}" for t, v in rdn) for rdn in rdns))


@settings(max_examples=800, deadline=None)
@given(_RFC4514_NAMES)
def test_well_formed_rfc4514_names_parse_as_cryptography_parsed_them(text):
    assert _ours(text) == _cryptographys_dn(text)


@pytest.mark.parametrize("text", [
    "CN=moon,O=strongSwan,C=CH", "CN=a\\,b\\+c", "CN=\\ a\\ ,O=b", "CN=#616263", "CN=\\c3\\a9", "O=", "CN=x+O=y",
    "O=a=b", "2.5.4.3=x", "DC=mesh,DC=test", "UID=7,STREET=Main St",
])
def test_rfc4514_examples_parse_as_cryptography_parsed_them(text):
    assert _ours(text) is not None
    assert _ours(text) == _cryptographys_dn(text)
