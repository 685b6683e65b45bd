"""Cross-checks against strongSwan's own code, through its `pki` tool (no daemon, no root).

- strongSwan builds the AlgorithmIdentifier of an X.509 signature and of an
  RFC 7427 AUTH payload with the same function (signature_params_build), so the
  signatureAlgorithm of a certificate `pki --self` makes is the encoding charon
  puts in AUTH: ours must be byte-for-byte equal.
- strongSwan must trust the certificates tests/support/pki.py makes (`pki --verify`).
- We must trust a PKI that strongSwan makes (an Ed25519 CA, as in its examples).
"""

import shutil
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ipsec_mesh.ike import Identity, der
from ipsec_mesh.ike.certificate import certificates_from_pem
from ipsec_mesh.ike.certs import TrustStore, identity_matches_certificate
from ipsec_mesh.ike.constants import HashAlgorithm
from ipsec_mesh.ike.signatures import Family, SignatureAlgorithm
from tests.support.pki import KEY_TYPES, MeshPki, key_pem, new_key

PKI = shutil.which("pki")
pytestmark = pytest.mark.skipif(PKI is None, reason="strongSwan's pki tool is missing (apt strongswan-pki)")


def pki(*args: str, stdin: bytes | None = None) -> bytes:
    result = subprocess.run([PKI, *args], input=stdin, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    return result.stdout


def self_signed_by_strongswan(tmp_path, key, *options: str) -> x509.Certificate:
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(key_pem(key))
    der_cert = pki("--self", "--in", str(key_file), "--dn", "CN=strongSwan encoder", "--outform", "der", *options)
    return x509.load_der_x509_certificate(der_cert)


def signature_algorithm_of(cert: x509.Certificate) -> bytes:
    """The outer signatureAlgorithm field: Certificate ::= SEQUENCE { tbs, signatureAlgorithm, signature }."""
    fields = der.children(der.read_single(cert.public_bytes(Encoding.DER), der.SEQUENCE).value)
    return fields[1].encoded


@pytest.mark.parametrize("key_type, options, family, hash_alg", [
    ("rsa", ("--rsa-padding", "pss", "--digest", "sha256"), Family.RSA_PSS, HashAlgorithm.SHA2_256),
    ("rsa", ("--rsa-padding", "pss", "--digest", "sha384"), Family.RSA_PSS, HashAlgorithm.SHA2_384),
    ("rsa", ("--rsa-padding", "pss", "--digest", "sha512"), Family.RSA_PSS, HashAlgorithm.SHA2_512),
    ("rsa", ("--digest", "sha256"), Family.RSA_PKCS1, HashAlgorithm.SHA2_256),
    ("p256", ("--digest", "sha256"), Family.ECDSA, HashAlgorithm.SHA2_256),
    ("p384", ("--digest", "sha384"), Family.ECDSA, HashAlgorithm.SHA2_384),
    ("p256", ("--digest", "sha512"), Family.ECDSA, HashAlgorithm.SHA2_512),
    ("ed25519", (), Family.ED25519, HashAlgorithm.IDENTITY),
])
def test_our_algorithm_identifiers_equal_strongswans(tmp_path, key_type, options, family, hash_alg):
    cert = self_signed_by_strongswan(tmp_path, new_key(key_type), *options)
    theirs = signature_algorithm_of(cert)
    assert SignatureAlgorithm(family, hash_alg).identifier() == theirs
    decoded = SignatureAlgorithm.from_identifier(theirs)
    assert (decoded.family, decoded.hash_alg) == (family, hash_alg)


@pytest.mark.parametrize("key_type", KEY_TYPES)
@pytest.mark.parametrize("intermediate", [False, True])
def test_strongswan_trusts_our_certificates(tmp_path, key_type, intermediate):
    mesh = MeshPki(intermediate=intermediate)
    leaf = mesh.issue("web-0", key_type=key_type, dns=["web-0.shop.pod.mesh.test"])
    paths = mesh.write_swanctl(tmp_path, leaf, "web-0")
    cacerts = ["--cacert", str(paths["ca"])]
    if intermediate:
        cacerts += ["--cacert", str(paths["intermediate"])]
    output = pki("--verify", "--in", str(paths["cert"]), *cacerts).decode()
    assert "certificate trusted" in output and "lifetimes valid" in output


def test_strongswan_rejects_a_certificate_from_another_ca(tmp_path):
    leaf = MeshPki().issue("web-0")
    other_root = tmp_path / "other.pem"
    other_root.write_bytes(MeshPki().root.cert_pem())
    cert_file = tmp_path / "leaf.pem"
    cert_file.write_bytes(leaf.cert_pem())
    result = subprocess.run([PKI, "--verify", "--in", str(cert_file), "--cacert", str(other_root)],
                            capture_output=True, timeout=60)
    assert result.returncode != 0  # the check above can fail


def test_we_trust_a_strongswan_made_pki(tmp_path):
    """Ed25519 root (pki --self --ca), P-256 intermediate (pki --issue --ca), P-384 leaf with SANs."""
    def gen(name: str, key_type: str, *size: str) -> str:
        path = tmp_path / f"{name}.key"
        path.write_bytes(pki("--gen", "--type", key_type, *size, "--outform", "pem"))
        return str(path)

    def save(name: str, data: bytes) -> str:
        path = tmp_path / f"{name}.pem"
        path.write_bytes(data)
        return str(path)

    root_key = gen("root", "ed25519")
    root = save("root", pki("--self", "--in", root_key, "--dn", "C=CH, O=strongSwan, CN=Root CA", "--ca",
                            "--outform", "pem"))
    mid_key = gen("mid", "ecdsa", "--size", "256")
    mid = save("mid", pki("--issue", "--in", mid_key, "--type", "priv", "--cacert", root, "--cakey", root_key,
                          "--dn", "C=CH, O=strongSwan, CN=Intermediate CA", "--ca", "--outform", "pem"))
    leaf_key = gen("leaf", "ecdsa", "--size", "384")
    leaf_pem = pki("--issue", "--in", leaf_key, "--type", "priv", "--cacert", mid, "--cakey", mid_key,
                   "--dn", "C=CH, O=strongSwan, CN=moon", "--san", "moon.ns.pod.mesh.test",
                   "--san", "192.0.2.1", "--san", "moon@strongswan.org", "--outform", "pem")
    leaf = certificates_from_pem(leaf_pem)[0]
    intermediate = certificates_from_pem(open(mid, "rb").read())[0]
    store = TrustStore.from_pem(open(root, "rb").read())
    assert store.validate([leaf, intermediate], time.time()) == leaf
    for identity in ("fqdn:moon.ns.pod.mesh.test", "ipv4:192.0.2.1", "email:moon@strongswan.org",
                     "dn:CN=moon,O=strongSwan,C=CH"):
        assert identity_matches_certificate(Identity.parse(identity), leaf), identity
    assert not identity_matches_certificate(Identity.parse("fqdn:sun.ns.pod.mesh.test"), leaf)
