import hashlib
import hmac
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsec_mesh.ike import der
from ipsec_mesh.ike.auth import (
    CertCredential,
    PskCredential,
    make_auth,
    our_hash_algorithms,
    signed_octets,
    verify_auth,
)
from ipsec_mesh.ike.constants import AuthMethod, HashAlgorithm
from ipsec_mesh.ike.errors import AuthenticationFailed
from ipsec_mesh.ike.payloads import AuthPayload, IdiPayload
from ipsec_mesh.ike.signatures import Family, SignatureAlgorithm
from tests.support.pki import KEY_TYPES, MeshPki, name, new_key


def prf(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


OCTETS = b"IKE_SA_INIT message" + b"N" * 32 + b"M" * 32
PSK = bytes(range(32))


# RFC 7427 Appendix A (A.3.2, A.3.3, A.3.4, A.4.3, A.1.2) and RFC 8410 section 3:
# the DER AlgorithmIdentifiers, copied from the RFC text (hex dumps).
RFC7427_ECDSA_SHA256 = "300a 0608 2a86 48ce 3d04 0302"
RFC7427_ECDSA_SHA384 = "300a 0608 2a86 48ce 3d04 0303"
RFC7427_ECDSA_SHA512 = "300a 0608 2a86 48ce 3d04 0304"
RFC7427_RSASSA_PSS_SHA256 = (
    "3041 0609 2a86 4886 f70d 0101 0a30 34a0"
    "0f30 0d06 0960 8648 0165 0304 0201 0500"
    "a11c 301a 0609 2a86 4886 f70d 0101 0830"
    "0d06 0960 8648 0165 0304 0201 0500 a203"
    "0201 20"
)
RFC7427_SHA256_WITH_RSA = "300d 0609 2a86 4886 f70d 0101 0b05 00"
RFC8410_ED25519 = "3005 0603 2b65 70"


def unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.fixture(scope="module")
def pki():
    return MeshPki()


@pytest.fixture(scope="module", params=KEY_TYPES)
def credential(request, pki):
    issued = pki.issue(request.param, key_type=request.param, dns=["x.ns.pod.mesh.test"])
    return CertCredential(issued.key, issued.chain)


# -- signed octets and PSK -----------------------------------------------------------------
def test_signed_octets_layout():
    idp = IdiPayload(2, b"a.b")
    sk_p = b"k" * 32
    assert signed_octets(b"MSG", b"NONCE", prf, sk_p, idp) == (
        b"MSG" + b"NONCE" + hmac.new(sk_p, b"\x02\x00\x00\x00a.b", hashlib.sha256).digest())
    with_int = signed_octets(b"MSG", b"NONCE", prf, sk_p, idp, int_auth=b"INTAUTH")
    assert with_int.endswith(b"INTAUTH") and with_int[:-7] == signed_octets(b"MSG", b"NONCE", prf, sk_p, idp)


def test_psk_auth_known_value():
    # RFC 7296 section 2.15, computed here independently of the module.
    key_pad = hmac.new(PSK, b"Key Pad for IKEv2", hashlib.sha256).digest()
    expected = hmac.new(key_pad, OCTETS, hashlib.sha256).digest()
    auth = make_auth(PskCredential(PSK), OCTETS, prf, frozenset())
    assert auth.method == AuthMethod.SHARED_KEY_MIC
    assert auth.data == expected
    verify_auth(auth, OCTETS, prf, psks=[PSK])


def test_psk_wrong_key_or_octets_fails():
    auth = make_auth(PskCredential(PSK), OCTETS, prf, frozenset())
    with pytest.raises(AuthenticationFailed):
        verify_auth(auth, OCTETS, prf, psks=[b"another key of 32 bytes........."])
    with pytest.raises(AuthenticationFailed):
        verify_auth(auth, OCTETS + b"x", prf, psks=[PSK])
    with pytest.raises(AuthenticationFailed):
        verify_auth(auth, OCTETS, prf, psks=[])


def test_psk_any_of_several_for_rotation():
    old, new = b"o" * 32, b"n" * 32
    for psk in (old, new):
        auth = make_auth(PskCredential(psk), OCTETS, prf, frozenset())
        verify_auth(auth, OCTETS, prf, psks=[old, new])
        verify_auth(auth, OCTETS, prf, psks=[new, old])


def test_short_psk_refused_and_never_printed():
    with pytest.raises(ValueError):
        PskCredential(b"short")
    assert PSK.hex() not in repr(PskCredential(PSK)) and str(PSK) not in repr(PskCredential(PSK))


def test_psk_auth_without_signature_key():
    auth = make_auth(PskCredential(PSK), OCTETS, prf, frozenset())
    with pytest.raises(AuthenticationFailed):
        verify_auth(AuthPayload(AuthMethod.DIGITAL_SIGNATURE, auth.data), OCTETS, prf, psks=[PSK])


# -- signatures ----------------------------------------------------------------------------
def test_sign_verify_round_trip(credential):
    auth = make_auth(credential, OCTETS, prf, our_hash_algorithms())
    assert auth.method == AuthMethod.DIGITAL_SIGNATURE
    verify_auth(auth, OCTETS, prf, peer_public_key=credential.leaf.public_key())


def test_tampered_octets_fail(credential):
    auth = make_auth(credential, OCTETS, prf, our_hash_algorithms())
    with pytest.raises(AuthenticationFailed):
        verify_auth(auth, OCTETS[:-1] + b"?", prf, peer_public_key=credential.leaf.public_key())


def test_tampered_signature_fails(credential):
    auth = make_auth(credential, OCTETS, prf, our_hash_algorithms())
    broken = AuthPayload(auth.method, auth.data[:-1] + bytes([auth.data[-1] ^ 1]))
    with pytest.raises(AuthenticationFailed):
        verify_auth(broken, OCTETS, prf, peer_public_key=credential.leaf.public_key())


@pytest.mark.parametrize("other_type", ["p256", "p384", "ed25519"])
def test_wrong_key_fails(credential, other_type):
    auth = make_auth(credential, OCTETS, prf, our_hash_algorithms())
    with pytest.raises(AuthenticationFailed):
        verify_auth(auth, OCTETS, prf, peer_public_key=new_key(other_type).public_key())


def test_signature_method_needs_public_key(credential):
    auth = make_auth(credential, OCTETS, prf, our_hash_algorithms())
    with pytest.raises(AuthenticationFailed):
        verify_auth(auth, OCTETS, prf, psks=[PSK])


def test_cert_credential_rejects_foreign_key(pki):
    issued = pki.issue("x")
    with pytest.raises(ValueError):
        CertCredential(new_key("p256"), issued.chain)
    with pytest.raises(ValueError):
        CertCredential(issued.key, [])


def _algorithm_of(auth: AuthPayload) -> bytes:
    return auth.data[1:1 + auth.data[0]]


@pytest.mark.parametrize("key_type, peer_algs, expected", [
    ("p256", {2, 3, 4}, RFC7427_ECDSA_SHA256),
    ("p256", {3}, RFC7427_ECDSA_SHA384),
    ("p384", {2, 3, 4}, RFC7427_ECDSA_SHA384),
    ("p384", {4, 2}, RFC7427_ECDSA_SHA512),
    ("p384", {2}, RFC7427_ECDSA_SHA256),
    ("rsa", {2, 3, 4, 5}, RFC7427_RSASSA_PSS_SHA256),
    ("ed25519", {5}, RFC8410_ED25519),
    ("ed25519", {2, 5}, RFC8410_ED25519),
])
def test_hash_negotiation_and_rfc_encodings(pki, key_type, peer_algs, expected):
    issued = pki.issue("n", key_type=key_type)
    credential = CertCredential(issued.key, issued.chain)
    auth = make_auth(credential, OCTETS, prf, frozenset(peer_algs))
    assert auth.data[0] == len(unhex(expected))
    assert _algorithm_of(auth) == unhex(expected)
    verify_auth(auth, OCTETS, prf, peer_public_key=issued.cert.public_key())


@pytest.mark.parametrize("key_type, peer_algs", [
    ("ed25519", {2, 3, 4}),  # RFC 8420 needs the identity "hash"
    ("p256", {1}),  # SHA-1 only
    ("rsa", {5}),
])
def test_no_common_hash_fails(pki, key_type, peer_algs):
    issued = pki.issue("n", key_type=key_type)
    with pytest.raises(AuthenticationFailed):
        make_auth(CertCredential(issued.key, issued.chain), OCTETS, prf, frozenset(peer_algs))


@pytest.mark.parametrize("family, hash_alg, expected", [
    (Family.ECDSA, HashAlgorithm.SHA2_256, RFC7427_ECDSA_SHA256),
    (Family.ECDSA, HashAlgorithm.SHA2_384, RFC7427_ECDSA_SHA384),
    (Family.ECDSA, HashAlgorithm.SHA2_512, RFC7427_ECDSA_SHA512),
    (Family.RSA_PSS, HashAlgorithm.SHA2_256, RFC7427_RSASSA_PSS_SHA256),
    (Family.RSA_PKCS1, HashAlgorithm.SHA2_256, RFC7427_SHA256_WITH_RSA),
    (Family.ED25519, HashAlgorithm.IDENTITY, RFC8410_ED25519),
])
def test_algorithm_identifiers_match_rfc_and_decode(family, hash_alg, expected):
    algorithm = SignatureAlgorithm(family, hash_alg)
    assert algorithm.identifier() == unhex(expected)
    decoded = SignatureAlgorithm.from_identifier(unhex(expected))
    assert (decoded.family, decoded.hash_alg) == (family, hash_alg)


@pytest.mark.parametrize("key_type, hash_cls, family, hash_alg, rsa_padding", [
    ("p256", hashes.SHA256, Family.ECDSA, HashAlgorithm.SHA2_256, None),
    ("p384", hashes.SHA384, Family.ECDSA, HashAlgorithm.SHA2_384, None),
    ("ed25519", None, Family.ED25519, HashAlgorithm.IDENTITY, None),
    ("rsa", hashes.SHA256, Family.RSA_PSS, HashAlgorithm.SHA2_256,
     padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)),
    ("rsa", hashes.SHA256, Family.RSA_PKCS1, HashAlgorithm.SHA2_256, padding.PKCS1v15()),
])
def test_algorithm_identifiers_match_openssl_certificate_encoding(key_type, hash_cls, family, hash_alg,
                                                                  rsa_padding):
    """OpenSSL writes the same AlgorithmIdentifier into an X.509 signatureAlgorithm field."""
    key = new_key(key_type)
    now = datetime.now(timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name("s")).issuer_name(name("s"))
               .public_key(key.public_key()).serial_number(1).not_valid_before(now)
               .not_valid_after(now + timedelta(days=1)))
    cert = builder.sign(key, hash_cls() if hash_cls else None, rsa_padding=rsa_padding)
    assert SignatureAlgorithm(family, hash_alg).identifier() in cert.public_bytes(Encoding.DER)


