"""Mesh CA and PSK rotation: new keys are accepted before they are used, old ones kept long enough."""

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ipsec_mesh_operator.pki.ca import (
    CAStateError,
    CertificateAuthority,
    CertificateRequestError,
    LeafIdentity,
    certificate_pem,
)
from ipsec_mesh_operator.pki.psk import PskRing, PskStateError, propagation_for
from ipsec_mesh_operator.pki.rotation import KeyRing

HOUR = 3600.0
DAY = 24 * HOUR
T0 = 1_800_000_000.0
IDENTITY = LeafIdentity("web-0.prod.pod.cluster.local", "spiffe://cluster.local/ns/prod/sa/web")


def make_csr(names=("web-0.prod.pod.cluster.local",), key=None, cn=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or names[0])]))
    builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM), key


def verify_chain(leaf, bundle_pems):
    issuers = [x509.load_pem_x509_certificate(p.encode()) for p in bundle_pems]
    for issuer in issuers:
        try:
            leaf.verify_directly_issued_by(issuer)
            return True
        except (ValueError, Exception):
            continue
    return False


def test_rotation_ring_accepts_before_use_and_retires_after_grace():
    ring = KeyRing().rotate(T0, "a", 60, 100)
    assert ring.active(T0).id == "a"
    ring = ring.rotate(T0 + 1000, "b", 60, 100)
    assert ring.active(T0 + 1000).id == "a"                      # b not used yet
    assert [g.id for g in ring.accepted(T0 + 1000)] == ["b", "a"]  # but accepted
    assert ring.active(T0 + 1060).id == "b"
    assert [g.id for g in ring.accepted(T0 + 1159)] == ["b", "a"]
    assert [g.id for g in ring.accepted(T0 + 1160)] == ["b"]
    assert [g.id for g in ring.prune(T0 + 1160).generations] == ["b"]


