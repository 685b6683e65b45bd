"""Certificates for IKEv2: CERT/CERTREQ payloads, chain validation, identity binding.

Certificates are parsed by the core itself (certificate.py: the sidecar does not load
`cryptography.x509`), and chain validation is our own, not `cryptography.x509.verification`: that module
implements the CA/Browser-Forum Web PKI profile (server/client verifiers with
their EKU, SAN and algorithm rules), and IKE certificates follow RFC 4945
instead (no EKU requirement, Ed25519 leaf keys, DN identities). What is
checked here, at the caller's `now` (POSIX seconds):

- a path leaf -> intermediates (from the peer, any order) -> one of our roots,
  each link by issuer name and signature (SHA-1/MD5-signed certificates refused);
- every certificate in the path (roots included) valid at `now`;
- issuers: basicConstraints cA=TRUE, pathLenConstraint, keyUsage keyCertSign
  when keyUsage is present; the leaf: keyUsage digitalSignature when present;
- a critical extension we do not process rejects the certificate.
Revocation (CRL/OCSP) is not checked: mesh certificates are short-lived.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..keybounds import rsa_key_problem
from . import certificate as c
from . import der
from .certificate import Certificate, certificates_from_pem
from .constants import CertEncoding, IdType
from .der import DerError
from .errors import CertificateError, IdentityError
from .identity import Identity, dn_equal, dn_text, name_equal
from .payloads import CertPayload, CertReqPayload

MAX_CERT_PAYLOADS = 8  # leaf + intermediates a peer may send
MAX_CERT_BYTES = 16 * 1024
MAX_PATH_LENGTH = 6  # certificates in a path, root included
MAX_SIGNATURE_CHECKS = 32  # per validation, whatever the peer sent

# Extensions we understand well enough to accept when marked critical.
PROCESSED_EXTENSIONS = frozenset({
    c.OID_BASIC_CONSTRAINTS,
    c.OID_KEY_USAGE,
    c.OID_EXTENDED_KEY_USAGE,  # accepted whatever its content (RFC 4945 5.1.3.12)
    c.OID_SUBJECT_ALT_NAME,
    c.OID_SUBJECT_KEY_IDENTIFIER,
    c.OID_AUTHORITY_KEY_IDENTIFIER,
})


class TrustStore:
    """The CA certificates we trust (the mesh CA; others for cross-cluster peerings)."""

    def __init__(self, roots: list[Certificate]):
        if not roots:
            raise ValueError("a trust store needs at least one root certificate")
        self.roots = list(roots)

    @classmethod
    def from_pem(cls, pem: bytes) -> "TrustStore":
        try:
            return cls(certificates_from_pem(pem))
        except DerError as exc:
            raise CertificateError(f"bad PEM trust bundle: {exc}") from None

    def validate(self, chain: list[Certificate], now: float) -> Certificate:
        """Check that `chain` (leaf first) leads to one of our roots at `now` (POSIX seconds); return the leaf."""
        if not chain:
            raise CertificateError("the peer sent no certificate")
        if len(chain) > MAX_CERT_PAYLOADS:
            raise CertificateError(f"more than {MAX_CERT_PAYLOADS} certificates")
        leaf = chain[0]
        _check_certificate(leaf, now, as_issuer=False)
        if any(leaf == root for root in self.roots):
            return leaf  # a trusted end-entity certificate itself
        search = _PathSearch(self.roots, now)
        if search.reaches_root(leaf, chain[1:], depth=0):
            return leaf
        raise CertificateError("untrusted certificate chain: " + "; ".join(dict.fromkeys(search.reasons)))

    def certreq_data(self) -> bytes:
        """SHA-1 of each root's SubjectPublicKeyInfo, concatenated (RFC 7296 section 3.7)."""
        return b"".join(_spki_sha1(root) for root in self.roots)

    def certreq_payload(self) -> CertReqPayload:
        return CertReqPayload(CertEncoding.X509_SIGNATURE, self.certreq_data())

    def requested_by(self, certreq_data: bytes) -> bool:
        """Whether a peer's CERTREQ names one of our roots (so our chain will satisfy it)."""
        wanted = {certreq_data[i:i + 20] for i in range(0, len(certreq_data) - 19, 20)}
        return any(_spki_sha1(root) in wanted for root in self.roots)


