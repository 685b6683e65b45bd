"""IKE_AUTH authentication (RFC 7296 section 2.15, RFC 7427, RFC 8420, RFC 9242).

The state machine builds the octets to sign with `signed_octets`, then calls
`make_auth` with our credential and `verify_auth` with what it knows of the
peer (the PSKs configured for it, or the public key of its validated certificate).

Choices:
- PSKs shorter than 16 bytes are refused (`PskCredential` raises ValueError):
  RFC 7296 section 2.15 warns that the PSK AUTH is open to offline dictionary
  attacks; the operator generates 32 random bytes, so a short PSK is a mistake.
- Method 1 (RSA PKCS#1 v1.5 with SHA-1, RFC 7296) and SHA-1 in method 14 are
  refused: SHA-1 signatures are deprecated by RFC 8247. RSA PKCS#1 v1.5 with
  SHA-2 inside method 14 is accepted (strongSwan signs that way unless
  `rsa_pss = yes`); we ourselves sign RSA with RSASSA-PSS.
- Method 9/10/11 (RFC 4754 ECDSA, raw r||s) is accepted from peers, and used by
  us only when the peer sent no SIGNATURE_HASH_ALGORITHMS notify at all.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any, Protocol

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .certificate import Certificate
from .constants import AuthMethod, HashAlgorithm
from .errors import AuthenticationFailed
from .identity import dn_text
from .payloads import AuthPayload, IdPayload
from .signatures import (
    LEGACY_ECDSA,
    SignatureAlgorithm,
    hash_preference,
    key_family,
    sign_legacy_ecdsa,
    verify_legacy_ecdsa,
)

KEY_PAD = b"Key Pad for IKEv2"
MIN_PSK_LEN = 16


class Prf(Protocol):
    """A negotiated PRF (ipsec_mesh.ike.crypto.Prf): prf(key, data) -> bytes."""

    def __call__(self, key: bytes, data: bytes) -> bytes: ...


def signed_octets(real_message: bytes, peer_nonce: bytes, prf: Prf, sk_p: bytes,
                  id_payload: IdPayload, int_auth: bytes = b"") -> bytes:
    """RealMessage | NonceData(peer) | prf(SK_p, RestOfIDPayload) [| IntAuth].

    `sk_p` is SK_pi when signing as (or verifying) the initiator, SK_pr for the
    responder. `int_auth` is the whole RFC 9242 section 3.3.2 IntAuth value
    (IntAuth_iN | IntAuth_rN | IKE_AUTH message ID), empty when no
    IKE_INTERMEDIATE exchange took place.
    """
    return real_message + peer_nonce + prf(sk_p, id_payload.body()) + int_auth


class PskCredential:
    """A pre-shared key (at least MIN_PSK_LEN bytes). The key is never printed."""

    def __init__(self, psk: bytes):
        if not isinstance(psk, (bytes, bytearray)) or len(psk) < MIN_PSK_LEN:
            raise ValueError(f"pre-shared keys must be at least {MIN_PSK_LEN} bytes")
        self._psk = bytes(psk)

    def auth_data(self, prf: Prf, octets: bytes) -> bytes:
        """prf(prf(PSK, "Key Pad for IKEv2"), <octets>) (RFC 7296 section 2.15)."""
        return prf(_padded_key(prf, self._psk), octets)

    def __repr__(self) -> str:
        return "PskCredential(<redacted>)"


def _padded_key(prf: Prf, psk: bytes) -> bytes:
    """prf(PSK, "Key Pad for IKEv2"): the same for every IKE SA with this PSK and PRF, and
    needed twice per IKE SA (our AUTH and the peer's): computed once per pair.

    The memo holds keys as secret as the PSKs themselves (which the configuration holds
    anyway), at most _PADDED_KEYS_MAX of them: emptied when full, so PSKs rotated out of
    the configuration do not stay for long. Keyed by the PRF object's identity (one per
    PRF in ike.crypto; the entry holds it, so its id stays its own) and the PSK.
    """
    key = (id(prf), psk)
    entry = _PADDED_KEYS.get(key)
    if entry is not None and entry[0] is prf:
        return entry[1]
    padded = prf(psk, KEY_PAD)
    if len(_PADDED_KEYS) >= _PADDED_KEYS_MAX:
        _PADDED_KEYS.clear()
    _PADDED_KEYS[key] = (prf, padded)
    return padded


_PADDED_KEYS_MAX = 16
_PADDED_KEYS: dict[tuple[int, bytes], tuple[Prf, bytes]] = {}


class CertCredential:
    """Our private key and certificate chain (leaf first, then intermediates)."""

    def __init__(self, private_key: Any, chain: list[Certificate]):
        if not chain:
            raise ValueError("a certificate credential needs at least the leaf certificate")
        try:
            key_family(private_key)
        except AuthenticationFailed as exc:
            raise ValueError(str(exc)) from None
        if _spki(private_key.public_key()) != _spki(chain[0].public_key()):
            raise ValueError("the private key does not belong to the leaf certificate")
        self.private_key = private_key
        self.chain = list(chain)

    @property
    def leaf(self) -> Certificate:
        return self.chain[0]

    def __repr__(self) -> str:
        return f"CertCredential(leaf={dn_text(self.leaf.subject)!r})"


def _spki(public_key: Any) -> bytes:
    spki: bytes = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return spki


def our_hash_algorithms() -> frozenset[int]:
    """What we announce in SIGNATURE_HASH_ALGORITHMS (and accept in method 14)."""
    return frozenset({HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384,
                      HashAlgorithm.SHA2_512, HashAlgorithm.IDENTITY})


def make_auth(credential: PskCredential | CertCredential, octets: bytes, prf: Prf,
              peer_hash_algs: frozenset[int]) -> AuthPayload:
    """Our AUTH payload over `octets` (from `signed_octets`)."""
    if isinstance(credential, PskCredential):
        return AuthPayload(AuthMethod.SHARED_KEY_MIC, credential.auth_data(prf, octets))
    key = credential.private_key
    if not peer_hash_algs:
        method, signature = sign_legacy_ecdsa(key, octets)
        return AuthPayload(method, signature)
    usable = [h for h in hash_preference(key) if h in peer_hash_algs]
    if not usable:
        raise AuthenticationFailed("no signature hash algorithm in common with the peer")
    algorithm = SignatureAlgorithm(key_family(key), usable[0])
    identifier = algorithm.identifier()
    data = bytes([len(identifier)]) + identifier + algorithm.sign(key, octets)
    return AuthPayload(AuthMethod.DIGITAL_SIGNATURE, data)


def verify_auth(auth: AuthPayload, octets: bytes, prf: Prf, *, psks: Sequence[bytes] = (),
                peer_public_key: Any = None) -> None:
    """Raise AuthenticationFailed unless `auth` proves the peer signed/MACed `octets`.

    `psks`: the PSKs configured for this peer (several during a rotation); each must
    be at least MIN_PSK_LEN bytes, a shorter one is a configuration error (ValueError).
    `peer_public_key`: the key of the peer's validated certificate (TrustStore.validate).
    """
    if auth.method == AuthMethod.SHARED_KEY_MIC:
        _verify_psk(auth.data, octets, prf, psks)
        return
    if peer_public_key is None:
        raise AuthenticationFailed(f"auth method {auth.method} needs the peer's public key")
    if auth.method == AuthMethod.DIGITAL_SIGNATURE:
        algorithm, signature = _split_digital_signature(auth.data)
        if algorithm.hash_alg not in our_hash_algorithms():
            raise AuthenticationFailed("signature hash not among the ones we announced")
        algorithm.verify(peer_public_key, signature, octets)
    elif auth.method in LEGACY_ECDSA:
        verify_legacy_ecdsa(auth.method, peer_public_key, auth.data, octets)
    else:
        raise AuthenticationFailed(f"auth method {auth.method} not accepted")


def _verify_psk(received: bytes, octets: bytes, prf: Prf, psks: Sequence[bytes]) -> None:
    if not psks:
        raise AuthenticationFailed("PSK authentication but no PSK configured for the peer")
    matched = False
    for psk in psks:  # all of them, always: the time taken says nothing about which matched
        expected = PskCredential(psk).auth_data(prf, octets)
        matched |= hmac.compare_digest(expected, received)
    if not matched:
        raise AuthenticationFailed("PSK AUTH does not match")


def _split_digital_signature(data: bytes) -> tuple[SignatureAlgorithm, bytes]:
    """RFC 7427 section 3: 1-byte ASN.1 length | AlgorithmIdentifier | signature."""
    if len(data) < 2 or len(data) < 1 + data[0] + 1:
        raise AuthenticationFailed("truncated Digital Signature AUTH data")
    length = data[0]
    return SignatureAlgorithm.from_identifier(data[1:1 + length]), data[1 + length:]
