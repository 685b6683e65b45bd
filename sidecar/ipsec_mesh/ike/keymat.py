"""IKEv2 key derivation: SKEYSEED, the SK_* keys and Child SA KEYMAT.

RFC 7296 sections 2.13, 2.14, 2.17 and 2.18, extended by RFC 9370 for
additional key exchanges (IKE_INTERMEDIATE / IKE_FOLLOWUP_KE). Shared secrets
are passed exactly as the key exchange returned them (DH: full prime length).
Key bytes never appear in a repr.
"""

from __future__ import annotations

from dataclasses import fields

from ..records import record
from .crypto import Prf
from .errors import CryptoError

IKE_SPI_LEN = 8
NONCE_LEN = 32  # what we send: >= 16 octets and >= half of every supported PRF's key
NONCE_MIN_LEN, NONCE_MAX_LEN = 16, 256  # RFC 7296 section 3.9


class _SecretRepr:
    """repr that names each key and its length, never its bytes."""

    def __repr__(self) -> str:
        parts = ", ".join(f"{f.name}=<{len(getattr(self, f.name))} bytes>"
                          for f in fields(self))  # type: ignore[arg-type]  # subclasses are dataclasses
        return f"{type(self).__name__}({parts})"


@record(frozen=True, repr=False)
class IkeKeys(_SecretRepr):
    """The seven IKE SA keys in RFC 7296 order; sk_ai/sk_ar are empty with an AEAD."""

    sk_d: bytes
    sk_ai: bytes
    sk_ar: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes


@record(frozen=True, repr=False)
class ChildKeys(_SecretRepr):
    """Child SA keys: initiator-to-responder first (RFC 7296 section 2.17).

    With an AEAD the encr_* values are key || salt and integ_* are empty.
    """

    encr_i: bytes
    integ_i: bytes
    encr_r: bytes
    integ_r: bytes


def check_nonce(prf: Prf, nonce: bytes) -> None:
    """Refuse a peer nonce that RFC 7296 forbids: 16..256 octets (section 3.9)
    and at least half the negotiated PRF's key size (section 2.10)."""
    minimum = max(NONCE_MIN_LEN, -(-prf.preferred_key_len // 2))
    if not minimum <= len(nonce) <= NONCE_MAX_LEN:
        raise CryptoError(
            f"nonce of {len(nonce)} octets; {prf.prf_id.name} needs {minimum} to {NONCE_MAX_LEN}"
        )


def skeyseed(prf: Prf, ni: bytes, nr: bytes, shared: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir)  (RFC 7296 section 2.14).

    For PRFs with a fixed key length (AES-XCBC/CMAC-PRF-128) the key is the
    first half-key-length of each nonce (64 bits each), as section 2.14 says.
    """
    if prf.fixed_key_len is None:
        key = ni + nr
    else:
        half = prf.fixed_key_len // 2
        key = ni[:half] + nr[:half]
    return prf(key, shared)


def rekey_skeyseed(
    prf: Prf,
    old_sk_d: bytes,
    shared: bytes,
    ni: bytes,
    nr: bytes,
    additional_shared: tuple[bytes, ...] = (),
) -> bytes:
    """SKEYSEED = prf(SK_d(old), g^ir(new) | Ni | Nr)  (RFC 7296 section 2.18).

    `prf` is the OLD IKE SA's PRF. When the rekey also ran additional key
    exchanges (RFC 9370 section 2.2.4), their secrets SK(1)..SK(n) come AFTER
    the nonces: prf(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)).
    """
    return prf(old_sk_d, shared + ni + nr + b"".join(additional_shared))


def addke_skeyseed(prf: Prf, sk_d: bytes, shared: bytes, ni: bytes, nr: bytes) -> bytes:
    """SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr)  (RFC 9370 section 2.2.2).

    Used after each IKE_INTERMEDIATE key exchange; then derive_ike_keys with
    the same SPIs and nonces gives the keys of step n.
    """
    return rekey_skeyseed(prf, sk_d, shared, ni, nr)


def _split(material: bytes, lengths: list[int]) -> list[bytes]:
    parts, offset = [], 0
    for length in lengths:
        parts.append(material[offset : offset + length])
        offset += length
    return parts


def _check_lengths(encr_keymat_len: int, integ_key_len: int) -> None:
    if encr_keymat_len <= 0 or integ_key_len < 0:
        raise CryptoError("key lengths must be positive (integrity may be 0 for an AEAD)")


def derive_ike_keys(
    prf: Prf,
    seed: bytes,
    ni: bytes,
    nr: bytes,
    spi_i: bytes,
    spi_r: bytes,
    encr_keymat_len: int,
    integ_key_len: int = 0,
) -> IkeKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr).

    encr_keymat_len includes an AEAD's salt (see crypto.aead_keymat_len).
    """
    _check_lengths(encr_keymat_len, integ_key_len)
    if len(spi_i) != IKE_SPI_LEN or len(spi_r) != IKE_SPI_LEN:
        raise CryptoError("IKE SPIs must be 8 octets each")
    key_len = prf.preferred_key_len
    lengths = [key_len, integ_key_len, integ_key_len, encr_keymat_len, encr_keymat_len, key_len, key_len]
    material = prf.plus(seed, ni + nr + spi_i + spi_r, sum(lengths))
    return IkeKeys(*_split(material, lengths))


def derive_child_keys(
    prf: Prf,
    sk_d: bytes,
    ni: bytes,
    nr: bytes,
    encr_keymat_len: int,
    integ_key_len: int = 0,
    shared_secrets: tuple[bytes, ...] = (),
) -> ChildKeys:
    """KEYMAT = prf+(SK_d, [g^ir(new) |] Ni | Nr [| SK(1) | ... | SK(n)]).

    RFC 7296 section 2.17, with RFC 9370 section 2.2.4 for additional key
    exchanges: `shared_secrets` is empty without PFS, else SK(0), the secret of
    the CREATE_CHILD_SA KE payload (before the nonces), followed by SK(1)..SK(n)
    of each IKE_FOLLOWUP_KE (after them).
    For the first Child SA (in IKE_AUTH) it is always empty and Ni/Nr are the
    IKE_SA_INIT nonces.
    """
    _check_lengths(encr_keymat_len, integ_key_len)
    lengths = [encr_keymat_len, integ_key_len, encr_keymat_len, integ_key_len]
    first, rest = shared_secrets[:1], shared_secrets[1:]
    material = prf.plus(sk_d, b"".join(first) + ni + nr + b"".join(rest), sum(lengths))
    return ChildKeys(*_split(material, lengths))


def intermediate_auth(int_auth_i: bytes, int_auth_r: bytes, auth_mid: int) -> bytes:
    """IntAuth = IntAuth_iN | IntAuth_rN | IKE_AUTH_MID, what AUTH signs after IKE_INTERMEDIATE
    exchanges (RFC 9242 section 3.3.2)."""
    return int_auth_i + int_auth_r + auth_mid.to_bytes(4, "big")
