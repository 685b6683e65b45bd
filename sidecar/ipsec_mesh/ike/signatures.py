"""Signature algorithms for IKEv2 AUTH (RFC 7427 Digital Signature, RFC 8420 Ed25519).

A `SignatureAlgorithm` knows its DER AlgorithmIdentifier (what RFC 7427 puts in
front of the signature), how to sign and how to verify. Only SHA-2 and the
Ed25519 "identity" hash are accepted: SHA-1 signatures are refused (RFC 8247).
"""

from __future__ import annotations

import enum

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from ..keybounds import rsa_key_problem
from ..records import record
from . import der
from .constants import HashAlgorithm
from .errors import AuthenticationFailed

OID_ECDSA = {
    HashAlgorithm.SHA2_256: "1.2.840.10045.4.3.2",
    HashAlgorithm.SHA2_384: "1.2.840.10045.4.3.3",
    HashAlgorithm.SHA2_512: "1.2.840.10045.4.3.4",
}
OID_RSA_PKCS1 = {
    HashAlgorithm.SHA2_256: "1.2.840.113549.1.1.11",
    HashAlgorithm.SHA2_384: "1.2.840.113549.1.1.12",
    HashAlgorithm.SHA2_512: "1.2.840.113549.1.1.13",
}
OID_HASH = {
    HashAlgorithm.SHA2_256: "2.16.840.1.101.3.4.2.1",
    HashAlgorithm.SHA2_384: "2.16.840.1.101.3.4.2.2",
    HashAlgorithm.SHA2_512: "2.16.840.1.101.3.4.2.3",
}
OID_RSASSA_PSS = "1.2.840.113549.1.1.10"
OID_MGF1 = "1.2.840.113549.1.1.8"
OID_ED25519 = "1.3.101.112"  # RFC 8410

# The keys we sign and verify with (key_family refuses any other kind).
SigningKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
VerifyingKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_HASH_CLASSES: dict[HashAlgorithm, type[hashes.SHA256] | type[hashes.SHA384] | type[hashes.SHA512]] = {
    HashAlgorithm.SHA2_256: hashes.SHA256,
    HashAlgorithm.SHA2_384: hashes.SHA384,
    HashAlgorithm.SHA2_512: hashes.SHA512,
}
_OID_TO_HASH = {oid: h for h, oid in OID_HASH.items()}

# Legacy RFC 4754 methods: curve, hash and the size of r and s in raw r||s form.
LEGACY_ECDSA = {
    9: (ec.SECP256R1, HashAlgorithm.SHA2_256, 32),
    10: (ec.SECP384R1, HashAlgorithm.SHA2_384, 48),
    11: (ec.SECP521R1, HashAlgorithm.SHA2_512, 66),
}


class Family(enum.Enum):
    ECDSA = "ecdsa"
    ED25519 = "ed25519"
    RSA_PSS = "rsa-pss"
    RSA_PKCS1 = "rsa-pkcs1"  # verified (strongSwan's default for RSA keys), never produced


