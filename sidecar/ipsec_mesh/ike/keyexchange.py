"""Key exchange methods of IKEv2: Diffie-Hellman groups and KEMs behind one API.

RFC 9370 treats a KEM like a DH group: the initiator sends KE data (a DH public
value, or an ML-KEM encapsulation key), the responder answers with its KE data
(its DH public value, or the KEM ciphertext) and both end with a shared secret.

Every value received from the peer is checked before use (RFC 7296 section
5.1.3 ... and RFC 6989): exact length, range or curve membership, non-zero
X25519/X448 result, FIPS 203 encapsulation key and ciphertext checks. A failed
check raises `CryptoError`; nothing from the peer reaches the primitives
unchecked.
"""

from __future__ import annotations

import hmac as _hmac
import warnings
from contextlib import contextmanager
from functools import cache
from typing import Callable, Iterator, TypeAlias, cast

from cryptography.hazmat.primitives.asymmetric import dh, ec, mlkem, x448, x25519
from cryptography.utils import CryptographyDeprecationWarning

from ..records import record
from .constants import FORBIDDEN_KE, KeId
from .errors import CryptoError

# RFC 3526 MODP groups, generator 2. Each prime is 2^n - 2^(n-64) - 1 + 2^64 * ([2^(n-130) pi] + k);
# the tests recompute them from that formula.
MODP_PRIMES: dict[KeId, int] = {
    KeId.MODP_2048: int(
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
        "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
        "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
        "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
        "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
        "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
        "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
        "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
        16,
    ),
    KeId.MODP_3072: int(
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
        "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
        "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
        "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
        "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
        "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
        "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
        "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
        "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
        "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
        "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
        "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
        16,
    ),
    KeId.MODP_4096: int(
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
        "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
        "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
        "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
        "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
        "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
        "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
        "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
        "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
        "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
        "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
        "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
        "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8"
        "DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2"
        "233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
        "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF",
        16,
    ),
}
MODP_GENERATOR = 2

ECP_CURVES: dict[KeId, tuple[type[ec.EllipticCurve], int]] = {
    # group: (curve, octets per coordinate)  -- RFC 5903 section 7
    KeId.ECP_256: (ec.SECP256R1, 32),
    KeId.ECP_384: (ec.SECP384R1, 48),
    KeId.ECP_521: (ec.SECP521R1, 66),
}


MontgomeryPrivateKey = x25519.X25519PrivateKey | x448.X448PrivateKey
# A DH private key of any supported group; its type says the group's family. A string:
# every runtime access to dh.DHPrivateKey raises cryptography's FFDH deprecation warning.
DhPrivateKey: TypeAlias = "dh.DHPrivateKey | ec.EllipticCurvePrivateKey | MontgomeryPrivateKey"
KemPrivateKey = mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey
KemPublicKey = mlkem.MLKEM768PublicKey | mlkem.MLKEM1024PublicKey


@record(frozen=True)
class _Montgomery:
    """X25519 (RFC 8031) / X448: key generation and raw key length."""

    generate: Callable[[], MontgomeryPrivateKey]
    key_len: int


MONTGOMERY_CURVES: dict[KeId, _Montgomery] = {
    KeId.CURVE25519: _Montgomery(x25519.X25519PrivateKey.generate, 32),
    KeId.CURVE448: _Montgomery(x448.X448PrivateKey.generate, 56),
}


@record(frozen=True)
class _MlKem:
    """ML-KEM parameter set (FIPS 203) as used in IKEv2 (draft-ietf-ipsecme-ikev2-mlkem)."""

    generate: Callable[[], KemPrivateKey]
    load_public: Callable[[bytes], KemPublicKey]
    encapsulation_key_len: int
    ciphertext_len: int


ML_KEMS: dict[KeId, _MlKem] = {
    KeId.ML_KEM_768: _MlKem(
        mlkem.MLKEM768PrivateKey.generate, mlkem.MLKEM768PublicKey.from_public_bytes, 1184, 1088
    ),
    KeId.ML_KEM_1024: _MlKem(
        mlkem.MLKEM1024PrivateKey.generate, mlkem.MLKEM1024PublicKey.from_public_bytes, 1568, 1568
    ),
}

SUPPORTED_KE: frozenset[KeId] = frozenset(MODP_PRIMES) | frozenset(ECP_CURVES) | frozenset(
    MONTGOMERY_CURVES
) | frozenset(ML_KEMS)


def _checked_method(method: int) -> KeId:
    if method in FORBIDDEN_KE:
        raise CryptoError(f"key exchange method {KeId(method).name} is MUST NOT (RFC 8247)")
    member = _SUPPORTED_MEMBERS.get(method)  # a lookup, not an enum call (three per IKE SA)
    if member is None:
        try:
            name = KeId(method).name
        except ValueError:
            name = str(method)
        raise CryptoError(f"key exchange method {name} is not supported")
    return member


_SUPPORTED_MEMBERS: dict[int, KeId] = {int(method): method for method in SUPPORTED_KE}


