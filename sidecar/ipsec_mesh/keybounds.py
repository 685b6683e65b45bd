"""Which RSA keys the mesh accepts, on both sides: the sidecar's IKE core (a peer's keys and
certificate path) and the operator (CSRs, federated CA keys). One definition, so the two
never disagree about a key one of them issued or signed.

A key's owner chooses what verifying with it costs: OpenSSL takes up to 16,384 bits and any
exponent up to 3,072-bit moduli; 8,192 bits with e = 65537 cost 18-23x an RSA-2048
verification, a 3,072-bit key with a 3,071-bit exponent 430-550x
(bench/bench_rsa_key_bounds.py, docs/benchmarks.md). So keys are checked before anything
is verified with them: 2048 (RFC 8247 section 3.2) to 8192 bits, exponent 65537 only (as
Let's Encrypt; every usual generator makes nothing else).

A leaf below every layer: it imports nothing of ours (tests/unit/test_layers.py), so the IKE
core may use it and the operator may import it beside `meshapi`.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import rsa

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
RSA_EXPONENT = 65537


def rsa_key_problem(key: rsa.RSAPublicKey | rsa.RSAPrivateKey) -> str | None:
    """Why an RSA key is refused (size or exponent), checked before any operation with it; None if usable."""
    if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
        return f"RSA keys need {MIN_RSA_BITS} to {MAX_RSA_BITS} bits, not {key.key_size}"
    public = key if isinstance(key, rsa.RSAPublicKey) else key.public_key()
    if public.public_numbers().e != RSA_EXPONENT:
        return f"RSA keys need the public exponent {RSA_EXPONENT}"
    return None
