"""A PKCS#10 certificate signing request (RFC 2986) encoded here, without cryptography.x509.

Not IKE, but DER: it lives beside der.py and certificate.py. Mesh mode asks the operator for a certificate once at start and at each renewal; building
the request with `x509.CertificateSigningRequestBuilder` would load cryptography.x509
(~1.1 MB in every pod) for one fixed shape: subject CN, one SAN dNSName in an
extensionRequest attribute, ECDSA P-256 with SHA-256. The CertificationRequestInfo is
byte for byte what cryptography's builder makes (tests/agent/test_csr.py), and the
operator's CA accepts it (same test, against pki/ca.py).
"""

from __future__ import annotations

import binascii

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from . import der
from .constants import HashAlgorithm
from .signatures import Family, SignatureAlgorithm

OID_COMMON_NAME = "2.5.4.3"
OID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"  # PKCS#9
OID_SUBJECT_ALT_NAME = "2.5.29.17"
MAX_COMMON_NAME = 64  # X.520 ub-common-name, as cryptography's Name enforces
_DNS_NAME = 0x82  # GeneralName [2] IMPLICIT IA5String


def csr_der(key: ec.EllipticCurvePrivateKey, common_name: str, dns_names: tuple[str, ...]) -> bytes:
    """A DER CertificationRequest for `key`, subject CN=`common_name`, SAN dNSName `dns_names`."""
    cn = common_name.encode("utf-8")
    if not 1 <= len(cn) <= MAX_COMMON_NAME:
        raise ValueError(f"a common name must be 1..{MAX_COMMON_NAME} octets, got {len(cn)}")
    if not all(name and name.isascii() for name in dns_names):
        raise ValueError("a dNSName must be non-empty ASCII")
    subject = der.encode_sequence(der.encode_set(
        der.encode_sequence(der.encode_oid(OID_COMMON_NAME), der.encode_tlv(der.UTF8_STRING, cn))))
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    san = der.encode_sequence(*(der.encode_tlv(_DNS_NAME, name.encode("ascii")) for name in dns_names))
    extensions = der.encode_sequence(der.encode_sequence(
        der.encode_oid(OID_SUBJECT_ALT_NAME), der.encode_tlv(der.OCTET_STRING, san)))
    attributes = der.encode_tlv(0xA0, der.encode_sequence(
        der.encode_oid(OID_EXTENSION_REQUEST), der.encode_set(extensions)))
    info = der.encode_sequence(der.encode_integer(0), subject, spki, attributes)
    algorithm = SignatureAlgorithm(Family.ECDSA, HashAlgorithm.SHA2_256)
    return der.encode_sequence(info, algorithm.identifier(), der.encode_bit_string(algorithm.sign(key, info)))


def csr_pem(key: ec.EllipticCurvePrivateKey, common_name: str, dns_names: tuple[str, ...]) -> bytes:
    data = csr_der(key, common_name, dns_names)
    lines = [binascii.b2a_base64(data[i:i + 48]) for i in range(0, len(data), 48)]
    return b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"".join(lines) + b"-----END CERTIFICATE REQUEST-----\n"