def test_pkcs1_v15_sha256_from_strongswan_style_peer_verifies():
    key = new_key("rsa")
    identifier = unhex(RFC7427_SHA256_WITH_RSA)
    signature = key.sign(OCTETS, padding.PKCS1v15(), hashes.SHA256())
    auth = AuthPayload(AuthMethod.DIGITAL_SIGNATURE, bytes([len(identifier)]) + identifier + signature)
    verify_auth(auth, OCTETS, prf, peer_public_key=key.public_key())
    with pytest.raises(AuthenticationFailed):
        verify_auth(auth, OCTETS + b"!", prf, peer_public_key=key.public_key())


def _pss_identifier(hash_oid: str, mgf_hash_oid: str, salt: int) -> bytes:
    hash_id = der.encode_sequence(der.encode_oid(hash_oid), der.NULL_TLV)
    mgf_hash = der.encode_sequence(der.encode_oid(mgf_hash_oid), der.NULL_TLV)
    params = der.encode_sequence(
        der.encode_explicit(0, hash_id),
        der.encode_explicit(1, der.encode_sequence(der.encode_oid("1.2.840.113549.1.1.8"), mgf_hash)),
        der.encode_explicit(2, der.encode_integer(salt)))
    return der.encode_sequence(der.encode_oid("1.2.840.113549.1.1.10"), params)


