"""A peer's certificates cannot make us verify with RSA keys the operator would refuse.

The expensive ones (a large public exponent costs hundreds of RSA-2048 verifications,
bench/bench_rsa_key_bounds.py) are refused before any signature is checked with them: an
intermediate a peer sends is a candidate issuer before it is proven to chain to our root.
"""

from datetime import datetime, timedelta, timezone

import pytest

from ipsec_mesh.ike import certs
from ipsec_mesh.ike.certs import TrustStore
from ipsec_mesh.ike.errors import AuthenticationFailed, CertificateError
from ipsec_mesh.ike.signatures import key_family
from tests.support.pki import MeshPki, build_certificate, key_usage, name, new_key, ours, rsa_key_with_exponent

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def pki():
    return MeshPki(now=NOW)


def _forged_chain(pki, issuer_key):
    """A leaf signed by `issuer_key` under a CA certificate of that key that only claims our root."""
    window = dict(not_before=NOW - timedelta(hours=1), not_after=NOW + timedelta(hours=1))
    ca = build_certificate(subject=name("forged CA"), public_key=issuer_key.public_key(),
                           issuer_name=pki.root.x509.subject, issuer_key=issuer_key, ca=True, path_length=0,
                           key_usage=key_usage(key_cert_sign=True), **window)
    leaf_key = new_key("p256")
    leaf = build_certificate(subject=name("leaf"), public_key=leaf_key.public_key(), issuer_name=ca.subject,
                             issuer_key=issuer_key, key_usage=key_usage(digital_signature=True), **window)
    return [ours(leaf), ours(ca)]


@pytest.mark.parametrize("bits, exponent", [(2048, (1 << 255) + 95), (2048, 3)])
def test_a_sent_issuer_with_an_unacceptable_rsa_key_is_never_used_to_verify(pki, monkeypatch, bits, exponent):
    chain = _forged_chain(pki, rsa_key_with_exponent(bits, exponent))
    used = []
    real = certs._signed_by

    def recording(cert, issuer):
        used.append(issuer.subject)
        return real(cert, issuer)

    monkeypatch.setattr(certs, "_signed_by", recording)
    with pytest.raises(CertificateError):
        TrustStore([pki.root.cert]).validate(chain, NOW.timestamp())
    assert chain[1].subject not in used  # the leaf's signature was never checked with the forged CA's key


def test_a_peer_key_outside_the_bounds_is_refused_for_auth():
    with pytest.raises(AuthenticationFailed, match="exponent"):
        key_family(rsa_key_with_exponent(2048, 3).public_key())
