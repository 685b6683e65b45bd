import hashlib
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_mesh.ike import Identity, der
from ipsec_mesh.ike.certs import (
    MAX_CERT_PAYLOADS,
    TrustStore,
    _PathSearch,
    certificate_payloads,
    certificate_service_account,
    identity_matches_certificate,
    parse_cert_payloads,
)
from ipsec_mesh.ike.constants import CertEncoding
from ipsec_mesh.ike.errors import CertificateError
from ipsec_mesh.ike.payloads import CertPayload
from ipsec_mesh.meshapi.identity import service_account_uri
from tests.support.pki import KEY_TYPES, Issued, MeshPki, build_certificate, key_usage, name, new_key, ours

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
T = NOW.timestamp()  # what TrustStore.validate takes: POSIX seconds
UNKNOWN_EXTENSION = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")


@pytest.fixture(scope="module")
def pki():
    return MeshPki(intermediate=True, now=NOW)


@pytest.fixture(scope="module")
def flat_pki():
    return MeshPki(now=NOW)


@pytest.fixture(scope="module")
def store(pki):
    return TrustStore([pki.root.cert])


def assert_rejected(store, chain, *words, now=NOW):
    with pytest.raises(CertificateError) as info:
        store.validate([ours(c) if isinstance(c, x509.Certificate) else c for c in chain], now.timestamp())
    for word in words:
        assert word in str(info.value)


def sign_with(issuer: Issued, common_name: str, **kwargs) -> Issued:
    """A certificate for a new P-256 key issued by `issuer`, with build_certificate's options."""
    key = new_key("p256")
    options = dict(not_before=NOW - timedelta(hours=1), not_after=NOW + timedelta(hours=1),
                   key_usage=key_usage(digital_signature=True))
    options.update(kwargs)
    cert = build_certificate(subject=name(common_name), public_key=key.public_key(),
                             issuer_name=issuer.x509.subject, issuer_key=issuer.key, **options)
    return Issued(key, cert)


# -- valid chains ------------------------------------------------------------------------------
@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_valid_chain_through_intermediate(pki, store, key_type):
    leaf = pki.issue("leaf", key_type=key_type, dns=["leaf.ns.pod.mesh.test"])
    assert store.validate(leaf.chain, T) == leaf.cert


def test_valid_chain_directly_under_root(flat_pki):
    leaf = flat_pki.issue("leaf")
    assert TrustStore([flat_pki.root.cert]).validate(leaf.chain, T) == leaf.cert


def test_extra_and_unordered_certificates_are_tolerated(pki, flat_pki, store):
    leaf = pki.issue("leaf")
    stranger = flat_pki.issue("stranger").cert
    assert store.validate([leaf.cert, stranger, flat_pki.root.cert, *leaf.intermediates], T) == leaf.cert


def test_trusted_end_entity_certificate(flat_pki):
    leaf = flat_pki.issue("pinned")
    assert TrustStore([leaf.cert]).validate([leaf.cert], T) == leaf.cert


def test_from_pem(pki):
    pem = pki.root.cert_pem() + pki.intermediate.cert_pem()
    assert TrustStore.from_pem(pem).roots == [pki.root.cert, pki.intermediate.cert]
    with pytest.raises(CertificateError):
        TrustStore.from_pem(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")


# -- invalid chains ----------------------------------------------------------------------------
def test_expired_leaf(pki, store):
    leaf = pki.issue("old", not_before=NOW - timedelta(days=2), not_after=NOW - timedelta(seconds=1))
    assert_rejected(store, leaf.chain, "expired")


def test_not_yet_valid_leaf(pki, store):
    leaf = pki.issue("future", not_before=NOW + timedelta(seconds=1), not_after=NOW + timedelta(days=1))
    assert_rejected(store, leaf.chain, "not valid before")


def test_expired_intermediate(pki, store):
    old_ca = pki.issue_ca("old intermediate", NOW - timedelta(days=10), NOW - timedelta(days=1))
    leaf = sign_with(old_ca, "leaf")
    assert_rejected(store, [leaf.cert, old_ca.cert], "expired")


def test_expired_root(pki):
    leaf = pki.issue("leaf")
    assert_rejected(TrustStore([pki.root.cert]), leaf.chain, "expired", now=NOW + timedelta(days=400))


def test_wrong_root(pki):
    leaf = pki.issue("leaf")
    other = MeshPki(now=NOW)
    assert_rejected(TrustStore([other.root.cert]), leaf.chain, "untrusted")


def test_same_name_other_key_root(pki):
    """A root with the right name but another key: the signature check decides."""
    impostor_key = new_key("p256")
    impostor = build_certificate(subject=pki.root.x509.subject, public_key=impostor_key.public_key(),
                                 issuer_name=pki.root.x509.subject, issuer_key=impostor_key,
                                 not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=1),
                                 ca=True, key_usage=key_usage(key_cert_sign=True))
    leaf = pki.issue("leaf")
    assert_rejected(TrustStore([ours(impostor)]), leaf.chain, "bad signature")


