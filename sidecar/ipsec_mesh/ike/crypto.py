"""Symmetric cryptography of IKEv2: the PRFs and the AEAD ciphers of the SK payload.

Only what ipsec-mesh negotiates is implemented (RFC 8247 MUST/SHOULD+):
HMAC-SHA2 PRFs (RFC 4868) and the AEAD ciphers AES-GCM with a 16-octet ICV
(RFC 5282 for IKE, RFC 4106 for ESP) and ChaCha20-Poly1305 (RFC 7634).
Everything else is refused with `CryptoError`, and MUST-NOT algorithms are
named as such in the message.
"""

from __future__ import annotations

import enum
import hmac as stdlib_hmac
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ..records import record
from .constants import FORBIDDEN_ENCR, FORBIDDEN_PRF, EncrId, PrfId
from .errors import CryptoError, IntegrityError

# What hmac.digest calls for an OpenSSL digest named by a string, without its wrapper
# (the PRF runs ~16 times per IKE SA); the wrapper where this interpreter has no OpenSSL.
_hmac_digest: Callable[[bytes, bytes, str], bytes]
# And the keyed HMAC object that prf+ copies for each block: the key is set up once per
# prf+ instead of once per block (a 6-block prf+ took half the time).
_hmac_new: Callable[..., Any]
try:
    from _hashlib import hmac_digest as _hmac_digest
    from _hashlib import hmac_new as _hmac_new
except ImportError:  # pragma: no cover - CPython builds without OpenSSL
    _hmac_digest = stdlib_hmac.digest
    _hmac_new = stdlib_hmac.new

PRF_PLUS_MAX_BLOCKS = 255  # RFC 7296 section 2.13: the counter octet goes from 1 to 255

_PRF_HASHES: dict[PrfId, hashes.HashAlgorithm] = {
    PrfId.HMAC_SHA2_256: hashes.SHA256(),
    PrfId.HMAC_SHA2_384: hashes.SHA384(),
    PrfId.HMAC_SHA2_512: hashes.SHA512(),
}

SUPPORTED_PRF: frozenset[PrfId] = frozenset(_PRF_HASHES)
SUPPORTED_ENCR: frozenset[EncrId] = frozenset({EncrId.AES_GCM_16, EncrId.CHACHA20_POLY1305})

AEAD_IV_LEN = 8  # explicit IV carried in each SK payload / ESP packet
AEAD_ICV_LEN = 16
AEAD_SALT_LEN = 4  # implicit nonce part, taken from the key material
AES_GCM_KEY_BITS = frozenset({128, 192, 256})
CHACHA20_KEY_LEN = 32


def _algorithm_name(enum_type: type[enum.IntEnum], value: int) -> str:
    try:
        return enum_type(value).name
    except ValueError:
        return str(value)


