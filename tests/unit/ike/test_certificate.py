"""The sidecar's own X.509 parser (ipsec_mesh.ike.certificate) against cryptography.x509.

Differential: every field we expose equals cryptography's on generated certificates (EC P-256
and P-384, RSA 2048 and 3072, Ed25519; each extension present or absent, critical or not;
long SANs; UTCTime and GeneralizedTime; CA and leaf; path lengths). Mutation: 3,000
deterministic mutants of real certificates (byte edits and whole fields deleted, repeated
or swapped) either raise DerError or parse to what cryptography parses, and none validates.
"""

from __future__ import annotations

import base64
import ipaddress
import random
import warnings
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from ipsec_mesh.ike import der
from ipsec_mesh.ike.certificate import Certificate, certificates_from_pem
from ipsec_mesh.ike.certs import TrustStore
from ipsec_mesh.ike.der import DerError
from ipsec_mesh.ike.errors import CertificateError, ParseError
from ipsec_mesh.ike.identity import dn_text

NOW = datetime(2030, 6, 1, tzinfo=timezone.utc)
MUTANTS = 3000


@pytest.fixture(scope="module")
def keys():
    return {
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "rsa2048": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa3072": rsa.generate_private_key(public_exponent=65537, key_size=3072),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
    }


def _hash_for(key):
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA384()


def _build(rng: random.Random, keys, issuer_key, subject_key, issuer_name: x509.Name) -> x509.Certificate:
    ca = rng.random() < 0.4
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, f"node {rng.randrange(10**6)}")]
    if rng.random() < 0.5:
        attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ipsec, mesh+test <x>"),
                  x509.NameAttribute(NameOID.COUNTRY_NAME, "CH")]
    subject = x509.Name(attrs)
    start = NOW - timedelta(days=rng.choice([1, 400, 20000]))  # 20000 days back: UTCTime in the 1970s
    end = NOW + timedelta(days=rng.choice([1, 30, 10000]))  # 10000 days on: GeneralizedTime after 2050
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(subject_key.public_key())
               .serial_number(rng.choice([1, 2**63, 2**159 - 1, rng.randrange(1, 2**159)]))
               .not_valid_before(start).not_valid_after(end))
    if rng.random() < 0.8:
        path = rng.choice([None, 0, 1, 7]) if ca else None
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path), critical=rng.random() < 0.7)
    if rng.random() < 0.7:
        flags = {f: rng.random() < 0.5 for f in ("digital_signature", "content_commitment", "key_encipherment",
                                                   "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign")}
        extra = {"encipher_only": flags["key_agreement"] and rng.random() < 0.5, "decipher_only": False}
        builder = builder.add_extension(x509.KeyUsage(**flags, **extra), critical=rng.random() < 0.7)
    if rng.random() < 0.7:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()),
                                        critical=False)
    if rng.random() < 0.8:
        count = rng.choice([1, 3, 100])
        names: list[x509.GeneralName] = []
        for i in range(count):
            kind = rng.randrange(4)
            if kind == 0:
                names.append(x509.DNSName(f"pod-{i}." + "long-label." * rng.choice([1, 20]) + "mesh"))
            elif kind == 1:
                names.append(x509.RFC822Name(f"user{i}@mesh.test"))
            elif kind == 2:
                names.append(x509.IPAddress(ipaddress.ip_address(rng.choice([f"10.0.0.{i % 250}", f"fd00::{i}"]))))
            else:
                names.append(x509.UniformResourceIdentifier(f"spiffe://mesh.test/ns/n{i}/sa/s"))
        names = list(dict.fromkeys(names))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=rng.random() < 0.3)
    if rng.random() < 0.3:
        builder = builder.add_extension(x509.ExtendedKeyUsage([x509.ObjectIdentifier("1.3.6.1.5.5.7.3.17")]),
                                        critical=rng.random() < 0.5)
    if rng.random() < 0.3:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"),
            critical=rng.random() < 0.5)
    return builder.sign(issuer_key, _hash_for(issuer_key))