def test_missing_intermediate(pki, store):
    leaf = pki.issue("leaf")
    assert_rejected(store, [leaf.cert], "no issuer found")


def test_non_ca_issuer(pki, store):
    fake_ca = pki.issue("not a CA")  # an end-entity certificate used as an issuer
    leaf = sign_with(fake_ca, "victim")
    assert_rejected(store, [leaf.cert, *fake_ca.chain], "not a CA")


def test_ca_without_key_cert_sign(pki, store):
    bad_ca = sign_with(pki.root, "signing-less CA", ca=True, key_usage=key_usage(digital_signature=True))
    leaf = sign_with(bad_ca, "leaf")
    assert_rejected(store, [leaf.cert, bad_ca.cert], "keyCertSign")


def test_path_length_constraint(pki, store):
    sub_ca = sign_with(pki.intermediate, "sub CA", ca=True, key_usage=key_usage(key_cert_sign=True))
    leaf = sign_with(sub_ca, "leaf")
    assert_rejected(store, [leaf.cert, sub_ca.cert, pki.intermediate.cert], "path length")


def test_leaf_key_usage_without_digital_signature(pki, store):
    leaf = sign_with(pki.intermediate, "leaf", key_usage=key_usage(key_cert_sign=True))
    assert_rejected(store, [leaf.cert, pki.intermediate.cert], "digitalSignature")


def test_leaf_without_key_usage_is_fine(pki, store):
    leaf = pki.issue("leaf", with_key_usage=False)
    assert store.validate(leaf.chain, T) == leaf.cert


def test_critical_unknown_extension_rejected(pki, store):
    critical = pki.issue("leaf", extra=[(UNKNOWN_EXTENSION, True)])
    assert_rejected(store, critical.chain, "critical extension", "1.3.6.1.4.1.99999.1")
    harmless = pki.issue("leaf", extra=[(UNKNOWN_EXTENSION, False)])
    assert store.validate(harmless.chain, T) == harmless.cert


def test_eku_is_not_required_nor_refused(pki, store):
    ipsec_ike = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.17")
    leaf = pki.issue("leaf", extra=[(x509.ExtendedKeyUsage([ipsec_ike]), True)])
    assert store.validate(leaf.chain, T) == leaf.cert


def test_tampered_signature(pki, store):
    leaf = pki.issue("leaf")
    encoded = bytearray(leaf.cert.der)
    encoded[-5] ^= 0x01  # inside the signature value
    tampered = x509.load_der_x509_certificate(bytes(encoded))
    assert_rejected(store, [tampered, *leaf.intermediates], "bad signature")


def test_tampered_body(pki, store):
    leaf = pki.issue("leaf", dns=["a.ns.pod.mesh.test"])
    encoded = leaf.cert.der.replace(b"a.ns.pod", b"b.ns.pod")
    assert_rejected(store, [x509.load_der_x509_certificate(encoded), *leaf.intermediates], "bad signature")


def _resign_with_sha1(cert: x509.Certificate, issuer_key) -> x509.Certificate:
    """cryptography refuses to sign with SHA-1, so swap the algorithm and re-sign by hand."""
    sha256_id, sha1_id = bytes.fromhex("300a06082a8648ce3d040302"), bytes.fromhex("300906072a8648ce3d0401")
    tbs_content = der.read_single(cert.tbs_certificate_bytes, der.SEQUENCE).value
    assert sha256_id in tbs_content
    tbs = der.encode_sequence(tbs_content.replace(sha256_id, sha1_id))
    signature = issuer_key.sign(tbs, ec.ECDSA(hashes.SHA1()))
    return x509.load_der_x509_certificate(
        der.encode_sequence(tbs, sha1_id, der.encode_tlv(0x03, b"\x00" + signature)))