@record(frozen=True)
class Prf:
    """An HMAC-based IKEv2 PRF. Call it as prf(key, data)."""

    prf_id: PrfId
    output_len: int
    # RFC 7296 section 2.13: SK_d, SK_pi and SK_pr have the PRF's preferred key length.
    preferred_key_len: int
    # None for HMAC (any key length); a length for AES-XCBC/CMAC-style PRFs (section 2.14).
    fixed_key_len: int | None = None

    def __call__(self, key: bytes, data: bytes) -> bytes:
        # The standard library's one-shot HMAC (OpenSSL underneath, like `cryptography`):
        # the same function, without building an HMAC object per call (~16 calls per IKE SA).
        return _hmac_digest(key, data, _HASH_NAMES[self.prf_id])

    def plus(self, key: bytes, seed: bytes, length: int) -> bytes:
        """prf+ (RFC 7296 section 2.13): T1 | T2 | ... truncated to `length` octets."""
        if length < 0:
            raise CryptoError("prf+ length must not be negative")
        if length > PRF_PLUS_MAX_BLOCKS * self.output_len:
            raise CryptoError(
                f"prf+ cannot produce {length} octets with {self.prf_id.name} "
                f"(at most {PRF_PLUS_MAX_BLOCKS} blocks)"
            )
        count = -(-length // self.output_len)
        if count <= 1:
            return self(key, seed + b"\x01")[:length] if count else b""
        keyed = _hmac_new(key, digestmod=_HASH_NAMES[self.prf_id])
        blocks: list[bytes] = []
        block = b""
        for counter in range(1, count + 1):
            mac = keyed.copy()
            mac.update(block + seed + _COUNTERS[counter])
            block = mac.digest()
            blocks.append(block)
        return b"".join(blocks)[:length]


_COUNTERS = [bytes([counter]) for counter in range(PRF_PLUS_MAX_BLOCKS + 1)]
_HASH_NAMES: dict[int, str] = {prf_id: hash_algorithm.name for prf_id, hash_algorithm in _PRF_HASHES.items()}
# Immutable, so one per supported PRF serves every IKE SA.
_PRFS: dict[int, Prf] = {prf_id: Prf(prf_id, output_len=h.digest_size, preferred_key_len=h.digest_size)
                         for prf_id, h in _PRF_HASHES.items()}


def prf_for(prf_id: int) -> Prf:
    """The PRF for a negotiated transform ID; CryptoError for anything not supported."""
    prf = _PRFS.get(prf_id)
    if prf is not None:
        return prf
    if prf_id in FORBIDDEN_PRF:
        raise CryptoError(f"PRF {_algorithm_name(PrfId, prf_id)} is MUST NOT (RFC 8247)")
    raise CryptoError(f"PRF {_algorithm_name(PrfId, prf_id)} is not supported")


def _aead_key_len(encr_id: int, key_bits: int | None) -> int:
    """Cipher key length in octets (without the salt), validating the transform."""
    if encr_id in FORBIDDEN_ENCR:
        raise CryptoError(f"cipher {_algorithm_name(EncrId, encr_id)} is MUST NOT (RFC 8247)")
    if encr_id == EncrId.AES_GCM_16:
        if key_bits not in AES_GCM_KEY_BITS:
            raise CryptoError(f"AES-GCM needs a key length of 128, 192 or 256 bits, not {key_bits}")
        return key_bits // 8
    if encr_id == EncrId.CHACHA20_POLY1305:
        # RFC 7634 section 2: the transform carries no Key Length attribute.
        if key_bits is not None:
            raise CryptoError("ChaCha20-Poly1305 takes no key length attribute")
        return CHACHA20_KEY_LEN
    raise CryptoError(f"cipher {_algorithm_name(EncrId, encr_id)} is not supported")


def aead_keymat_len(encr_id: int, key_bits: int | None) -> int:
    """Octets of keying material per direction: cipher key followed by a 4-octet salt."""
    return _aead_key_len(encr_id, key_bits) + AEAD_SALT_LEN


_AEADS: dict[int, tuple[EncrId, type[AESGCM] | type[ChaCha20Poly1305]]] = {
    EncrId.AES_GCM_16: (EncrId.AES_GCM_16, AESGCM),
    EncrId.CHACHA20_POLY1305: (EncrId.CHACHA20_POLY1305, ChaCha20Poly1305),
}


class AeadProtector:
    """One direction of an AEAD-protected SK payload (RFC 5282 / RFC 7634).

    Nonce = salt (last 4 octets of the key material) || 8-octet explicit IV.
    The IV is a 64-bit counter, so it never repeats under one key; when the
    counter is exhausted the SA must be rekeyed and `next_iv` refuses.
    """

    iv_len = AEAD_IV_LEN
    icv_len = AEAD_ICV_LEN

    def __init__(self, encr_id: int, key_bits: int | None, keymat: bytes):
        key_len = _aead_key_len(encr_id, key_bits)
        if len(keymat) != key_len + AEAD_SALT_LEN:
            raise CryptoError(
                f"AEAD key material must be {key_len + AEAD_SALT_LEN} octets, not {len(keymat)}"
            )
        # Two per IKE SA: the member and the cipher class from a table (_aead_key_len has
        # accepted `encr_id`, so it is one of them) instead of an enum call and a comparison.
        self.encr_id, cipher = _AEADS[encr_id]
        self._salt = keymat[key_len:]
        self._aead = cipher(keymat[:key_len])
        self._next_counter = 0

    def __repr__(self) -> str:
        return f"AeadProtector({self.encr_id.name}, ivs_used={self._next_counter})"

    def next_iv(self) -> bytes:
        if self._next_counter >= 1 << 64:
            raise CryptoError("AEAD IV space exhausted: rekey the SA")
        iv = self._next_counter.to_bytes(AEAD_IV_LEN, "big")
        self._next_counter += 1
        return iv

    def _nonce(self, iv: bytes) -> bytes:
        if len(iv) != AEAD_IV_LEN:
            raise CryptoError(f"AEAD IV must be {AEAD_IV_LEN} octets, not {len(iv)}")
        return self._salt + iv

    def seal(self, iv: bytes, aad: bytes, plaintext: bytes) -> bytes:
        """Encrypt and authenticate: returns ciphertext || ICV."""
        return self._aead.encrypt(self._nonce(iv), plaintext, aad)

    def open(self, iv: bytes, aad: bytes, ciphertext_and_icv: bytes) -> bytes:
        """Check and decrypt; IntegrityError if anything was altered."""
        nonce = self._nonce(iv)
        if len(ciphertext_and_icv) < AEAD_ICV_LEN:
            raise IntegrityError("encrypted data shorter than the ICV")
        try:
            return self._aead.decrypt(nonce, ciphertext_and_icv, aad)
        except InvalidTag:
            raise IntegrityError("ICV check failed") from None
