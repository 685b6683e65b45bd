"""Test PKI: a mesh CA, an optional intermediate, and leaf certificates.

Importable helper (not a test module) shared by unit and interop tests:

    pki = MeshPki(intermediate=True)
    alice = pki.issue("alice", key_type="ed25519", dns=["alice.default.pod.mesh.test"])
    TrustStore([pki.root.cert]).validate(alice.chain, now.timestamp())
    pki.write_swanctl(Path(tmp) / "swanctl", alice)   # x509ca/ x509/ private/ for charon

Key types: "p256", "p384" (ECDSA), "ed25519", "rsa" (2048-bit key; it signs
IKE AUTH with RSASSA-PSS). The CA is ECDSA P-256. Every function takes the
time it needs as a parameter; the default is the real clock (tests pass a
fixed `now` when they test validity). Certificates are built with cryptography.x509
(`Issued.x509`); `Issued.cert`/`.chain` are the sidecar's own parse of them
(ipsec_mesh.ike.certificate), which is what the code under test takes.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from ipsec_mesh.ike.certificate import Certificate

KEY_TYPES = ("p256", "p384", "ed25519", "rsa")


def new_key(key_type: str):
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "rsa":
        return _rsa_key()
    raise ValueError(f"unknown key type {key_type!r}; use one of {KEY_TYPES}")


@lru_cache(maxsize=1)
def _rsa_key():
    # RSA generation is slow (~0.1-1 s); one key per test session is enough for tests.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def rsa_key_with_exponent(bits: int, exponent: int) -> rsa.RSAPrivateKey:
    """An RSA key of `bits` with public exponent `exponent` (generators only make 3 and 65537)."""
    while True:  # the exponent must be prime to the key's lambda (p - 1 is often a multiple of 3)
        base = rsa.generate_private_key(65537, bits).private_numbers()
        p, q = base.p, base.q
        lam = math.lcm(p - 1, q - 1)
        if math.gcd(exponent, lam) == 1:
            break
    d = pow(exponent, -1, lam)
    public = rsa.RSAPublicNumbers(exponent, p * q)
    numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), public)
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)


def key_pem(key) -> bytes:
    """An unencrypted PKCS#8 PEM private key (what swanctl's private/ and `pki --in` read)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _signing_hash(issuer_key):
    return None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def ours(cert: x509.Certificate) -> Certificate:
    """The sidecar's parse of a certificate cryptography built."""
    return Certificate.from_der(cert.public_bytes(serialization.Encoding.DER))


@dataclass
class Issued:
    """A key and its certificate, plus the intermediates that lead to the root."""

    key: object
    x509: x509.Certificate
    x509_intermediates: list[x509.Certificate] = field(default_factory=list)

    @property
    def cert(self) -> Certificate:
        return ours(self.x509)

    @property
    def intermediates(self) -> list[Certificate]:
        return [ours(c) for c in self.x509_intermediates]

    @property
    def chain(self) -> list[Certificate]:
        return [self.cert, *self.intermediates]

    def key_pem(self) -> bytes:
        return key_pem(self.key)

    def cert_pem(self) -> bytes:
        return self.x509.public_bytes(serialization.Encoding.PEM)