@record(frozen=True)
class SignatureAlgorithm:
    family: Family
    hash_alg: HashAlgorithm  # IDENTITY for Ed25519
    salt_length: int | None = None  # RSA-PSS only

    # -- encoding ------------------------------------------------------------------
    def identifier(self) -> bytes:
        """The DER AlgorithmIdentifier, as RFC 7427 Appendix A lists it."""
        if self.family is Family.ED25519:
            return der.encode_sequence(der.encode_oid(OID_ED25519))
        if self.family is Family.ECDSA:
            return der.encode_sequence(der.encode_oid(OID_ECDSA[self.hash_alg]))
        if self.family is Family.RSA_PKCS1:
            return der.encode_sequence(der.encode_oid(OID_RSA_PKCS1[self.hash_alg]), der.NULL_TLV)
        hash_id = der.encode_sequence(der.encode_oid(OID_HASH[self.hash_alg]), der.NULL_TLV)
        params = der.encode_sequence(
            der.encode_explicit(0, hash_id),
            der.encode_explicit(1, der.encode_sequence(der.encode_oid(OID_MGF1), hash_id)),
            der.encode_explicit(2, der.encode_integer(self._salt())),
        )
        return der.encode_sequence(der.encode_oid(OID_RSASSA_PSS), params)

    @classmethod
    def from_identifier(cls, data: bytes) -> "SignatureAlgorithm":
        """Decode an AlgorithmIdentifier we accept; AuthenticationFailed for anything else."""
        try:
            parts = der.children(der.read_single(data, der.SEQUENCE).value)
            if not parts or parts[0].tag != der.OBJECT_IDENTIFIER or len(parts) > 2:
                raise AuthenticationFailed("malformed signature AlgorithmIdentifier")
            oid = der.oid_to_dotted(parts[0].value)
            params = parts[1] if len(parts) == 2 else None
            return cls._from_oid(oid, params)
        except der.DerError as exc:
            raise AuthenticationFailed(f"malformed signature AlgorithmIdentifier: {exc}") from None

    @classmethod
    def _from_oid(cls, oid: str, params: der.Tlv | None) -> "SignatureAlgorithm":
        for family, table in ((Family.ECDSA, OID_ECDSA), (Family.RSA_PKCS1, OID_RSA_PKCS1)):
            for hash_alg, known in table.items():
                if oid == known:
                    # ECDSA has absent parameters; PKCS#1 has NULL (absent tolerated).
                    if params is not None and (family is Family.ECDSA or params.encoded != der.NULL_TLV):
                        raise AuthenticationFailed(f"unexpected parameters for {oid}")
                    return cls(family, hash_alg)
        if oid == OID_ED25519:
            if params is not None:
                raise AuthenticationFailed("Ed25519 AlgorithmIdentifier must have no parameters")
            return cls(Family.ED25519, HashAlgorithm.IDENTITY)
        if oid == OID_RSASSA_PSS:
            if params is None or params.tag != der.SEQUENCE:
                raise AuthenticationFailed("RSASSA-PSS without parameters (SHA-1 default) refused")
            return _pss_from_params(params.value)
        raise AuthenticationFailed(f"unsupported signature algorithm {oid}")

    # -- operations -------------------------------------------------------------------
    def sign(self, private_key: SigningKey, data: bytes) -> bytes:
        if self.family is Family.ED25519 and isinstance(private_key, ed25519.Ed25519PrivateKey):
            return private_key.sign(data)
        if self.family is Family.ECDSA and isinstance(private_key, ec.EllipticCurvePrivateKey):
            return private_key.sign(data, ec.ECDSA(self.hash_function()))  # DER, as RFC 7427 says
        if self.family is Family.RSA_PSS and isinstance(private_key, rsa.RSAPrivateKey):
            return private_key.sign(data, self.pss_padding(), self.hash_function())
        raise TypeError(f"we do not produce {self.family.value} signatures with a {type(private_key).__name__}")

    def verify(self, public_key: VerifyingKey, signature: bytes, data: bytes) -> None:
        """Raise AuthenticationFailed unless `signature` over `data` verifies with `public_key`."""
        # After this check the key's type says the family (RSA keys: PSS or PKCS#1).
        check_key_matches(self.family, public_key)
        try:
            if isinstance(public_key, ed25519.Ed25519PublicKey):
                public_key.verify(signature, data)
            elif isinstance(public_key, ec.EllipticCurvePublicKey):
                public_key.verify(signature, data, ec.ECDSA(self.hash_function()))
            elif self.family is Family.RSA_PSS:
                public_key.verify(signature, data, self.pss_padding(), self.hash_function())
            else:
                public_key.verify(signature, data, padding.PKCS1v15(), self.hash_function())
        except (InvalidSignature, ValueError, UnsupportedAlgorithm):
            raise AuthenticationFailed(f"{self.family.value} signature does not verify") from None

    def hash_function(self) -> hashes.HashAlgorithm:
        return _HASH_CLASSES[self.hash_alg]()

    def _salt(self) -> int:
        return self.salt_length if self.salt_length is not None else self.hash_function().digest_size

    def pss_padding(self) -> padding.PSS:
        return padding.PSS(mgf=padding.MGF1(self.hash_function()), salt_length=self._salt())


