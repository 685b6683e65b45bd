"""The operator's own serving certificate (mesh API and webhooks), issued by the mesh CA."""

from __future__ import annotations

import ipaddress
import os
import ssl
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .ca import CertificateAuthority, LeafIdentity, certificate_pem

SERVER_CERT_LIFETIME = 7 * 86400.0
RENEW_FRACTION = 0.5


def _split_names(names: tuple[str, ...]) -> tuple[list[str], list[str]]:
    dns, ips = [], []
    for name in names:
        try:
            ips.append(str(ipaddress.ip_address(name)))
        except ValueError:
            dns.append(name)
    return dns, ips


class ServingCertificate:
    """Keeps an SSLContext whose certificate is renewed from the mesh CA when due."""

    def __init__(self, names: tuple[str, ...], uri: str | None = None):
        self.names = names
        #: A SPIFFE ID for the certificate (the bundle endpoint's).
        self.uri = uri
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._renew_at = 0.0
        self._issuer_id: str | None = None

    def refresh(self, ca: CertificateAuthority, now: float) -> bool:
        """(Re)issue if never issued, half-expired, or the signing CA changed; True if renewed."""
        active = ca.ring.active(now)
        issuer = active.id if active else None
        if now < self._renew_at and issuer == self._issuer_id:
            return False
        key = ec.generate_private_key(ec.SECP256R1())
        dns, ips = _split_names(self.names)
        dns = dns or ["localhost"]
        identity = LeafIdentity(dns[0], self.uri, tuple(ips), tuple(dns[1:]))
        cert = ca.issue(key.public_key(), identity, SERVER_CERT_LIFETIME, now, server=True)
        chain = certificate_pem(cert) + certificate_pem(ca.active_certificate(now))
        self._load(chain, key)
        lifetime = cert.not_valid_after_utc.timestamp() - now
        self._renew_at = now + lifetime * RENEW_FRACTION
        self._issuer_id = issuer
        return True

    def _load(self, chain: str, key: ec.EllipticCurvePrivateKey) -> None:
        """Hand the pair to OpenSSL, which only reads files; the key is on disk only meanwhile."""
        with tempfile.TemporaryDirectory(prefix="ipsec-mesh-tls-") as directory:
            cert_path, key_path = Path(directory) / "tls.crt", Path(directory) / "tls.key"
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
            cert_path.write_text(chain)
            self.context.load_cert_chain(cert_path, key_path)