def _generated(keys, count: int, seed: int) -> list[x509.Certificate]:
    rng = random.Random(seed)
    names = list(keys)
    certs = []
    for _ in range(count):
        issuer_key, subject_key = keys[rng.choice(names)], keys[rng.choice(names)]
        issuer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
        certs.append(_build(rng, keys, issuer_key, subject_key, issuer_name))
    return certs


def assert_same_fields(ours: Certificate, theirs: x509.Certificate) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ours.der == theirs.public_bytes(Encoding.DER)
        assert ours.tbs == theirs.tbs_certificate_bytes
        assert ours.signature == theirs.signature
        assert ours.signature_oid == theirs.signature_algorithm_oid.dotted_string
        assert ours.version == theirs.version.value
        assert ours.serial_number == theirs.serial_number
        assert ours.issuer == theirs.issuer.public_bytes()
        assert ours.subject == theirs.subject.public_bytes()
        assert dn_text(ours.subject) == theirs.subject.rfc4514_string()
        assert ours.not_before == int(theirs.not_valid_before_utc.timestamp())
        assert ours.not_after == int(theirs.not_valid_after_utc.timestamp())
        assert _spki(ours) == _spki(theirs)  # both load the key lazily, and fail alike
        extensions = theirs.extensions
        assert [(e.oid, e.critical) for e in ours.extensions] == [(e.oid.dotted_string, e.critical) for e in extensions]
        _same_extensions(ours, extensions)


def _spki(cert) -> bytes | str:
    try:
        return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, UnsupportedAlgorithm):
        return "unloadable"


def _value(extensions: x509.Extensions, kind):
    try:
        return extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _same_extensions(ours: Certificate, extensions: x509.Extensions) -> None:
    bc = _value(extensions, x509.BasicConstraints)
    assert (ours.basic_constraints is None) == (bc is None)
    if bc is not None:
        assert (ours.basic_constraints.ca, ours.basic_constraints.path_length) == (bc.ca, bc.path_length)
    ku = _value(extensions, x509.KeyUsage)
    assert (ours.key_usage is None) == (ku is None)
    if ku is not None:
        for bit, flag in enumerate(("digital_signature", "content_commitment", "key_encipherment",
                                    "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign")):
            assert ours.has_key_usage(bit) == getattr(ku, flag)
        if ku.key_agreement:
            assert (ours.has_key_usage(7), ours.has_key_usage(8)) == (ku.encipher_only, ku.decipher_only)
    ski = _value(extensions, x509.SubjectKeyIdentifier)
    assert ours.subject_key_identifier == (ski.digest if ski is not None else None)
    san = _value(extensions, x509.SubjectAlternativeName)
    assert (ours.subject_alt_names is None) == (san is None)
    if san is not None:
        mine = ours.subject_alt_names
        assert list(mine.dns) == san.get_values_for_type(x509.DNSName)
        assert list(mine.email) == san.get_values_for_type(x509.RFC822Name)
        assert list(mine.ip) == [a.packed for a in san.get_values_for_type(x509.IPAddress)]
        assert list(mine.uri) == san.get_values_for_type(x509.UniformResourceIdentifier)


def test_generated_certificates_parse_to_cryptographys_fields(keys):
    certs = _generated(keys, 120, seed=14)
    times = set()
    for cert in certs:
        ours = Certificate.from_der(cert.public_bytes(Encoding.DER))
        assert_same_fields(ours, cert)
        times.add(der.read_single(cert.tbs_certificate_bytes).value.count(b"\x18\x0f"))
    assert times >= {0, 1}  # both UTCTime-only and GeneralizedTime certificates were made