def ke_data_len(method: int, *, responder: bool = False) -> int:
    """Length of the KE payload data. Only for KEMs do the two directions differ:
    the initiator sends an encapsulation key, the responder a ciphertext."""
    method = _checked_method(method)
    if method in MODP_PRIMES:
        return (MODP_PRIMES[method].bit_length() + 7) // 8
    if method in ECP_CURVES:
        return 2 * ECP_CURVES[method][1]
    if method in MONTGOMERY_CURVES:
        return MONTGOMERY_CURVES[method].key_len
    kem = ML_KEMS[method]
    return kem.ciphertext_len if responder else kem.encapsulation_key_len


def _check_len(method: KeId, data: bytes, expected: int, what: str) -> None:
    if len(data) != expected:
        raise CryptoError(f"{method.name} {what} must be {expected} octets, not {len(data)}")


# ---------------------------------------------------------------- DH groups


@contextmanager
def _ffdh_allowed() -> Iterator[None]:
    # cryptography 50 deprecates finite-field DH; RFC 8247 still lists group 14
    # as MUST for interoperability, so silence that one warning around our calls.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        yield


@cache
def _modp_parameters(method: KeId) -> dh.DHParameters:
    with _ffdh_allowed():
        return dh.DHParameterNumbers(MODP_PRIMES[method], MODP_GENERATOR).parameters()


def _load_modp_public(method: KeId, data: bytes) -> dh.DHPublicKey:
    prime = MODP_PRIMES[method]
    _check_len(method, data, ke_data_len(method), "public value")
    y = int.from_bytes(data, "big")
    # RFC 6989: 1 < y < p-1. The RFC 3526 primes are safe primes (p = 2q + 1),
    # so the only small subgroups are {1} and {1, p-1}, which this excludes.
    # Any other y has order q or 2q; a full membership test (y^q == 1) would
    # cost a full-size exponentiation and RFC 6989 does not ask for it with
    # safe primes: at worst an order-2q value shows the low bit of our exponent,
    # which is ephemeral and never reused.
    if not 1 < y < prime - 1:
        raise CryptoError(f"{method.name} public value is out of range (RFC 6989)")
    try:
        with _ffdh_allowed():
            return dh.DHPublicNumbers(y, _modp_parameters(method).parameter_numbers()).public_key()
    except ValueError as exc:
        raise CryptoError(f"{method.name} public value rejected: {exc}") from None


def _modp_public_bytes(method: KeId, key: dh.DHPublicKey) -> bytes:
    return key.public_numbers().y.to_bytes(ke_data_len(method), "big")


def _modp_shared(method: KeId, private: dh.DHPrivateKey, peer: dh.DHPublicKey) -> bytes:
    # RFC 7296 section 2.14: g^ir is as long as the prime, leading zeros kept.
    try:
        with _ffdh_allowed():
            secret = private.exchange(peer)
    except ValueError as exc:
        raise CryptoError(f"{method.name} exchange failed: {exc}") from None
    return secret.rjust(ke_data_len(method), b"\x00")


def _load_ecp_public(method: KeId, data: bytes) -> ec.EllipticCurvePublicKey:
    curve, _ = ECP_CURVES[method]
    _check_len(method, data, ke_data_len(method), "public value")
    # RFC 5903: KE data is x || y without the 0x04 point-format octet. Decoding
    # checks that both coordinates are field elements and the point is on the
    # curve; the point at infinity has no such encoding so cannot get through.
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve(), b"\x04" + data)
    except ValueError:
        raise CryptoError(f"{method.name} public value is not a point on the curve") from None


def _ecp_public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    numbers = key.public_numbers()
    coord_len = (key.curve.key_size + 7) // 8
    return numbers.x.to_bytes(coord_len, "big") + numbers.y.to_bytes(coord_len, "big")


def _ecp_shared(method: KeId, private: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey) -> bytes:
    # RFC 5903 section 7: the shared secret is the x coordinate of the result.
    try:
        return private.exchange(ec.ECDH(), peer)
    except ValueError:
        raise CryptoError(f"{method.name} exchange failed") from None


def _montgomery_shared(method: KeId, private: MontgomeryPrivateKey, peer_data: bytes) -> bytes:
    _check_len(method, peer_data, ke_data_len(method), "public value")
    # RFC 7748 section 6: an all-zero result means the peer sent a small-order
    # point; it must be refused (OpenSSL refuses too; checked here regardless).
    try:
        if method == KeId.CURVE25519:
            secret = cast(x25519.X25519PrivateKey, private).exchange(x25519.X25519PublicKey.from_public_bytes(peer_data))
        else:
            secret = cast(x448.X448PrivateKey, private).exchange(x448.X448PublicKey.from_public_bytes(peer_data))
    except ValueError:
        raise CryptoError(f"{method.name} peer value gives an all-zero shared secret") from None
    if _hmac.compare_digest(secret, bytes(len(secret))):
        raise CryptoError(f"{method.name} peer value gives an all-zero shared secret")
    return secret


class KeInitiator:
    """The side that sends the first KE payload; `finish` takes the peer's answer."""

    method: KeId
    public_data: bytes

    def finish(self, peer_data: bytes) -> bytes:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.method.name})"