def _spki_sha1(cert: Certificate) -> bytes:
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha1(spki).digest()  # protocol-mandated hash, not a security use


class _PathSearch:
    """Depth-first search for a verified path to a root, bounded in depth and in work.

    The budget caps signature checks: a peer can send certificates that all
    certify each other, and trying every ordering must not cost unbounded CPU.
    """

    def __init__(self, roots: list[Certificate], now: float):
        self.roots = roots
        self.now = now
        self.reasons: list[str] = []
        self.signature_budget = MAX_SIGNATURE_CHECKS

    def reaches_root(self, cert: Certificate, pool: list[Certificate], depth: int) -> bool:
        if depth + 2 > MAX_PATH_LENGTH:
            self.reasons.append("path too long")
            return False
        for issuer in self.roots:
            if self.issued_by(cert, issuer) and self.may_issue(issuer, depth):
                return True
        for i, issuer in enumerate(pool):
            if (self.issued_by(cert, issuer) and self.may_issue(issuer, depth)
                    and self.reaches_root(issuer, pool[:i] + pool[i + 1:], depth + 1)):
                return True
        if not self.reasons:
            self.reasons.append(f"no issuer found for {dn_text(cert.issuer)!r}")
        return False

    def issued_by(self, cert: Certificate, issuer: Certificate) -> bool:
        if not name_equal(cert.issuer, issuer.subject):
            return False
        if self.signature_budget <= 0:
            self.reasons.append("too many candidate paths")
            return False
        self.signature_budget -= 1
        key = issuer.public_key()  # a candidate the peer sent: refuse a costly key before verifying with it
        if isinstance(key, rsa.RSAPublicKey) and (problem := rsa_key_problem(key)) is not None:
            self.reasons.append(f"{_name(issuer)!r} has an unacceptable key: {problem}")
            return False
        try:
            if cert.signature_hash() in c.WEAK_HASHES:
                self.reasons.append(f"{_name(cert)!r} is signed with a weak hash")
                return False
        except UnsupportedAlgorithm:
            self.reasons.append(f"bad signature on {_name(cert)!r}")
            return False
        if not _signed_by(cert, issuer):
            self.reasons.append(f"bad signature on {_name(cert)!r}")
            return False
        return True

    def may_issue(self, issuer: Certificate, below: int) -> bool:
        """`issuer` is a CA, valid now, allowed `below` intermediate CAs beneath it."""
        try:
            _check_certificate(issuer, self.now, as_issuer=True)
            constraints = issuer.basic_constraints
            if constraints is None or not constraints.ca:
                raise CertificateError(f"{_name(issuer)!r} is not a CA")
            if constraints.path_length is not None and below > constraints.path_length:
                raise CertificateError(f"path length constraint of {_name(issuer)!r} exceeded")
        except CertificateError as exc:
            self.reasons.append(str(exc))
            return False
        return True


def _check_certificate(cert: Certificate, now: float, as_issuer: bool) -> None:
    """Validity period, critical extensions, key usage and key size of one certificate.

    (Malformed or duplicated extensions never get here: Certificate refuses them.)
    """
    name = _LazyName(cert)  # formatted only when an error message needs it
    if now < cert.not_before:
        raise CertificateError(f"{name!r} is not valid before {der.time_text(cert.not_before)}")
    if now > cert.not_after:
        raise CertificateError(f"{name!r} expired at {der.time_text(cert.not_after)}")
    for ext in cert.extensions:
        if ext.critical and ext.oid not in PROCESSED_EXTENSIONS:
            raise CertificateError(f"{name!r} has an unsupported critical extension {ext.oid}")
    if cert.key_usage is not None:
        if as_issuer and not cert.has_key_usage(c.KU_KEY_CERT_SIGN):
            raise CertificateError(f"{name!r} keyUsage lacks keyCertSign")
        if not as_issuer and not cert.has_key_usage(c.KU_DIGITAL_SIGNATURE):
            raise CertificateError(f"{name!r} keyUsage lacks digitalSignature")
    key = cert.public_key()  # loaded when the certificate was parsed: a key it cannot load is refused there
    if isinstance(key, rsa.RSAPublicKey) and (problem := rsa_key_problem(key)) is not None:
        raise CertificateError(f"{name!r} has an unacceptable key: {problem}")