def test_pem_bundle_and_signatures_of_every_key_type(keys):
    rng = random.Random(5)
    issuer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
    for issuer_key in keys.values():
        cert = _build(rng, keys, issuer_key, keys["p256"], issuer_name)
        ours = Certificate.from_der(cert.public_bytes(Encoding.DER))
        assert ours.is_signed_by(issuer_key.public_key())
        others = [k for k in keys.values() if k is not issuer_key]
        assert not any(ours.is_signed_by(k.public_key()) for k in others)
    pem = b"header text\n" + b"".join(c.public_bytes(Encoding.PEM) for c in _generated(keys, 3, seed=1))
    assert len(certificates_from_pem(pem)) == 3
    with pytest.raises(DerError):
        certificates_from_pem(b"-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n")


def _restructure(rng: random.Random, data: bytes) -> bytes:
    """Delete, repeat or swap whole fields of the TBS or of one of its SEQUENCE fields, lengths kept right."""
    tbs, algorithm, signature = der.children(der.read_single(data).value)
    fields = [t.encoded for t in der.children(tbs.value)]
    at = rng.randrange(len(fields))
    inner = der.read_single(fields[at])
    if rng.random() < 0.5 and inner.tag in (der.SEQUENCE, 0xA3) and inner.value:
        parts = [t.encoded for t in der.children(inner.value)]
        fields[at] = der.encode_tlv(inner.tag, b"".join(_shuffle_one(rng, parts)))
    else:
        for _ in range(rng.randint(1, 3)):
            fields = _shuffle_one(rng, fields) or fields
    return der.encode_sequence(der.encode_sequence(*fields), algorithm.encoded, signature.encoded)


def _shuffle_one(rng: random.Random, items: list[bytes]) -> list[bytes]:
    i, j = rng.randrange(len(items)), rng.randrange(len(items))
    operation = rng.randrange(3)
    if operation == 0:
        return items[:i] + items[i + 1:]
    if operation == 1:
        return items[:i] + [items[i]] + items[i:]
    items = list(items)
    items[i], items[j] = items[j], items[i]
    return items


def _mutate(rng: random.Random, data: bytes) -> bytes:
    if rng.random() < 0.15:
        return _restructure(rng, data)
    data = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:  # flip a bit
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncate
        del data[rng.randrange(len(data)):]
    elif kind == 2:  # edit a length octet (the octet after a tag-looking byte)
        spots = [i + 1 for i in range(len(data) - 1) if data[i] in (0x30, 0x31, 0x02, 0x03, 0x04, 0x06, 0xA0, 0xA3)]
        data[rng.choice(spots)] = rng.choice([0x00, 0x7F, 0x80, 0x81, 0x84, 0x85, 0xFF, rng.randrange(256)])
    elif kind == 3:  # nested-length bomb spliced in
        depth = rng.randrange(1, 200)
        bomb = b"\x30\x84\xff\xff\xff\xff" * depth if rng.random() < 0.5 else b"\x30\x80" * depth
        at = rng.randrange(len(data))
        data[at:at] = bomb
    elif kind == 4:  # trailing bytes, or a byte inserted
        at = rng.choice([len(data), rng.randrange(len(data))])
        data[at:at] = bytes([rng.randrange(256)])
    else:  # swap a byte with a DER-significant value
        data[rng.randrange(len(data))] = rng.choice([0x00, 0x80, 0xFF, 0x17, 0x18, 0x01, 0x05])
    return bytes(data)