SHA256_OID, SHA384_OID, SHA1_OID = "2.16.840.1.101.3.4.2.1", "2.16.840.1.101.3.4.2.2", "1.3.14.3.2.26"


def test_pss_salt_length_is_taken_from_parameters():
    key = new_key("rsa")
    signature = key.sign(OCTETS, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=20), hashes.SHA256())
    good = _pss_identifier(SHA256_OID, SHA256_OID, 20)
    verify_auth(AuthPayload(14, bytes([len(good)]) + good + signature), OCTETS, prf,
                peer_public_key=key.public_key())
    lying = _pss_identifier(SHA256_OID, SHA256_OID, 32)
    with pytest.raises(AuthenticationFailed):
        verify_auth(AuthPayload(14, bytes([len(lying)]) + lying + signature), OCTETS, prf,
                    peer_public_key=key.public_key())


@pytest.mark.parametrize("identifier", [
    _pss_identifier(SHA256_OID, SHA384_OID, 32),  # MGF1 hash differs from the signature hash
    _pss_identifier(SHA1_OID, SHA1_OID, 20),  # SHA-1
    unhex("300b 0609 2a86 4886 f70d 0101 0a30 00"),  # PSS with all-default (SHA-1) parameters
    unhex("300d 0609 2a86 4886 f70d 0101 0505 00"),  # sha1WithRSAEncryption
    unhex("3009 0607 2a86 48ce 3d04 01"),  # ecdsa-with-SHA1
    unhex("300c 0608 2a86 48ce 3d04 0302 0500"),  # ECDSA with (forbidden) NULL parameters
    unhex("3007 0603 2b65 70 0500"),  # Ed25519 with parameters
    unhex("3005 0603 2b65 71"),  # Ed448: not supported
    b"\x30\x80",
    b"",
])
def test_refused_algorithm_identifiers(identifier):
    key = new_key("rsa")
    data = bytes([len(identifier)]) + identifier + b"\x00" * 256
    with pytest.raises(AuthenticationFailed):
        verify_auth(AuthPayload(14, data), OCTETS, prf, peer_public_key=key.public_key())


