"""The sidecar's own PKCS#10 encoder: what cryptography's builder makes, and what the operator signs."""

from __future__ import annotations

import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ipsec_mesh.agent.credentials import credential_from, new_key_and_csr
from ipsec_mesh.ike.csr import csr_der, csr_pem
from ipsec_mesh.meshapi.client import IssuedCertificate
from ipsec_mesh_operator.pki.ca import (
    CertificateAuthority,
    CertificateRequestError,
    LeafIdentity,
    certificate_pem,
    load_and_check_csr,
)

IDENTITIES = ["web-0.shop.pod.mesh", "a.b.pod.mesh", "x" * 64]


@pytest.mark.parametrize("identity", IDENTITIES)
def test_request_info_is_byte_for_byte_cryptographys(identity):
    key = ec.generate_private_key(ec.SECP256R1())
    theirs = (x509.CertificateSigningRequestBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]), critical=False)
              .sign(key, hashes.SHA256()))
    ours = x509.load_der_x509_csr(csr_der(key, identity, (identity,)))
    assert ours.tbs_certrequest_bytes == theirs.tbs_certrequest_bytes
    assert ours.signature_algorithm_oid == theirs.signature_algorithm_oid
    assert ours.is_signature_valid
    assert x509.load_pem_x509_csr(csr_pem(key, identity, (identity,))).tbs_certrequest_bytes == ours.tbs_certrequest_bytes


def test_bad_names_refused_as_cryptography_did():
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValueError):
        csr_der(key, "x" * 65, ("x" * 65,))
    with pytest.raises(ValueError):
        csr_der(key, "", ("a",))
    with pytest.raises(ValueError):
        csr_der(key, "é", ("é",))


def test_the_operators_ca_signs_it_and_the_sidecar_takes_the_answer():
    now = time.time()
    ca = CertificateAuthority.create(now, max_leaf_lifetime=3600, lifetime=86400)
    identity = LeafIdentity(dns_name="web-0.shop.pod.mesh")
    key, pem = new_key_and_csr(identity.dns_name)
    assert load_and_check_csr(pem, identity).is_signature_valid
    cert = ca.sign_csr(pem, identity, 3600, now)
    credential = credential_from(key, IssuedCertificate(certificate=certificate_pem(cert), chain=(), trust_bundle=(),
                                                        not_after=int(now) + 3600))
    assert credential.chain[0].der == cert.public_bytes(Encoding.DER)
    assert credential.serial == cert.serial_number


def test_the_operator_refuses_a_tampered_request():
    key = ec.generate_private_key(ec.SECP256R1())
    data = bytearray(csr_der(key, "web-0.shop.pod.mesh", ("web-0.shop.pod.mesh",)))
    data[-3] ^= 1  # inside the signature
    tampered = x509.load_der_x509_csr(bytes(data)).public_bytes(Encoding.PEM)
    with pytest.raises(CertificateRequestError):
        load_and_check_csr(tampered, LeafIdentity(dns_name="web-0.shop.pod.mesh"))