def _pss_from_params(value: bytes) -> SignatureAlgorithm:
    """RSASSA-PSS-params (RFC 4055): SHA-2 hash, MGF1 with the same hash, trailer 1."""
    items = der.children(value)
    fields = {tlv.tag: der.read_single(tlv.value) for tlv in items}
    if len(fields) != len(items) or set(fields) - {0xA0, 0xA1, 0xA2, 0xA3}:
        raise AuthenticationFailed("unexpected field in RSASSA-PSS parameters")
    if 0xA0 not in fields or 0xA1 not in fields:
        raise AuthenticationFailed("RSASSA-PSS with default SHA-1 hash or MGF refused")
    hash_alg = _hash_from_identifier(fields[0xA0])
    mgf = der.children(fields[0xA1].value) if fields[0xA1].tag == der.SEQUENCE else []
    if (len(mgf) != 2 or mgf[0].encoded != der.encode_oid(OID_MGF1)
            or _hash_from_identifier(mgf[1]) != hash_alg):
        raise AuthenticationFailed("RSASSA-PSS must use MGF1 with the signature hash")
    salt = der.read_integer(fields[0xA2].value) if 0xA2 in fields else 20
    trailer = der.read_integer(fields[0xA3].value) if 0xA3 in fields else 1
    if not 0 <= salt <= 512 or trailer != 1:
        raise AuthenticationFailed("bad RSASSA-PSS salt length or trailer field")
    return SignatureAlgorithm(Family.RSA_PSS, hash_alg, salt)


def _hash_from_identifier(tlv: der.Tlv) -> HashAlgorithm:
    parts = der.children(tlv.value) if tlv.tag == der.SEQUENCE else []
    if not parts or len(parts) > 2 or parts[0].tag != der.OBJECT_IDENTIFIER:
        raise AuthenticationFailed("malformed hash AlgorithmIdentifier")
    if len(parts) == 2 and parts[1].encoded != der.NULL_TLV:
        raise AuthenticationFailed("unexpected hash parameters")
    hash_alg = _OID_TO_HASH.get(der.oid_to_dotted(parts[0].value))
    if hash_alg is None:
        raise AuthenticationFailed("hash algorithm not accepted (SHA-2 only)")
    return hash_alg


def key_family(key: object) -> Family:
    """The family a public or private key signs with (RSA keys sign with PSS)."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return Family.ED25519
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return Family.ECDSA
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        problem = rsa_key_problem(key)
        if problem is not None:
            raise AuthenticationFailed(problem)
        return Family.RSA_PSS
    raise AuthenticationFailed(f"unsupported key type {type(key).__name__}")


def check_key_matches(family: Family, public_key: object) -> None:
    have = key_family(public_key)
    compatible = {have} | ({Family.RSA_PKCS1} if have is Family.RSA_PSS else set())
    if family not in compatible:
        raise AuthenticationFailed(f"{family.value} signature but the peer's key is {have.value}")


def hash_preference(key: SigningKey | VerifyingKey) -> list[HashAlgorithm]:
    """Hashes this key can sign with, best first (the curve's own hash first for ECDSA)."""
    family = key_family(key)
    if family is Family.ED25519:
        return [HashAlgorithm.IDENTITY]
    sha2 = [HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512]
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        own = {256: HashAlgorithm.SHA2_256, 384: HashAlgorithm.SHA2_384}.get(
            key.curve.key_size, HashAlgorithm.SHA2_512)
        # the curve's own hash, then stronger ones, then weaker ones
        return sorted(sha2, key=lambda h: (h < own, abs(h - own)))
    return sha2


def verify_legacy_ecdsa(method: int, public_key: object, signature: bytes, data: bytes) -> None:
    """RFC 4754 methods 9/10/11: raw r||s over the curve's fixed hash."""
    curve, hash_alg, size = LEGACY_ECDSA[method]
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, curve):
        raise AuthenticationFailed(f"auth method {method} needs a {curve.name} key")
    if len(signature) != 2 * size:
        raise AuthenticationFailed(f"auth method {method} signature must be {2 * size} bytes")
    r = int.from_bytes(signature[:size], "big")
    s = int.from_bytes(signature[size:], "big")
    SignatureAlgorithm(Family.ECDSA, hash_alg).verify(public_key, encode_dss_signature(r, s), data)


def sign_legacy_ecdsa(private_key: SigningKey, data: bytes) -> tuple[int, bytes]:
    """RFC 4754 signature for peers that sent no SIGNATURE_HASH_ALGORITHMS: (method, r||s)."""
    for method, (curve, hash_alg, size) in LEGACY_ECDSA.items():
        if isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(private_key.curve, curve):
            der_sig = SignatureAlgorithm(Family.ECDSA, hash_alg).sign(private_key, data)
            r, s = decode_dss_signature(der_sig)
            return method, r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise AuthenticationFailed("the peer supports no RFC 7427 hash and our key has no RFC 4754 method")