def test_sha1_signed_certificate_refused(pki, store):
    leaf = pki.issue("sha1")
    sha1_cert = _resign_with_sha1(leaf.x509, pki.intermediate.key)
    assert isinstance(sha1_cert.signature_hash_algorithm, hashes.SHA1)
    assert_rejected(store, [sha1_cert, pki.intermediate.cert], "weak hash")


def test_chain_bounds(pki, store):
    leaf = pki.issue("leaf")
    with pytest.raises(CertificateError):
        store.validate([], T)
    with pytest.raises(CertificateError):
        store.validate([leaf.cert] * (MAX_CERT_PAYLOADS + 1), T)


def test_loops_between_cross_signed_cas_terminate(pki, store):
    """Two CAs that certify each other must not send path building round in circles."""
    key_a, key_b = new_key("p256"), new_key("p256")
    name_a, name_b = name("loop A"), name("loop B")
    common = dict(not_before=NOW - timedelta(hours=1), not_after=NOW + timedelta(hours=1), ca=True,
                  key_usage=key_usage(key_cert_sign=True))
    a_by_b = build_certificate(subject=name_a, public_key=key_a.public_key(), issuer_name=name_b,
                               issuer_key=key_b, **common)
    b_by_a = build_certificate(subject=name_b, public_key=key_b.public_key(), issuer_name=name_a,
                               issuer_key=key_a, **common)
    leaf = sign_with(Issued(key_a, a_by_b), "leaf")
    assert_rejected(store, [leaf.cert, a_by_b, b_by_a], "untrusted")


# -- CERTREQ -------------------------------------------------------------------------------------
def test_certreq_data_is_sha1_of_each_root_spki(pki, flat_pki):
    roots = [pki.root.cert, flat_pki.root.cert]
    expected = b"".join(
        hashlib.sha1(r.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).digest()
        for r in roots)
    store = TrustStore(roots)
    assert store.certreq_data() == expected and len(expected) == 40
    assert store.certreq_payload().encoding == CertEncoding.X509_SIGNATURE
    assert TrustStore([pki.root.cert]).requested_by(expected)
    assert not TrustStore([MeshPki(now=NOW).root.cert]).requested_by(expected)


# -- identity binding ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bound(pki):
    return pki.issue("web-0", dns=["web-0.shop.pod.mesh.test"], emails=["web@shop.mesh.test"],
                     ips=["10.1.2.3", "fd00::3"]).cert


@pytest.mark.parametrize("identity, expected", [
    ("fqdn:web-0.shop.pod.mesh.test", True),
    ("fqdn:WEB-0.shop.pod.mesh.test", True),
    ("fqdn:web-1.shop.pod.mesh.test", False),
    ("fqdn:*.shop.pod.mesh.test", False),  # a wildcard identity is not vouched for by a name
    ("email:web@shop.mesh.test", True),
    ("email:web@SHOP.mesh.test", True),
    ("email:other@shop.mesh.test", False),
    ("ipv4:10.1.2.3", True),
    ("ipv4:10.1.2.4", False),
    ("ipv6:fd00::3", True),
    ("ipv6:fd00::4", False),
    ("dn:CN=web-0,O=ipsec-mesh test", True),
    ("dn:CN=WEB-0,O=ipsec-mesh test", True),
    ("dn:CN=web-1,O=ipsec-mesh test", False),
    ("dn:CN=*,O=ipsec-mesh test", False),
    ("dn:CN=web-0", False),
])
def test_identity_matches_certificate(bound, identity, expected):
    assert identity_matches_certificate(Identity.parse(identity), bound) is expected


def test_identity_without_san(pki):
    cert = pki.issue("bare").cert
    assert not identity_matches_certificate(Identity.parse("fqdn:bare"), cert)
    assert identity_matches_certificate(Identity.parse("dn:CN=bare,O=ipsec-mesh test"), cert)


def test_key_id_matches_subject_key_identifier(bound):
    ski = x509.load_der_x509_certificate(bound.der).extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier).value.digest
    assert identity_matches_certificate(Identity.parse(f"keyid:{ski.hex()}"), bound)
    assert not identity_matches_certificate(Identity.parse("keyid:00"), bound)