def test_mutants_raise_only_der_error_or_parse_as_cryptography_does_and_never_validate(keys):
    root_key = keys["p256"]
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mutation root")])
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
            .public_key(root_key.public_key()).serial_number(1)
            .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(root_key, hashes.SHA256()))
    store = TrustStore([Certificate.from_der(root.public_bytes(Encoding.DER))])
    rng = random.Random(1414)
    bases = []
    for cert in _generated(keys, 12, seed=77):
        leaf = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(root_name)
                .public_key(cert.public_key()).serial_number(cert.serial_number)
                .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=1)))
        for ext in cert.extensions:
            if ext.oid.dotted_string != "1.3.6.1.4.1.99999.1" and not isinstance(ext.value, x509.KeyUsage):
                leaf = leaf.add_extension(ext.value, critical=ext.critical and not isinstance(ext.value, x509.BasicConstraints))
        bases.append(leaf.sign(root_key, hashes.SHA256()).public_bytes(Encoding.DER))
    for base in bases:  # the unmutated leaves do validate: the mutants below fail for their mutation
        assert store.validate([Certificate.from_der(base)], NOW.timestamp())
    outcomes = {"refused": 0, "parsed": 0}
    for _ in range(MUTANTS):
        base = rng.choice(bases)
        mutant = _mutate(rng, base)
        if mutant == base:
            continue
        try:
            ours = Certificate.from_der(mutant)
        except DerError:
            outcomes["refused"] += 1
            continue
        except Exception as exc:  # anything but the typed error is a bug
            raise AssertionError(f"{type(exc).__name__} on mutant {mutant.hex()}") from exc
        outcomes["parsed"] += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = x509.load_der_x509_certificate(mutant)
        assert_same_fields(ours, theirs)
        with pytest.raises(CertificateError):
            store.validate([ours], NOW.timestamp())
    assert outcomes["refused"] > MUTANTS // 2 and outcomes["parsed"] > 0, outcomes


@pytest.mark.parametrize("hex_der, why", [
    ("3003020100", "not a certificate"),
    ("30800000", "indefinite length"),
    ("308100", "non-minimal length"),
    ("3082000100", "non-minimal long length"),
    ("0201", "truncated"),
    ("1f0100", "multi-byte tag"),
])
def test_malformed_der_raises_the_typed_error(hex_der, why):
    with pytest.raises(DerError):
        Certificate.from_der(bytes.fromhex(hex_der))
    assert issubclass(DerError, ParseError)


@pytest.mark.parametrize("tag, value", [
    (0x17, b"300101000000+0100"),  # zone offset
    (0x17, b"3001010000Z"),  # no seconds
    (0x18, b"20300101000000.5Z"),  # fractional seconds
    (0x18, b"20300230000000Z"),  # 30 February
    (0x18, b"2030010124000Z0"),
    (0x17, b"30 101000000Z"),
    (0x17, b"3+0101000000Z"),
])
def test_times_are_parsed_strictly(tag, value):
    with pytest.raises(DerError):
        der.read_time(der.Tlv(tag, value, b""))


def test_time_values():
    assert der.read_time(der.Tlv(0x17, b"700101000000Z", b"")) == 0
    assert der.read_time(der.Tlv(0x17, b"491231235959Z", b"")) == 2524607999  # YY < 50 is 20YY
    assert der.read_time(der.Tlv(0x18, b"20000229120000Z", b"")) == 951825600  # leap day
    assert der.read_time(der.Tlv(0x18, b"99991231235959Z", b"")) == 253402300799


def test_time_text_inverts_read_time():
    rng = random.Random(3)
    for seconds in [0, 951825600, 2524607999, 253402300799, *(rng.randrange(0, 253402300800) for _ in range(500))]:
        text = der.time_text(seconds)
        assert text == datetime.fromtimestamp(seconds, timezone.utc).isoformat(sep=" ")
        digits = text[:19].replace("-", "").replace(":", "").replace(" ", "")
        assert der.read_time(der.Tlv(der.GENERALIZED_TIME, digits.encode() + b"Z", b"")) == seconds


@pytest.mark.parametrize("hex_value", ["", "0001", "ff80"])
def test_integers_must_be_minimal(hex_value):
    with pytest.raises(DerError):
        der.read_integer(bytes.fromhex(hex_value))


@pytest.mark.parametrize("hex_value", ["", "08", "01", "0101", "0781"])
def test_bit_strings_are_strict(hex_value):
    with pytest.raises(DerError):
        der.read_bit_string(bytes.fromhex(hex_value))


def test_oids_are_bounded_and_minimal():
    with pytest.raises(DerError):
        der.oid_to_dotted(b"\x2a\x80\x01")
    with pytest.raises(DerError):
        der.oid_to_dotted(b"\x2a" + b"\x81" * 70 + b"\x01")


