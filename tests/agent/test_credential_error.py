"""One CredentialError: a missing credential (peer set) and an unusable CSR answer are the same
error, and both are a PeerSetError that the sidecar's callers already handle (issue 12)."""

import pytest

from ipsec_mesh.agent import credentials, peers
from ipsec_mesh.meshapi.client import IssuedCertificate


def test_an_unusable_certificate_answer_raises_the_one_credential_error():
    key, _ = credentials.new_key_and_csr("web.shop.pod.mesh.test")
    with pytest.raises(peers.CredentialError, match="not PEM") as raised:
        credentials.credential_from(key, IssuedCertificate("garbage", (), (), 0))
    assert isinstance(raised.value, peers.PeerSetError)
    assert credentials.CredentialError is peers.CredentialError