def test_leaf_names_exactly_the_pod_identity_and_chains_to_the_bundle():
    ca = CertificateAuthority.create(T0, max_leaf_lifetime=DAY, lifetime=365 * DAY)
    csr, key = make_csr()
    leaf = ca.sign_csr(csr, IDENTITY, lifetime=12 * HOUR, now=T0)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["web-0.prod.pod.cluster.local"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [IDENTITY.uri]
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    assert leaf.not_valid_after_utc.timestamp() == T0 + 12 * HOUR
    assert verify_chain(leaf, ca.trust_bundle(T0))
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize("csr_maker", [
    lambda: make_csr(("other.prod.pod.cluster.local",))[0],
    lambda: make_csr(("web-0.prod.pod.cluster.local", "evil.example"))[0],
    lambda: make_csr(cn="admin")[0],
    lambda: make_csr(key=ec.generate_private_key(ec.SECP192R1()))[0] if hasattr(ec, "SECP192R1") else b"junk",
    lambda: make_csr(key=rsa.generate_private_key(65537, 1024))[0],
    lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    lambda: b"\x00" * 40,
])
def test_bad_csrs_are_refused(csr_maker):
    ca = CertificateAuthority.create(T0, DAY, 365 * DAY)
    with pytest.raises(CertificateRequestError):
        ca.sign_csr(csr_maker(), IDENTITY, HOUR, T0)


def test_tampered_csr_signature_is_refused():
    csr, _ = make_csr()
    other, _ = make_csr(("web-0.prod.pod.cluster.local",))
    # Swap the public key of one CSR into the other: the self-signature no longer verifies.
    a = x509.load_pem_x509_csr(csr)
    b = x509.load_pem_x509_csr(other)
    der = a.public_bytes(serialization.Encoding.DER)
    key_a = a.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    key_b = b.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    forged = der.replace(key_a, key_b)
    pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + __import__("base64").encodebytes(forged) + \
        b"-----END CERTIFICATE REQUEST-----\n"
    ca = CertificateAuthority.create(T0, DAY, 365 * DAY)
    with pytest.raises(CertificateRequestError):
        ca.sign_csr(pem, IDENTITY, HOUR, T0)


def test_ca_rotation_publishes_first_signs_later_and_keeps_old_until_leaves_expire():
    ca = CertificateAuthority.create(T0, max_leaf_lifetime=DAY, lifetime=400 * DAY)
    old = ca.active_certificate(T0)
    now = T0 + 300 * DAY
    assert ca.rotate_if_due(now, interval=300 * DAY, propagation=HOUR, lifetime=400 * DAY)
    bundle = ca.trust_bundle(now)
    assert len(bundle) == 2
    new = x509.load_pem_x509_certificate(bundle[0].encode())
    # Published but not yet signing:
    assert ca.active_certificate(now) == old
    leaf = ca.sign_csr(make_csr()[0], IDENTITY, DAY, now + HOUR - 1)
    assert verify_chain(leaf, [certificate_pem(old)])
    # After propagation the new CA signs:
    assert ca.active_certificate(now + HOUR) == new
    # The old one stays in the bundle for the longest leaf lifetime after the switch.
    assert not ca.rotate_if_due(now + HOUR + DAY - 1, 300 * DAY, HOUR, 400 * DAY)
    assert len(ca.trust_bundle(now + HOUR + DAY - 1)) == 2
    assert ca.rotate_if_due(now + HOUR + DAY, 300 * DAY, HOUR, 400 * DAY)
    assert ca.trust_bundle(now + HOUR + DAY) == (certificate_pem(new),)


def test_a_ca_that_would_expire_before_its_scheduled_rotation_is_replaced_in_time():
    # Made for a 10-day rotation, then the interval was raised to a year.
    ca = CertificateAuthority.create(T0, max_leaf_lifetime=DAY, lifetime=21 * DAY)
    ends = ca.active_certificate(T0).not_valid_after_utc.timestamp()
    latest = ends - HOUR - DAY  # propagation and a full leaf lifetime before the end
    assert not ca.rotate_if_due(latest - 1, 365 * DAY, HOUR, 2 * 365 * DAY)
    assert ca.rotate_if_due(latest, 365 * DAY, HOUR, 2 * 365 * DAY)
    successor = x509.load_pem_x509_certificate(ca.trust_bundle(latest)[0].encode())
    assert ca.active_certificate(latest + HOUR) == successor
    leaf = ca.sign_csr(make_csr()[0], IDENTITY, DAY, latest + HOUR)
    assert leaf.not_valid_after_utc.timestamp() == latest + HOUR + DAY  # a full lifetime, not cut short


def test_ca_round_trips_through_secret_data_and_supplied_ca_is_used_as_is():
    ca = CertificateAuthority.create(T0, DAY, 365 * DAY)
    data = ca.to_secret_data(T0)
    again = CertificateAuthority.from_secret_data(data, DAY)
    assert again.trust_bundle(T0) == ca.trust_bundle(T0)
    assert again.active_certificate(T0) == ca.active_certificate(T0)
    supplied = CertificateAuthority.from_secret_data({"ca.crt": data["ca.crt"], "ca.key": data["ca.key"]}, DAY)
    assert not supplied.managed
    assert not supplied.rotate_if_due(T0 + 10_000 * DAY, 300 * DAY, HOUR, 365 * DAY)
    with pytest.raises(CAStateError):
        CertificateAuthority.from_secret_data({"ca.crt": b"junk", "ca.key": b"junk"}, DAY)
    with pytest.raises(CAStateError):
        CertificateAuthority.from_secret_data({"state.json": b"{}"}, DAY)


def test_psk_rotation_overlaps_and_survives_persistence():
    psk = PskRing.create(T0)
    first = psk.keys(T0)
    assert len(first) == 1 and first[0].initiate and len(first[0].secret) == 32
    again = PskRing.from_secret_data(psk.to_secret_data())
    assert again.keys(T0) == first
    interval, overlap = 30 * DAY, HOUR
    assert not again.rotate_if_due(T0 + interval - 1, interval, overlap)
    assert again.rotate_if_due(T0 + interval, interval, overlap)
    keys = again.keys(T0 + interval)
    assert [k.initiate for k in keys] == [False, True]   # new accepted, old still used
    assert keys[0].secret != keys[1].secret
    switch = T0 + interval + propagation_for(overlap)
    keys = again.keys(switch)
    assert [k.initiate for k in again.keys(switch - 1)] == [False, True]
    assert [k.initiate for k in keys] == [True, False]
    assert keys[1].expires_at == int(switch + overlap)
    assert again.rotate_if_due(switch + overlap, interval, overlap)
    assert len(again.keys(switch + overlap)) == 1
    with pytest.raises(PskStateError):
        PskRing.from_secret_data({"generations.json": b"[{\"id\": 1}]"})


def test_the_serving_key_is_on_disk_only_while_openssl_loads_it(tmp_path, monkeypatch):
    import tempfile

    from ipsec_mesh_operator.pki.tls import ServingCertificate

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ca = CertificateAuthority.create(T0, DAY, 365 * DAY)
    serving = ServingCertificate(("ipsec-mesh-operator.mesh.svc", "10.0.0.1"))
    assert serving.refresh(ca, T0)
    assert list(tmp_path.iterdir()) == []  # nothing left behind, the key least of all
    assert serving.refresh(ca, T0 + 4 * DAY)  # renewed at half its lifetime, same cleanup
    assert list(tmp_path.iterdir()) == []