# -- security review: each strict rule on an otherwise valid certificate ------------------------
def _rebuilt(cert: x509.Certificate, edit, algorithm: bytes | None = None) -> bytes:
    """`cert` with its TBS fields edited by `edit(list of TLV encodings)`, outer parts as they
    were (the signature algorithm replaced in both places when `algorithm` is given)."""
    outer = der.children(der.read_single(cert.public_bytes(Encoding.DER)).value)
    fields = [t.encoded for t in der.children(outer[0].value)]
    if algorithm is not None:
        fields[2] = algorithm
    tbs = der.encode_sequence(*edit(fields))
    return der.encode_sequence(tbs, algorithm or outer[1].encoded, outer[2].encoded)


def _extensions_field(*extensions: bytes) -> bytes:
    return der.encode_explicit(3, der.encode_sequence(*extensions))


def _extension(oid: str, value: bytes, critical: bytes = b"") -> bytes:
    return der.encode_sequence(der.encode_oid(oid), critical, der.encode_tlv(der.OCTET_STRING, value))


@pytest.fixture(scope="module")
def plain(keys):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plain")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(keys["p256"].public_key())
            .serial_number(7).not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(keys["p256"], hashes.SHA256()))


BC_EMPTY = der.encode_sequence()
SAN_ONE = der.encode_sequence(der.encode_tlv(0x82, b"a.mesh"))


@pytest.mark.parametrize("why, edit", [
    ("duplicate extension (RFC 5280 4.2)", lambda f: f[:-1] + [_extensions_field(
        _extension("2.5.29.17", SAN_ONE), _extension("2.5.29.17", SAN_ONE))]),
    ("critical FALSE written out", lambda f: f[:-1] + [_extensions_field(
        _extension("2.5.29.19", BC_EMPTY, b"\x01\x01\x00"))]),
    ("BOOLEAN neither 00 nor FF", lambda f: f[:-1] + [_extensions_field(
        _extension("2.5.29.19", BC_EMPTY, b"\x01\x01\x01"))]),
    ("cA FALSE written out", lambda f: f[:-1] + [_extensions_field(
        _extension("2.5.29.19", der.encode_sequence(b"\x01\x01\x00")))]),
    ("negative pathLenConstraint", lambda f: f[:-1] + [_extensions_field(
        _extension("2.5.29.19", der.encode_sequence(b"\x01\x01\xff", b"\x02\x01\xff")))]),
    ("empty extensions", lambda f: f[:-1] + [_extensions_field()]),
    ("negative serial", lambda f: [f[0], der.encode_integer(-7), *f[2:]]),
    ("zero serial", lambda f: [f[0], der.encode_integer(0), *f[2:]]),
    ("21-octet serial", lambda f: [f[0], der.encode_integer(2**167), *f[2:]]),
    ("non-minimal serial", lambda f: [f[0], b"\x02\x02\x00\x07", *f[2:]]),
    ("version v1 written out", lambda f: [der.encode_explicit(0, der.encode_integer(0)), *f[1:]]),
    ("version 4", lambda f: [der.encode_explicit(0, der.encode_integer(3)), *f[1:]]),
    ("TBS signature algorithm other than the outer one",
     lambda f: [f[0], f[1], der.encode_sequence(der.encode_oid("1.2.840.10045.4.3.3")), *f[3:]]),
    ("unknown field after the key", lambda f: f + [der.encode_explicit(4, b"")]),
    ("version and only five fields", lambda f: f[:6]),
    ("non-ASCII dNSName", lambda f: f[:-1] + [_extensions_field(
        _extension("2.5.29.17", der.encode_sequence(der.encode_tlv(0x82, "é.mesh".encode()))))]),
    ("iPAddress of 5 octets", lambda f: f[:-1] + [_extensions_field(
        _extension("2.5.29.17", der.encode_sequence(der.encode_tlv(0x87, b"\x0a\x00\x00\x01\x00"))))]),
    ("trailing bytes in an extension value", lambda f: f[:-1] + [_extensions_field(
        _extension("2.5.29.17", SAN_ONE + b"\x00"))]),
    ("PrintableString with '@'", lambda f: [*f[:5], der.encode_sequence(der.encode_set(der.encode_sequence(
        der.encode_oid("2.5.4.3"), der.encode_tlv(0x13, b"a@b")))), *f[6:]]),
])
def test_strict_rules_refuse(plain, why, edit):
    with pytest.raises(DerError):
        Certificate.from_der(_rebuilt(plain, edit))