def build_certificate(*, subject: x509.Name, public_key, issuer_name: x509.Name, issuer_key,
                      not_before: datetime, not_after: datetime, ca: bool = False,
                      path_length: int | None = None, key_usage: x509.KeyUsage | None = None,
                      sans: list[x509.GeneralName] = (), extra: list[tuple[x509.ExtensionType, bool]] = (),
                      serial: int | None = None) -> x509.Certificate:
    """The general certificate builder behind everything here (tests use it for odd certs)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(issuer_key, _signing_hash(issuer_key))


def key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=key_cert_sign, crl_sign=key_cert_sign,
                         encipher_only=False, decipher_only=False)


def name(common_name: str, organization: str = "ipsec-mesh test") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def subject_alt_names(dns=(), emails=(), ips=(), uris=()) -> list[x509.GeneralName]:
    return ([x509.DNSName(d) for d in dns] + [x509.RFC822Name(e) for e in emails]
            + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            + [x509.UniformResourceIdentifier(u) for u in uris])


class MeshPki:
    """A P-256 mesh CA (and optionally an intermediate) that issues leaf certificates."""

    def __init__(self, *, intermediate: bool = False, trust_domain: str = "mesh.test",
                 now: datetime | None = None, lifetime: timedelta = timedelta(days=365)):
        self.trust_domain = trust_domain
        self.now = now or datetime.now(timezone.utc)
        start, end = self.now - timedelta(hours=1), self.now + lifetime
        root_key = ec.generate_private_key(ec.SECP256R1())
        root_name = name(f"{trust_domain} root CA")
        self.root = Issued(root_key, build_certificate(
            subject=root_name, public_key=root_key.public_key(), issuer_name=root_name,
            issuer_key=root_key, not_before=start, not_after=end, ca=True, path_length=1,
            key_usage=key_usage(key_cert_sign=True)))
        self.intermediate: Issued | None = None
        if intermediate:
            self.intermediate = self.issue_ca(f"{trust_domain} intermediate CA", start, end)

    @property
    def issuer(self) -> Issued:
        """Who signs leaves: the intermediate when there is one, else the root."""
        return self.intermediate or self.root

    def issue_ca(self, common_name: str, not_before: datetime, not_after: datetime,
                 path_length: int | None = 0) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = build_certificate(
            subject=name(common_name), public_key=key.public_key(), issuer_name=self.root.x509.subject,
            issuer_key=self.root.key, not_before=not_before, not_after=not_after, ca=True,
            path_length=path_length, key_usage=key_usage(key_cert_sign=True))
        return Issued(key, cert)

    def issue(self, common_name: str, *, key_type: str = "p256", dns=(), emails=(), ips=(), uris=(),
              not_before: datetime | None = None, not_after: datetime | None = None,
              ca: bool = False, with_key_usage: bool = True, key=None,
              extra: list[tuple[x509.ExtensionType, bool]] = ()) -> Issued:
        """A leaf certificate signed by `self.issuer`."""
        key = key or new_key(key_type)
        issuer = self.issuer
        cert = build_certificate(
            subject=name(common_name), public_key=key.public_key(), issuer_name=issuer.x509.subject,
            issuer_key=issuer.key, not_before=not_before or self.now - timedelta(minutes=5),
            not_after=not_after or self.now + timedelta(days=1), ca=ca,
            key_usage=key_usage(digital_signature=True) if with_key_usage else None,
            sans=subject_alt_names(dns, emails, ips, uris), extra=extra)
        intermediates = [self.intermediate.x509] if self.intermediate else []
        return Issued(key, cert, intermediates)

    def write_swanctl(self, swanctl_dir: Path, leaf: Issued, basename: str = "local") -> dict[str, Path]:
        """PEM files in swanctl's layout: x509ca/ (root, intermediate), x509/ (leaf), private/ (key).

        charon needs the `pem`, `pkcs8`, `x509` and a crypto plugin (`openssl`) in its
        load list to read them. Returns the paths written.
        """
        paths = {
            "ca": swanctl_dir / "x509ca" / "mesh-root.pem",
            "cert": swanctl_dir / "x509" / f"{basename}.pem",
            "key": swanctl_dir / "private" / f"{basename}.pem",
        }
        contents = {"ca": self.root.cert_pem(), "cert": leaf.cert_pem(), "key": leaf.key_pem()}
        if self.intermediate:
            paths["intermediate"] = swanctl_dir / "x509ca" / "mesh-intermediate.pem"
            contents["intermediate"] = self.intermediate.cert_pem()
        for kind, path in paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(contents[kind])
            if kind == "key":
                path.chmod(0o600)
        return paths
