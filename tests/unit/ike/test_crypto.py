"""PRFs and the AEAD SK protector (RFC 7296 2.13, RFC 5282, RFC 7634)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from ipsec_mesh.ike.constants import FORBIDDEN_ENCR, FORBIDDEN_PRF, EncrId, PrfId
from ipsec_mesh.ike.crypto import (
    SUPPORTED_ENCR,
    SUPPORTED_PRF,
    AeadProtector,
    aead_keymat_len,
    prf_for,
)
from ipsec_mesh.ike.errors import CryptoError, IntegrityError

# --- PRF ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "prf_id, digest",
    [(PrfId.HMAC_SHA2_256, "sha256"), (PrfId.HMAC_SHA2_384, "sha384"), (PrfId.HMAC_SHA2_512, "sha512")],
)
def test_prf_is_hmac_of_the_right_hash(prf_id, digest):
    prf = prf_for(prf_id)
    size = hashlib.new(digest).digest_size
    assert (prf.output_len, prf.preferred_key_len) == (size, size)
    assert prf(b"key", b"data") == hmac.new(b"key", b"data", digest).digest()


def test_rfc4231_hmac_sha256_case_2():
    # RFC 4231 section 4.3 (test case 2): key "Jefe".
    expected = bytes.fromhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    assert prf_for(PrfId.HMAC_SHA2_256)(b"Jefe", b"what do ya want for nothing?") == expected


def test_prf_plus_chains_blocks_per_rfc7296():
    prf = prf_for(PrfId.HMAC_SHA2_256)
    key, seed = b"k" * 32, b"seed"
    t1 = prf(key, seed + b"\x01")
    t2 = prf(key, t1 + seed + b"\x02")
    t3 = prf(key, t2 + seed + b"\x03")
    assert prf.plus(key, seed, 70) == (t1 + t2 + t3)[:70]
    assert prf.plus(key, seed, 0) == b""


@pytest.mark.parametrize("prf_id, digest", [(PrfId.HMAC_SHA2_256, "sha256"), (PrfId.HMAC_SHA2_384, "sha384"),
                                             (PrfId.HMAC_SHA2_512, "sha512")])
def test_prf_plus_is_the_rfc_chain_at_every_length(prf_id, digest):
    prf = prf_for(prf_id)
    key, seed = bytes(range(40)), b"Ni|Nr|SPIi|SPIr"
    chain, block = b"", b""
    for counter in range(1, 6):
        block = hmac.new(key, block + seed + bytes([counter]), digest).digest()
        chain += block
    for length in range(len(chain) + 1):
        assert prf.plus(key, seed, length) == chain[:length]


def test_prf_plus_sets_its_key_up_once_not_per_block(monkeypatch):
    from ipsec_mesh.ike import crypto

    keyed, one_shot = [], []
    original_new, original_digest = crypto._hmac_new, crypto._hmac_digest
    monkeypatch.setattr(crypto, "_hmac_new", lambda *a, **k: keyed.append(a) or original_new(*a, **k))
    monkeypatch.setattr(crypto, "_hmac_digest", lambda *a: one_shot.append(a) or original_digest(*a))
    prf = prf_for(PrfId.HMAC_SHA2_256)
    material = prf.plus(b"s" * 32, b"seed", 168)  # the IKE SA's keys with AES-GCM-256: 6 blocks
    assert (len(keyed), len(one_shot)) == (1, 0)
    assert material[:32] == hmac.new(b"s" * 32, b"seed\x01", "sha256").digest()


def test_prf_plus_caps_at_255_blocks():
    prf = prf_for(PrfId.HMAC_SHA2_256)
    assert len(prf.plus(b"k", b"s", 255 * 32)) == 255 * 32
    with pytest.raises(CryptoError):
        prf.plus(b"k", b"s", 255 * 32 + 1)


@pytest.mark.parametrize("prf_id", sorted(FORBIDDEN_PRF) + [PrfId.HMAC_SHA1, PrfId.AES128_XCBC, 99])
def test_unsupported_and_forbidden_prfs_are_refused(prf_id):
    with pytest.raises(CryptoError):
        prf_for(prf_id)


def test_md5_refusal_says_must_not():
    with pytest.raises(CryptoError, match="MUST NOT"):
        prf_for(PrfId.HMAC_MD5)


def test_supported_sets_exclude_forbidden():
    assert SUPPORTED_PRF == {PrfId.HMAC_SHA2_256, PrfId.HMAC_SHA2_384, PrfId.HMAC_SHA2_512}
    assert SUPPORTED_ENCR == {EncrId.AES_GCM_16, EncrId.CHACHA20_POLY1305}
    assert not SUPPORTED_PRF & FORBIDDEN_PRF and not SUPPORTED_ENCR & FORBIDDEN_ENCR


# --- AEAD known answers --------------------------------------------------------

# McGrew & Viega, "The Galois/Counter Mode of Operation", test cases 4 (AES-128)
# and 16 (AES-256): 96-bit IV = RFC 4106 salt (4 octets) || explicit IV (8 octets).
GCM_PLAINTEXT = bytes.fromhex(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
)
GCM_AAD = bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2")
GCM_SALT, GCM_IV = bytes.fromhex("cafebabe"), bytes.fromhex("facedbaddecaf888")
GCM_VECTORS = [
    (
        128,
        "feffe9928665731c6d6a8f9467308308",
        "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
        "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
        "5bc94fbc3221a5db94fae95ae7121a47",
    ),
    (
        256,
        "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
        "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        "76fc6ece0f4e1768cddf8853bb2d551b",
    ),
]


@pytest.mark.parametrize("key_bits, key, ciphertext, tag", GCM_VECTORS)
def test_aes_gcm_16_known_answer(key_bits, key, ciphertext, tag):
    keymat = bytes.fromhex(key) + GCM_SALT
    assert aead_keymat_len(EncrId.AES_GCM_16, key_bits) == len(keymat)
    protector = AeadProtector(EncrId.AES_GCM_16, key_bits, keymat)
    sealed = protector.seal(GCM_IV, GCM_AAD, GCM_PLAINTEXT)
    assert sealed == bytes.fromhex(ciphertext + tag)
    assert protector.open(GCM_IV, GCM_AAD, sealed) == GCM_PLAINTEXT


# RFC 8439 section 2.8.2: the nonce 07000000 || 4041424344454647 is exactly
# RFC 7634's salt || IV layout.
CHACHA_KEY = bytes(range(0x80, 0xA0))
CHACHA_SALT, CHACHA_IV = bytes.fromhex("07000000"), bytes.fromhex("4041424344454647")
CHACHA_AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
CHACHA_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip "
    b"for the future, sunscreen would be it."
)
CHACHA_SEALED = bytes.fromhex(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116"
    "1ae10b594f09e26a7e902ecbd0600691"
)


def test_chacha20_poly1305_known_answer():
    keymat = CHACHA_KEY + CHACHA_SALT
    assert aead_keymat_len(EncrId.CHACHA20_POLY1305, None) == 36 == len(keymat)
    protector = AeadProtector(EncrId.CHACHA20_POLY1305, None, keymat)
    assert protector.seal(CHACHA_IV, CHACHA_AAD, CHACHA_PLAINTEXT) == CHACHA_SEALED
    assert protector.open(CHACHA_IV, CHACHA_AAD, CHACHA_SEALED) == CHACHA_PLAINTEXT


# --- AEAD behaviour ---------------------------------------------------------------

PROTECTORS = [
    (EncrId.AES_GCM_16, 128),
    (EncrId.AES_GCM_16, 192),
    (EncrId.AES_GCM_16, 256),
    (EncrId.CHACHA20_POLY1305, None),
]


def _protector(encr_id, key_bits, fill=0x11):
    return AeadProtector(encr_id, key_bits, bytes([fill]) * aead_keymat_len(encr_id, key_bits))


@pytest.mark.parametrize("encr_id, key_bits", PROTECTORS)
def test_tampering_anywhere_raises_integrity_error(encr_id, key_bits):
    protector = _protector(encr_id, key_bits)
    iv = protector.next_iv()
    sealed = protector.seal(iv, b"header", b"payload bytes")
    assert len(sealed) == len(b"payload bytes") + protector.icv_len
    for index in range(len(sealed)):
        altered = bytearray(sealed)
        altered[index] ^= 0x01
        with pytest.raises(IntegrityError):
            protector.open(iv, b"header", bytes(altered))
    with pytest.raises(IntegrityError):
        protector.open(iv, b"Header", sealed)  # AAD is authenticated
    other_iv = (int.from_bytes(iv, "big") ^ 1).to_bytes(8, "big")
    with pytest.raises(IntegrityError):
        protector.open(other_iv, b"header", sealed)  # the IV is part of the nonce
    with pytest.raises(IntegrityError):
        protector.open(iv, b"header", sealed[:15])  # shorter than the ICV


@pytest.mark.parametrize("encr_id, key_bits", PROTECTORS)
def test_other_key_cannot_open(encr_id, key_bits):
    ours, theirs = _protector(encr_id, key_bits, 0x11), _protector(encr_id, key_bits, 0x22)
    iv = ours.next_iv()
    with pytest.raises(IntegrityError):
        theirs.open(iv, b"", ours.seal(iv, b"", b"secret"))


def test_ivs_are_unique_and_8_octets():
    protector = _protector(EncrId.AES_GCM_16, 256)
    ivs = [protector.next_iv() for _ in range(5000)]
    assert len(set(ivs)) == len(ivs)
    assert all(len(iv) == protector.iv_len == 8 for iv in ivs)


def test_iv_counter_refuses_to_wrap():
    protector = _protector(EncrId.CHACHA20_POLY1305, None)
    protector._next_counter = (1 << 64) - 1  # jump to the end instead of 2**64 calls
    assert protector.next_iv() == b"\xff" * 8
    with pytest.raises(CryptoError):
        protector.next_iv()


def test_wrong_iv_length_is_refused():
    protector = _protector(EncrId.AES_GCM_16, 128)
    with pytest.raises(CryptoError):
        protector.seal(b"\x00" * 12, b"", b"x")


@pytest.mark.parametrize(
    "encr_id, key_bits",
    [
        (EncrId.AES_GCM_16, None),  # AES needs a Key Length attribute
        (EncrId.AES_GCM_16, 64),
        (EncrId.CHACHA20_POLY1305, 256),  # RFC 7634: no Key Length attribute
        (EncrId.DES, None),
        (EncrId.NULL, None),
        (EncrId.AES_CBC, 128),  # not negotiated by us
        (EncrId.AES_GCM_8, 128),
        (77, None),
    ],
)
def test_bad_transforms_are_refused(encr_id, key_bits):
    with pytest.raises(CryptoError):
        aead_keymat_len(encr_id, key_bits)
    with pytest.raises(CryptoError):
        AeadProtector(encr_id, key_bits, bytes(36))


def test_forbidden_cipher_message_says_must_not():
    with pytest.raises(CryptoError, match="MUST NOT"):
        aead_keymat_len(EncrId.DES, None)


def test_keymat_of_wrong_length_is_refused():
    with pytest.raises(CryptoError):
        AeadProtector(EncrId.AES_GCM_16, 128, bytes(16))  # salt missing


def test_repr_shows_no_key_material():
    protector = AeadProtector(EncrId.AES_GCM_16, 128, b"\xab" * 20)
    text = repr(protector)
    assert "AES_GCM_16" in text and "abab" not in text.lower() and "\\xab" not in text