@pytest.mark.parametrize("algorithm", [
    der.encode_sequence(der.encode_oid("1.2.840.10045.4.3.2"), der.NULL_TLV),  # ECDSA takes none
    der.encode_sequence(der.encode_oid("1.3.101.112"), der.NULL_TLV),  # nor does Ed25519
    der.encode_sequence(der.encode_oid("1.2.840.113549.1.1.11"), der.encode_integer(0)),  # RSA: NULL only
])
def test_signature_algorithm_parameters_are_strict(plain, algorithm):
    with pytest.raises(DerError):
        Certificate.from_der(_rebuilt(plain, lambda f: f, algorithm))


def test_rsa_signature_algorithm_with_or_without_null(plain):
    for algorithm in (der.encode_sequence(der.encode_oid("1.2.840.113549.1.1.11"), der.NULL_TLV),
                      der.encode_sequence(der.encode_oid("1.2.840.113549.1.1.11"))):
        assert Certificate.from_der(_rebuilt(plain, lambda f: f, algorithm)).signature_oid == "1.2.840.113549.1.1.11"


def test_strict_rules_start_from_a_certificate_we_accept(plain):
    assert Certificate.from_der(_rebuilt(plain, lambda f: f)).der == plain.public_bytes(Encoding.DER)


def test_trailing_bytes_after_the_certificate_refused(plain):
    with pytest.raises(DerError):
        Certificate.from_der(plain.public_bytes(Encoding.DER) + b"\x00")
    with pytest.raises(DerError):  # and a PEM block holding them
        certificates_from_pem(b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(
            plain.public_bytes(Encoding.DER) + b"\x00") + b"-----END CERTIFICATE-----\n")


@pytest.mark.parametrize("signer, sign_hash, pss", [
    ("ecdsa-sha224", hashes.SHA224(), False),
    ("ecdsa-sha3-256", hashes.SHA3_256(), False),
    ("rsa-pkcs1-sha512", hashes.SHA512(), False),
    ("rsa-pss-sha256", hashes.SHA256(), True),
    ("rsa-pss-sha384", hashes.SHA384(), True),
    ("dsa-sha256", hashes.SHA256(), False),
    ("ed448", None, False),
])
def test_every_signature_algorithm_verify_directly_issued_by_took(keys, signer, sign_hash, pss):
    """What cryptography verified before, through the hazmat keys: and never with another key."""
    from cryptography.hazmat.primitives.asymmetric import dsa, ed448, padding

    issuer_key = {"ecdsa": keys["p384"], "rsa": keys["rsa2048"],
                  "dsa": dsa.generate_private_key(1024) if signer.startswith("dsa") else None,
                  "ed448": ed448.Ed448PrivateKey.generate() if signer == "ed448" else None}[signer.split("-")[0]]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, signer)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(keys["p256"].public_key())
               .serial_number(3).not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1)))
    extra = {"rsa_padding": padding.PSS(padding.MGF1(sign_hash), padding.PSS.DIGEST_LENGTH)} if pss else {}
    theirs = builder.sign(issuer_key, sign_hash, **extra)
    ours = Certificate.from_der(theirs.public_bytes(Encoding.DER))
    assert_same_fields(ours, theirs)
    assert ours.is_signed_by(issuer_key.public_key())
    assert not ours.is_signed_by(keys["p256"].public_key())
    assert ours.signature_hash() == (type(sign_hash) if sign_hash else None)