# -- CERT payloads ---------------------------------------------------------------------------------
def test_cert_payload_round_trip(pki):
    leaf = pki.issue("leaf")
    payloads = certificate_payloads(leaf.chain)
    assert [p.encoding for p in payloads] == [CertEncoding.X509_SIGNATURE] * 2
    assert parse_cert_payloads(payloads) == leaf.chain


@pytest.mark.parametrize("payloads", [
    [CertPayload(CertEncoding.X509_SIGNATURE, b"garbage DER")],
    [CertPayload(CertEncoding.X509_SIGNATURE, b"\x30\x82\x01\x00" + b"\x00" * 10)],
    [CertPayload(CertEncoding.X509_SIGNATURE, b"")],
    [CertPayload(CertEncoding.X509_SIGNATURE, b"\x30" * 20000)],
    [CertPayload(CertEncoding.RAW_PUBLIC_KEY, b"\x30\x00")],
    [CertPayload(12, b"http://example/cert")],
])
def test_bad_cert_payloads(payloads):
    with pytest.raises(CertificateError):
        parse_cert_payloads(payloads)


def test_too_many_cert_payloads(pki):
    payload = certificate_payloads([pki.root.cert])[0]
    with pytest.raises(CertificateError):
        parse_cert_payloads([payload] * (MAX_CERT_PAYLOADS + 1))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_random_cert_payload_only_raises_certificate_error(data):
    try:
        certs = parse_cert_payloads([CertPayload(CertEncoding.X509_SIGNATURE, data)])
    except CertificateError:
        return
    with pytest.raises(CertificateError):  # whatever parsed, it is not trusted
        TrustStore([MeshPki(now=NOW).root.cert]).validate(certs, T)


# -- the PEM files for strongSwan -------------------------------------------------------------------
def test_write_swanctl_layout(tmp_path, pki):
    leaf = pki.issue("moon", key_type="ed25519", dns=["moon.ns.pod.mesh.test"])
    paths = pki.write_swanctl(tmp_path, leaf, "moon")
    assert {p.relative_to(tmp_path).parts[0] for p in paths.values()} == {"x509ca", "x509", "private"}
    assert x509.load_pem_x509_certificate(paths["cert"].read_bytes()) == leaf.x509
    assert x509.load_pem_x509_certificate(paths["ca"].read_bytes()) == pki.root.x509
    assert paths["key"].stat().st_mode & 0o077 == 0
    assert b"BEGIN PRIVATE KEY" in paths["key"].read_bytes()


def test_certificate_service_account(pki):
    uri = service_account_uri("shop", "web", "mesh.test")
    cert = pki.issue("web-0", dns=["web-0.shop.pod.mesh.test"], uris=[uri, "https://example.org/x"]).cert
    assert certificate_service_account(cert, "mesh.test") == ("shop", "web")
    assert certificate_service_account(cert, "other.test") is None
    two = pki.issue("two", uris=[uri, service_account_uri("shop", "db", "mesh.test")]).cert
    assert certificate_service_account(two, "mesh.test") is None  # ambiguous
    odd = pki.issue("odd", uris=["spiffe://mesh.test/ns/shop/sa/web/extra"]).cert
    assert certificate_service_account(odd, "mesh.test") is None
    assert certificate_service_account(pki.issue("none").cert, "mesh.test") is None


def test_mutually_certifying_certificates_cost_bounded_work(store):
    """Certificates that all certify each other: path search stops at its signature budget."""
    key = new_key("p256")
    same = name("hall of mirrors")
    mirrors = [build_certificate(subject=same, public_key=key.public_key(), issuer_name=same, issuer_key=key,
                                 not_before=NOW - timedelta(hours=1), not_after=NOW + timedelta(hours=1),
                                 ca=True, key_usage=key_usage(key_cert_sign=True)) for _ in range(6)]
    leaf = sign_with(Issued(key, mirrors[0]), "leaf")
    assert_rejected(store, [leaf.cert, *mirrors], "untrusted", "too many candidate paths")
    search = _PathSearch(store.roots, T)
    assert not search.reaches_root(leaf.cert, [ours(m) for m in mirrors], 0)
    assert search.signature_budget == 0