class DhInitiator(KeInitiator):
    """Any DH group (MODP, ECP, X25519/X448): both directions look alike.

    `private_key` is for known-answer tests; normally a fresh key is generated.
    """

    def __init__(self, method: int, private_key: DhPrivateKey | None = None):
        self.method = _checked_method(method)
        if self.method in ML_KEMS:
            raise CryptoError(f"{self.method.name} is a KEM, not a DH group")
        if private_key is not None and not isinstance(private_key, _key_class(self.method)):
            raise CryptoError(f"a {type(private_key).__name__} is not a {self.method.name} key")
        self._private = private_key if private_key is not None else _generate_dh_key(self.method)
        self.public_data = _dh_public_bytes(self.method, self._private)

    def finish(self, peer_data: bytes) -> bytes:
        return _dh_shared(self.method, self._private, peer_data)


class KemInitiator(KeInitiator):
    """ML-KEM: send the encapsulation key, decapsulate the responder's ciphertext."""

    def __init__(self, method: int, private_key: KemPrivateKey | None = None):
        self.method = _checked_method(method)
        if self.method not in ML_KEMS:
            raise CryptoError(f"{self.method.name} is not a KEM")
        self._private = private_key if private_key is not None else ML_KEMS[self.method].generate()
        self.public_data = self._private.public_key().public_bytes_raw()

    def finish(self, peer_data: bytes) -> bytes:
        _check_len(self.method, peer_data, ML_KEMS[self.method].ciphertext_len, "ciphertext")
        # FIPS 203 decapsulation never fails on a well-sized ciphertext: a forged
        # one yields an unrelated secret (implicit rejection) and AUTH then fails.
        try:
            return self._private.decapsulate(peer_data)
        except ValueError:
            raise CryptoError(f"{self.method.name} ciphertext rejected") from None


def _key_class(method: KeId) -> type | tuple[type, ...]:
    """The private key class of a DH method (the public-value and secret code dispatch on
    the method: a key given for known-answer tests must be of that class)."""
    if method in MONTGOMERY_CURVES:
        return x25519.X25519PrivateKey if method == KeId.CURVE25519 else x448.X448PrivateKey
    return ec.EllipticCurvePrivateKey if method in ECP_CURVES else dh.DHPrivateKey


def _generate_dh_key(method: KeId) -> DhPrivateKey:
    if method in MODP_PRIMES:
        # OpenSSL recognises the RFC 3526 groups and draws exponents of about
        # twice their security strength (224/275/324 bits): RFC 3526 section 8
        # and SP 800-56A rev. 3 both allow that, and it makes MODP 3-5x faster.
        with _ffdh_allowed():
            return _modp_parameters(method).generate_private_key()
    if method in ECP_CURVES:
        return ec.generate_private_key(ECP_CURVES[method][0]())
    return MONTGOMERY_CURVES[method].generate()


# Dispatch on the key's type, finite-field DH last (see DhPrivateKey).
def _dh_public_bytes(method: KeId, private_key: DhPrivateKey) -> bytes:
    # Dispatch on the method (a dict lookup), the key's class being that method's: the ABC
    # isinstance tests cost more than the rest of this for X25519, the default group.
    if method in MONTGOMERY_CURVES:
        return cast(MontgomeryPrivateKey, private_key).public_key().public_bytes_raw()
    if method in ECP_CURVES:
        return _ecp_public_bytes(cast(ec.EllipticCurvePrivateKey, private_key).public_key())
    return _modp_public_bytes(method, cast(dh.DHPrivateKey, private_key).public_key())


def _dh_shared(method: KeId, private_key: DhPrivateKey, peer_data: bytes) -> bytes:
    if method in MONTGOMERY_CURVES:
        return _montgomery_shared(method, cast(MontgomeryPrivateKey, private_key), peer_data)
    if method in ECP_CURVES:
        return _ecp_shared(method, cast(ec.EllipticCurvePrivateKey, private_key), _load_ecp_public(method, peer_data))
    return _modp_shared(method, cast(dh.DHPrivateKey, private_key), _load_modp_public(method, peer_data))


def start_key_exchange(method: int) -> KeInitiator:
    """Begin a key exchange as the side that sends first (fresh private key)."""
    method = _checked_method(method)
    return KemInitiator(method) if method in ML_KEMS else DhInitiator(method)


def respond_key_exchange(method: int, peer_data: bytes) -> tuple[bytes, bytes]:
    """Answer the peer's KE data: returns (our KE data, shared secret).

    For a DH group our KE data is our public value; for ML-KEM it is the
    ciphertext that encapsulates the secret to the peer's encapsulation key.
    """
    method = _checked_method(method)
    if method not in ML_KEMS:
        ours = DhInitiator(method)
        return ours.public_data, ours.finish(peer_data)
    kem = ML_KEMS[method]
    _check_len(method, peer_data, kem.encapsulation_key_len, "encapsulation key")
    try:
        # Loading performs the FIPS 203 section 7.2 modulus check on the key.
        peer_key = kem.load_public(peer_data)
    except ValueError:
        raise CryptoError(f"{method.name} encapsulation key fails the FIPS 203 check") from None
    shared, ciphertext = peer_key.encapsulate()
    return ciphertext, shared
