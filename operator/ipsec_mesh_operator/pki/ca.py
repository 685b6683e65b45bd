"""The mesh CA: per-pod leaf certificates, trust bundle, rotation without a gap.

State lives in one Secret (see `to_secret_data`). A rotation creates the new
CA, publishes it in the trust bundle at once, and signs with it only after
`propagation`; the old CA stays in the bundle until every leaf it may have
signed has expired (activation of the successor + the longest leaf lifetime).
A CA supplied by the administrator (a Secret with just ca.crt and ca.key) is
used as is and never rotated.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ipsec_mesh.keybounds import rsa_key_problem

from .rotation import KeyRing, RotationStateError

CA_CERT_KEY = "ca.crt"
CA_KEY_KEY = "ca.key"
BUNDLE_KEY = "trust-bundle.pem"
STATE_KEY = "state.json"
CLOCK_SKEW = datetime.timedelta(minutes=1)
ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)


class CertificateRequestError(Exception):
    """A CSR is malformed, badly signed, uses a weak key, or asks for another identity."""


class CAStateError(Exception):
    """The CA Secret holds something unusable."""


@dataclass(frozen=True)
class LeafIdentity:
    dns_name: str
    uri: str | None = None
    ip_addresses: tuple[str, ...] = ()
    #: More DNS names (server certificates only: a Service has several).
    extra_dns_names: tuple[str, ...] = ()


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)


def _public_der(key: Any) -> bytes:
    try:
        return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    except (AttributeError, TypeError, ValueError):
        raise CAStateError("the CA Secret holds a key of an unsupported type") from None


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def new_ca_certificate(name: str, now: float, lifetime: float) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ipsec-mesh"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now) - CLOCK_SKEW)
        .not_valid_after(_utc(now + lifetime))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


class CertificateAuthority:
    def __init__(self, ring: KeyRing, certs: dict[str, x509.Certificate], keys: dict[str, Any], managed: bool,
                 max_leaf_lifetime: float):
        self.ring = ring
        self.certs = certs
        self.keys = keys
        self.managed = managed
        self.max_leaf_lifetime = max_leaf_lifetime
        self._ski = {gid: x509.SubjectKeyIdentifier.from_public_key(cert.public_key()) for gid, cert in certs.items()}

    # ---- creation and persistence -----------------------------------------

    @classmethod
    def create(cls, now: float, max_leaf_lifetime: float, lifetime: float) -> CertificateAuthority:
        ca = cls(KeyRing(), {}, {}, True, max_leaf_lifetime)
        ca._add_generation(now, lifetime, propagation=0)
        return ca

    @classmethod
    def from_secret_data(cls, data: dict[str, bytes], max_leaf_lifetime: float) -> CertificateAuthority:
        try:
            if STATE_KEY in data:
                state = json.loads(data[STATE_KEY])
                ring = KeyRing.from_list(state["generations"])
                certs = {gid: x509.load_pem_x509_certificate(pem.encode()) for gid, pem in state["certs"].items()}
                keys = {gid: serialization.load_pem_private_key(pem.encode(), None) for gid, pem in state["keys"].items()}
                managed = bool(state.get("managed", True))
            else:  # supplied by the administrator: one CA, used as is
                cert = x509.load_pem_x509_certificate(data[CA_CERT_KEY])
                key = serialization.load_pem_private_key(data[CA_KEY_KEY], None)
                created = cert.not_valid_before_utc.timestamp()
                ring = KeyRing().rotate(created, "supplied", 0, 0)
                certs, keys, managed = {"supplied": cert}, {"supplied": key}, False
        except (KeyError, ValueError, TypeError, RotationStateError, AttributeError) as exc:
            raise CAStateError(f"the CA Secret is unusable: {exc}") from None
        if {g.id for g in ring.generations} - set(certs) or set(certs) - set(keys):
            raise CAStateError("the CA Secret's state names certificates or keys it does not hold")
        for gid, cert in certs.items():
            # A key that is not the certificate's would sign leaves no peer can verify.
            if _public_der(cert.public_key()) != _public_der(keys[gid].public_key()):
                raise CAStateError(f"the CA Secret's key for {gid} does not match its certificate")
        return cls(ring, certs, keys, managed, max_leaf_lifetime)

    def copy(self) -> CertificateAuthority:
        """An independent CA to rotate: the one in use changes only once the rotation is stored."""
        return CertificateAuthority(self.ring, dict(self.certs), dict(self.keys), self.managed, self.max_leaf_lifetime)

    def to_secret_data(self, now: float) -> dict[str, bytes]:
        active = self._active_id(now)
        key_pem = self.keys[active].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        state = {
            "managed": self.managed,
            "generations": self.ring.to_list(),
            "certs": {gid: _pem(cert) for gid, cert in self.certs.items()},
            "keys": {
                gid: key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()).decode()
                for gid, key in self.keys.items()
            },
        }
        return {
            CA_CERT_KEY: _pem(self.certs[active]).encode(),
            CA_KEY_KEY: key_pem,
            BUNDLE_KEY: "".join(self.trust_bundle(now)).encode(),
            STATE_KEY: json.dumps(state).encode(),
        }

    # ---- rotation ----------------------------------------------------------

    def _add_generation(self, now: float, lifetime: float, propagation: float) -> None:
        gid = f"ca-{int(now)}-{secrets.token_hex(4)}"
        cert, key = new_ca_certificate(f"ipsec-mesh CA {gid}", now, lifetime)
        self.ring = self.ring.rotate(now, gid, propagation, self.max_leaf_lifetime)
        self.certs[gid], self.keys[gid] = cert, key
        self._ski[gid] = x509.SubjectKeyIdentifier.from_public_key(key.public_key())

    def rotate_if_due(self, now: float, interval: float, propagation: float, lifetime: float) -> bool:
        """Rotate a managed CA on schedule, or early if it is running out; prune retired ones.

        True if anything changed. "Running out": the newest CA expires before it could
        be replaced in time (propagation, then a full leaf lifetime before it ends),
        as when the rotation interval was raised after that CA was made for a shorter one.
        """
        changed = False
        pruned = self.ring.prune(now)
        if pruned != self.ring:
            self.ring = pruned
            live = {g.id for g in pruned.generations}
            for store in (self.certs, self.keys, self._ski):
                for gid in [gid for gid in store if gid not in live]:
                    del store[gid]
            changed = True
        if self.managed and (self.ring.due(now, interval) or self._running_out(now, propagation)):
            self._add_generation(now, lifetime, propagation)
            changed = True
        return changed

    def _running_out(self, now: float, propagation: float) -> bool:
        newest = self.ring.newest()
        if newest is None:
            return True
        ends = self.certs[newest.id].not_valid_after_utc.timestamp()
        return ends <= now + propagation + self.max_leaf_lifetime

    def _active_id(self, now: float) -> str:
        active = self.ring.active(now)
        if active is None:
            raise CAStateError("no CA generation is active")
        return active.id

    def trust_bundle(self, now: float) -> tuple[str, ...]:
        """Every CA certificate peers must accept now, newest first."""
        return tuple(_pem(self.certs[g.id]) for g in self.ring.accepted(now))

    def active_certificate(self, now: float) -> x509.Certificate:
        return self.certs[self._active_id(now)]

    # ---- signing -----------------------------------------------------------

    def sign_csr(self, csr_pem: bytes, identity: LeafIdentity, lifetime: float, now: float) -> x509.Certificate:
        csr = load_and_check_csr(csr_pem, identity)
        return self.issue(csr.public_key(), identity, lifetime, now, server=False)

    def issue(self, public_key: Any, identity: LeafIdentity, lifetime: float, now: float,
              server: bool = False) -> x509.Certificate:
        gid = self._active_id(now)
        ca_cert, ca_key = self.certs[gid], self.keys[gid]
        not_after = min(_utc(now + min(lifetime, self.max_leaf_lifetime)), ca_cert.not_valid_after_utc)
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in (identity.dns_name, *identity.extra_dns_names)]
        if identity.uri:
            names.append(x509.UniformResourceIdentifier(identity.uri))
        names.extend(x509.IPAddress(ipaddress.ip_address(ip)) for ip in identity.ip_addresses)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH,
                                                                   ExtendedKeyUsageOID.SERVER_AUTH]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.dns_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(now) - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski[gid]),
                           critical=False)
        )
        return builder.sign(ca_key, hashes.SHA256())


def load_and_check_csr(csr_pem: bytes, identity: LeafIdentity) -> x509.CertificateSigningRequest:
    """Parse a CSR, verify its self-signature and key strength, and that it asks for nothing but `identity`."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise CertificateRequestError("not a PEM certificate signing request") from None
    try:
        key = csr.public_key()
        _check_key(key)  # before the signature: verifying costs what the sender's key makes it cost (keybounds)
        if not csr.is_signature_valid:
            raise CertificateRequestError("the CSR's signature does not verify")
    except (ValueError, InvalidSignature, x509.UnsupportedGeneralNameType) as exc:
        raise CertificateRequestError(f"unusable CSR: {exc}") from None
    allowed_dns, allowed_uris = {identity.dns_name}, {identity.uri} if identity.uri else set()
    try:
        dns, uris, others = _requested_names(csr)
        common_names = {a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CertificateRequestError(f"unreadable CSR extensions or subject: {exc}") from None
    if dns - allowed_dns or uris - allowed_uris or others or common_names - allowed_dns:
        raise CertificateRequestError(
            f"the CSR asks for names other than this pod's identity {identity.dns_name!r}"
        )
    return csr


def _requested_names(csr: x509.CertificateSigningRequest) -> tuple[set[str], set[str], int]:
    """DNS names, URIs and the count of other names in the CSR's SAN extension."""
    try:
        requested = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set(), 0
    dns = set(requested.get_values_for_type(x509.DNSName))
    uris = set(requested.get_values_for_type(x509.UniformResourceIdentifier))
    return dns, uris, len(requested) - len(dns) - len(uris)


def _check_key(key: Any) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ALLOWED_CURVES):
            raise CertificateRequestError(f"curve {key.curve.name} is not accepted; use P-256 or P-384")
    elif isinstance(key, rsa.RSAPublicKey):
        if (problem := rsa_key_problem(key)) is not None:
            raise CertificateRequestError(problem)
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise CertificateRequestError("key type not accepted; use ECDSA P-256/P-384, Ed25519 or RSA")


def certificate_pem(cert: x509.Certificate) -> str:
    return _pem(cert)