def _name(cert: Certificate) -> str:
    return dn_text(cert.subject)  # names decode: Certificate checked them when it parsed


class _LazyName:
    """A certificate's subject for error messages, formatted only if one is raised."""

    __slots__ = ("cert",)

    def __init__(self, cert: Certificate):
        self.cert = cert

    def __repr__(self) -> str:
        return repr(_name(self.cert))


@lru_cache(maxsize=256)
def _signed_by(cert: Certificate, issuer: Certificate) -> bool:
    """Whether `issuer`'s key made `cert`'s signature.

    Cached (certificates hash and compare by their DER bytes, so a hit means the very
    same two certificates): every IKE SA of a peer presents the same chain, and
    re-checking the CA's signature on it each time would only repeat the same answer.
    Validity periods, usage and constraints are still checked on every validation.
    """
    try:
        key = issuer.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return False
    return cert.is_signed_by(key)


def identity_matches_certificate(identity: Identity, cert: Certificate) -> bool:
    """Whether the certificate vouches for `identity` (RFC 4945 section 3.1).

    FQDN -> SAN dNSName, RFC822 -> SAN rfc822Name, IPv4/IPv6 -> SAN iPAddress
    (case-insensitive for names; no wildcard SANs); DER_ASN1_DN -> subject DN;
    KEY_ID -> subjectKeyIdentifier.
    """
    if identity.id_type == IdType.ID_DER_ASN1_DN:
        return dn_equal(cert.subject, identity.data)
    if identity.id_type == IdType.ID_KEY_ID:
        return cert.subject_key_identifier is not None and cert.subject_key_identifier == identity.data
    san = cert.subject_alt_names
    if san is None:
        return False
    if identity.id_type == IdType.ID_FQDN:
        wanted = identity.value_text().lower()
        return any(name.lower() == wanted for name in san.dns)
    if identity.id_type == IdType.ID_RFC822_ADDR:
        return any(_san_email_is(name, identity) for name in san.email)
    if identity.id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
        return any(addr == identity.data for addr in san.ip)
    return False


def _san_email_is(name: str, identity: Identity) -> bool:
    """An rfc822Name SAN equals the identity (exact local part, any-case domain; no wildcards)."""
    if "*" in name or not name.isascii():
        return False
    try:
        san_identity = Identity.validated(IdType.ID_RFC822_ADDR, name.encode("ascii"))
    except IdentityError:
        return False
    return identity.matches(san_identity)


def certificate_payloads(chain: list[Certificate]) -> list[CertPayload]:
    """CERT payloads for our chain (leaf first), X.509 DER encoded."""
    return [CertPayload(CertEncoding.X509_SIGNATURE, cert.der) for cert in chain]


def parse_cert_payloads(payloads: list[CertPayload]) -> list[Certificate]:
    """Certificates from received CERT payloads, in order; CertificateError on anything odd."""
    if len(payloads) > MAX_CERT_PAYLOADS:
        raise CertificateError(f"more than {MAX_CERT_PAYLOADS} CERT payloads")
    certs = []
    for payload in payloads:
        if payload.encoding != CertEncoding.X509_SIGNATURE:
            raise CertificateError(f"unsupported certificate encoding {payload.encoding}")
        if not 0 < len(payload.data) <= MAX_CERT_BYTES:
            raise CertificateError(f"certificate of {len(payload.data)} bytes refused")
        try:
            certs.append(Certificate.from_der(payload.data))
        except DerError as exc:
            raise CertificateError(f"undecodable certificate: {exc}") from None
    return certs


def certificate_service_account(cert: Certificate, trust_domain: str) -> tuple[str, str] | None:
    """(namespace, service account) from the certificate's spiffe:// URI SAN, if it has exactly one."""
    san = cert.subject_alt_names
    prefix = f"spiffe://{trust_domain}/ns/"
    found = set()
    for uri in san.uri if san else ():
        if uri.startswith(prefix):
            parts = uri[len(prefix):].split("/")  # <ns>/sa/<sa>
            if len(parts) == 3 and parts[1] == "sa" and parts[0] and parts[2]:
                found.add((parts[0], parts[2]))
    return found.pop() if len(found) == 1 else None
