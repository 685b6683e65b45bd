"""The pod's certificate in mesh mode: a fresh key in memory, a CSR, the operator's answer.

The private key is generated here and never written anywhere nor logged (the
objects below have no repr that shows it); only the CSR leaves the process.
"""

from __future__ import annotations

import time
from dataclasses import field

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..ike import Certificate, DerError, certificates_from_pem, csr_pem, name_equal
from ..meshapi.client import IssuedCertificate
from ..records import record
from .peers import CredentialError

#: Renew when this share of the certificate's lifetime (from when we received it) has passed.
RENEW_FRACTION = 2 / 3
MIN_RENEW_DELAY = 1.0  # seconds: a certificate too short-lived must not make us spin


@record(frozen=True)
class Credential:
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    #: Leaf first, then intermediates (self-signed roots left out: the peer must hold them anyway).
    chain: tuple[Certificate, ...]
    received_at: float
    not_after: float

    @property
    def renew_at(self) -> float:
        lifetime = max(self.not_after - self.received_at, 0.0)
        return self.received_at + max(lifetime * RENEW_FRACTION, MIN_RENEW_DELAY)

    @property
    def serial(self) -> int:
        return self.chain[0].serial_number


def new_key_and_csr(identity: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """An ECDSA P-256 key and a CSR naming only the pod's identity (the CA adds the rest)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key, csr_pem(key, identity, (identity,))


def credential_from(key: ec.EllipticCurvePrivateKey, issued: IssuedCertificate,
                    now: float | None = None) -> Credential:
    try:
        leaf = certificates_from_pem(issued.certificate.encode())[0]
        intermediates = [certificates_from_pem(pem.encode())[0] for pem in issued.chain]
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        issued_key = leaf.public_key().public_bytes(serialization.Encoding.DER, public)
    except (DerError, ValueError, UnsupportedAlgorithm) as exc:
        raise CredentialError(f"the issued certificate is not PEM: {exc}") from None
    if issued_key != key.public_key().public_bytes(serialization.Encoding.DER, public):
        raise CredentialError("the issued certificate is not for the key we sent")
    chain = (leaf, *(c for c in intermediates if not name_equal(c.issuer, c.subject)))
    return Credential(key, chain, time.time() if now is None else now, float(issued.not_after))