@pytest.mark.parametrize("data", [b"", b"\x0c", b"\x0c" + unhex(RFC7427_ECDSA_SHA256), b"\xff" + b"\x30" * 20])
def test_truncated_digital_signature_data(data):
    with pytest.raises(AuthenticationFailed):
        verify_auth(AuthPayload(14, data), OCTETS, prf, peer_public_key=new_key("p256").public_key())


# -- legacy methods ------------------------------------------------------------------------
def _raw_ecdsa(key, hash_cls, size):
    r, s = decode_dss_signature(key.sign(OCTETS, ec.ECDSA(hash_cls())))
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def test_legacy_method_9_and_10_verify():
    p256, p384 = new_key("p256"), new_key("p384")
    verify_auth(AuthPayload(9, _raw_ecdsa(p256, hashes.SHA256, 32)), OCTETS, prf, peer_public_key=p256.public_key())
    verify_auth(AuthPayload(10, _raw_ecdsa(p384, hashes.SHA384, 48)), OCTETS, prf, peer_public_key=p384.public_key())
    with pytest.raises(AuthenticationFailed):  # method 10 demands P-384
        verify_auth(AuthPayload(10, _raw_ecdsa(p256, hashes.SHA256, 32)), OCTETS, prf,
                    peer_public_key=p256.public_key())
    with pytest.raises(AuthenticationFailed):  # DER instead of raw r||s
        verify_auth(AuthPayload(9, p256.sign(OCTETS, ec.ECDSA(hashes.SHA256()))), OCTETS, prf,
                    peer_public_key=p256.public_key())
    with pytest.raises(AuthenticationFailed):
        verify_auth(AuthPayload(9, _raw_ecdsa(p256, hashes.SHA256, 32)), OCTETS + b"x", prf,
                    peer_public_key=p256.public_key())


def test_legacy_signing_when_peer_sent_no_hash_notify(pki):
    issued = pki.issue("legacy", key_type="p256")
    auth = make_auth(CertCredential(issued.key, issued.chain), OCTETS, prf, frozenset())
    assert auth.method == AuthMethod.ECDSA_SHA256_P256 and len(auth.data) == 64
    verify_auth(auth, OCTETS, prf, peer_public_key=issued.cert.public_key())
    ed = pki.issue("legacy-ed", key_type="ed25519")
    with pytest.raises(AuthenticationFailed):
        make_auth(CertCredential(ed.key, ed.chain), OCTETS, prf, frozenset())


@pytest.mark.parametrize("method", [1, 3, 11, 12, 13, 200])
def test_other_methods_refused(method):
    key = new_key("rsa")
    signature = key.sign(OCTETS, padding.PKCS1v15(), hashes.SHA1())
    with pytest.raises(AuthenticationFailed):
        verify_auth(AuthPayload(method, signature), OCTETS, prf, peer_public_key=key.public_key(), psks=[PSK])


def test_our_hash_algorithms():
    assert our_hash_algorithms() == {HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384,
                                     HashAlgorithm.SHA2_512, HashAlgorithm.IDENTITY}
    assert HashAlgorithm.SHA1 not in our_hash_algorithms()


@pytest.fixture(scope="module")
def fuzz_keys():
    return [new_key(t).public_key() for t in KEY_TYPES]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from([1, 2, 9, 10, 11, 14, 255]), data=st.binary(max_size=300),
       key_index=st.integers(0, len(KEY_TYPES) - 1))
def test_garbage_auth_only_raises_authentication_failed(fuzz_keys, method, data, key_index):
    with pytest.raises(AuthenticationFailed):
        verify_auth(AuthPayload(method, data), OCTETS, prf, psks=[PSK], peer_public_key=fuzz_keys[key_index])


@settings(max_examples=300, deadline=None)
@given(prefix=st.sampled_from([unhex(RFC7427_RSASSA_PSS_SHA256)[:n] for n in (0, 2, 13, 17, 40)]),
       tail=st.binary(max_size=80))
def test_garbage_algorithm_identifiers_only_raise_authentication_failed(prefix, tail):
    try:
        SignatureAlgorithm.from_identifier(prefix + tail)
    except AuthenticationFailed:
        pass
