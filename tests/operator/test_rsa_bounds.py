"""RSA keys a client or a remote trust domain chooses are bounded before anything is done with them:
2048 to 8192 bits and the public exponent 65537, for CSRs (the mesh API) and federated CA bundles."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ipsec_mesh_operator.controller.federation import BundleError, decode_bundle, encode_bundle
from ipsec_mesh_operator.pki.ca import CertificateAuthority, CertificateRequestError
from tests.operator.test_keys import DAY, HOUR, IDENTITY, T0, make_csr
from tests.support.pki import rsa_key_with_exponent

DATA = Path(__file__).parent.parent / "data" / "rsa"


def stored_csr(bits: int) -> bytes:
    return (DATA / f"csr-rsa-{bits}.pem").read_bytes()


def with_exponent(e: int) -> rsa.RSAPrivateKey:
    return rsa_key_with_exponent(2048, e)


def sign(csr: bytes) -> x509.Certificate:
    ca = CertificateAuthority.create(T0, DAY, 365 * DAY)
    return ca.sign_csr(csr, IDENTITY, HOUR, T0)


def test_rsa_8192_is_signed_and_larger_keys_are_refused_before_their_signature_is_checked():
    assert sign(stored_csr(8192)).public_key().key_size == 8192
    with pytest.raises(CertificateRequestError, match="2048 to 8192 bits, not 8704"):
        sign(stored_csr(8704))
    # A broken self-signature changes nothing: the size is refused first, no verification is paid for.
    der = x509.load_pem_x509_csr(stored_csr(8704)).public_bytes(serialization.Encoding.DER)
    broken = der[:-10] + bytes(b ^ 0xFF for b in der[-10:])
    pem = x509.load_der_x509_csr(broken).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CertificateRequestError, match="not 8704"):
        sign(pem)


@pytest.mark.parametrize("exponent", [3, 65539, (1 << 255) | 0x10001, (1 << 2046) | 0x10001])
def test_rsa_exponents_other_than_65537_are_refused(exponent):
    csr, _ = make_csr(key=with_exponent(exponent))
    with pytest.raises(CertificateRequestError, match="exponent 65537"):
        sign(csr)
    assert sign(make_csr(key=rsa.generate_private_key(65537, 2048))[0])  # the usual key is fine


def ca_certificate_with(public_key) -> str:
    """A CA certificate carrying `public_key` (issued by a throwaway EC key: only the key's bound is at stake)."""
    issuer = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "remote CA")])
    now = datetime.datetime.fromtimestamp(T0, datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(issuer, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize("key, refused", [
    (lambda: x509.load_pem_x509_csr(stored_csr(8704)).public_key(), "not 8704"),
    (lambda: rsa.generate_private_key(65537, 1024).public_key(), "not 1024"),
    (lambda: with_exponent(3).public_key(), "exponent 65537"),
    (lambda: x509.load_pem_x509_csr(stored_csr(8192)).public_key(), None),
])
def test_a_federated_bundle_with_an_rsa_ca_out_of_bounds_is_refused(key, refused):
    raw = encode_bundle((ca_certificate_with(key()),), 1, 300)
    if refused is None:
        assert len(decode_bundle(raw, T0).pems) == 1
        return
    with pytest.raises(BundleError, match=refused) as error:
        decode_bundle(raw, T0)
    assert error.value.reason == "bad-key"


def test_the_identity_used_here_is_the_one_in_the_stored_csrs():
    for bits in (8192, 8704):
        csr = x509.load_pem_x509_csr(stored_csr(bits))
        assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == IDENTITY.dns_name
