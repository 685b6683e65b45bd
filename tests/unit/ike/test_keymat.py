"""Key derivation against NIST CAVP vectors, plus the RFC 9370 and AEAD wiring."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipsec_mesh.ike.constants import EncrId, KeId, PrfId
from ipsec_mesh.ike.crypto import AeadProtector, Prf, aead_keymat_len, prf_for
from ipsec_mesh.ike.errors import CryptoError
from ipsec_mesh.ike.keyexchange import respond_key_exchange, start_key_exchange
from ipsec_mesh.ike.keymat import (
    NONCE_LEN,
    ChildKeys,
    IkeKeys,
    addke_skeyseed,
    check_nonce,
    derive_child_keys,
    derive_ike_keys,
    rekey_skeyseed,
    skeyseed,
)

VECTOR_FILE = Path(__file__).parents[2] / "data" / "ikev2_kdf_cavp.txt"
PRF_BY_DIGEST = {"SHA256": PrfId.HMAC_SHA2_256, "SHA384": PrfId.HMAC_SHA2_384, "SHA512": PrfId.HMAC_SHA2_512}
HEX_FIELDS = ("ni", "nr", "secret", "spii", "spir", "seed", "key", "output")


def _load_vectors() -> list[dict]:
    vectors = []
    for block in VECTOR_FILE.read_text().split("\n\n"):
        entry = {}
        for line in block.splitlines():
            if line and not line.startswith("#"):
                name, value = line.split(" = ", 1)
                entry[name] = bytes.fromhex(value) if name in HEX_FIELDS else value
        if entry:
            entry["prf"] = prf_for(PRF_BY_DIGEST[entry["digest"]])
            vectors.append(entry)
    return vectors


VECTORS = _load_vectors()


def _of_mode(*modes: str) -> list:
    return [pytest.param(v, id=v["source"]) for v in VECTORS if v["mode"] in modes]


def test_vector_file_covers_every_mode_and_hash():
    seen = {(v["mode"], v["digest"]) for v in VECTORS}
    for digest in ("SHA256", "SHA384", "SHA512"):
        assert {("skeyseed", digest), ("dkm", digest), ("rekey", digest)} <= seen
    for digest in ("SHA256", "SHA512"):
        assert {("child", digest), ("child_dh", digest)} <= seen


@pytest.mark.parametrize("v", _of_mode("skeyseed"))
def test_cavp_skeyseed(v):
    assert skeyseed(v["prf"], v["ni"], v["nr"], v["secret"]) == v["output"]


@pytest.mark.parametrize("v", _of_mode("dkm"))
def test_cavp_dkm_prf_plus(v):
    seed_data = v["ni"] + v["nr"] + v["spii"] + v["spir"]
    assert v["prf"].plus(v["seed"], seed_data, len(v["output"])) == v["output"]


@pytest.mark.parametrize("v", _of_mode("dkm"))
def test_cavp_dkm_split_into_sk_keys(v):
    prf, output = v["prf"], v["output"]
    if len(output) < 3 * prf.preferred_key_len + 2:
        # Too short for all seven keys: check that SK_d starts the same way.
        keys = derive_ike_keys(prf, v["seed"], v["ni"], v["nr"], v["spii"], v["spir"], 1)
        prefix = min(len(output), prf.preferred_key_len)
        assert keys.sk_d[:prefix] == output[:prefix]
        return
    # AEAD layout (no integrity keys): SK_d | SK_ei | SK_er | SK_pi | SK_pr fill the output.
    encr_len = (len(output) - 3 * prf.preferred_key_len) // 2
    keys = derive_ike_keys(prf, v["seed"], v["ni"], v["nr"], v["spii"], v["spir"], encr_len)
    assert keys.sk_ai == keys.sk_ar == b""
    joined = keys.sk_d + keys.sk_ei + keys.sk_er + keys.sk_pi + keys.sk_pr
    assert joined == output[: len(joined)]
    assert len(keys.sk_d) == len(keys.sk_pi) == len(keys.sk_pr) == prf.preferred_key_len


@pytest.mark.parametrize("v", _of_mode("child", "child_dh"))
def test_cavp_child_keymat(v):
    half = len(v["output"]) // 2
    shared = (v["secret"],) if v["mode"] == "child_dh" else ()
    keys = derive_child_keys(v["prf"], v["key"], v["ni"], v["nr"], 36, half - 36, shared)
    assert keys.encr_i + keys.integ_i + keys.encr_r + keys.integ_r == v["output"][: 2 * half]
    assert len(keys.encr_i) == len(keys.encr_r) == 36


@pytest.mark.parametrize("v", _of_mode("rekey"))
def test_cavp_rekey_skeyseed(v):
    assert rekey_skeyseed(v["prf"], v["key"], v["secret"], v["ni"], v["nr"]) == v["output"]


@pytest.mark.parametrize("v", _of_mode("rekey"))
def test_addke_skeyseed_has_the_rekey_shape(v):
    # RFC 9370 2.2.2: SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr), the same
    # computation as the RFC 7296 2.18 rekey, so the CAVP rekey vectors apply.
    assert addke_skeyseed(v["prf"], v["key"], v["secret"], v["ni"], v["nr"]) == v["output"]


# --- RFC 9370 and special cases ---------------------------------------------------------

PRF = prf_for(PrfId.HMAC_SHA2_256)
NI, NR = b"\x01" * 32, b"\x02" * 32
SPI_I, SPI_R = b"\x0a" * 8, b"\x0b" * 8


def test_child_keymat_with_additional_key_exchanges_concatenates_in_order():
    # RFC 9370 2.2.4: KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)).
    sk_d, dh_secret, kem_secret, third = b"d" * 32, b"g" * 32, b"k" * 32, b"t" * 32
    keys = derive_child_keys(PRF, sk_d, NI, NR, 36, 0, (dh_secret, kem_secret))
    expected = PRF.plus(sk_d, dh_secret + NI + NR + kem_secret, 72)
    assert keys.encr_i + keys.encr_r == expected
    swapped = derive_child_keys(PRF, sk_d, NI, NR, 36, 0, (kem_secret, dh_secret))
    assert swapped != keys
    two = derive_child_keys(PRF, sk_d, NI, NR, 36, 0, (dh_secret, kem_secret, third))
    assert two.encr_i + two.encr_r == PRF.plus(sk_d, dh_secret + NI + NR + kem_secret + third, 72)


def test_rekey_skeyseed_with_additional_key_exchanges():
    sk_d, dh_secret, kem_secret = b"d" * 32, b"g" * 32, b"k" * 32
    # RFC 9370 2.2.4: SKEYSEED = prf(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)).
    seed = rekey_skeyseed(PRF, sk_d, dh_secret, NI, NR, (kem_secret,))
    assert seed == PRF(sk_d, dh_secret + NI + NR + kem_secret)
    assert seed != rekey_skeyseed(PRF, sk_d, dh_secret, NI, NR)


def test_fixed_key_prf_uses_64_bits_of_each_nonce():
    # RFC 7296 2.14 rule for AES-XCBC/CMAC-PRF-128, exercised with a stand-in PRF.
    fixed = Prf(PrfId.HMAC_SHA2_256, output_len=32, preferred_key_len=16, fixed_key_len=16)
    assert skeyseed(fixed, NI, NR, b"secret") == PRF(NI[:8] + NR[:8], b"secret")
    assert skeyseed(PRF, NI, NR, b"secret") == PRF(NI + NR, b"secret")


def test_ike_keys_with_integrity_algorithm_layout():
    keys = derive_ike_keys(PRF, b"s" * 32, NI, NR, SPI_I, SPI_R, 16, 32)
    lengths = [len(k) for k in (keys.sk_d, keys.sk_ai, keys.sk_ar, keys.sk_ei, keys.sk_er, keys.sk_pi, keys.sk_pr)]
    assert lengths == [32, 32, 32, 16, 16, 32, 32]
    material = PRF.plus(b"s" * 32, NI + NR + SPI_I + SPI_R, sum(lengths))
    assert keys.sk_ai == material[32:64] and keys.sk_pr == material[-32:]


@pytest.mark.parametrize("spi_i, spi_r", [(b"\x00" * 4, SPI_R), (SPI_I, b"\x00" * 9)])
def test_bad_spi_length_is_refused(spi_i, spi_r):
    with pytest.raises(CryptoError):
        derive_ike_keys(PRF, b"s" * 32, NI, NR, spi_i, spi_r, 36)


@pytest.mark.parametrize("encr_len, integ_len", [(0, 0), (-1, 0), (36, -1)])
def test_bad_key_lengths_are_refused(encr_len, integ_len):
    with pytest.raises(CryptoError):
        derive_ike_keys(PRF, b"s" * 32, NI, NR, SPI_I, SPI_R, encr_len, integ_len)
    with pytest.raises(CryptoError):
        derive_child_keys(PRF, b"d" * 32, NI, NR, encr_len, integ_len)


def test_reprs_show_lengths_not_keys():
    ike = derive_ike_keys(PRF, b"s" * 32, NI, NR, SPI_I, SPI_R, 36)
    child = derive_child_keys(PRF, ike.sk_d, NI, NR, 36)
    for keys in (ike, child):
        text = repr(keys)
        assert "bytes>" in text
        for value in vars(keys).values():
            if value:
                assert value.hex() not in text and repr(value) not in text
    assert repr(child) == (
        "ChildKeys(encr_i=<36 bytes>, integ_i=<0 bytes>, encr_r=<36 bytes>, integ_r=<0 bytes>)"
    )
    assert isinstance(ike, IkeKeys) and isinstance(child, ChildKeys)


@pytest.mark.parametrize("encr_id, key_bits", [(EncrId.AES_GCM_16, 256), (EncrId.CHACHA20_POLY1305, None)])
def test_initiator_and_responder_derive_matching_sk_ciphers(encr_id, key_bits):
    """Whole pipeline: X25519 + ML-KEM-768 hybrid, SKEYSEED, SK_e*, both directions."""
    prf = prf_for(PrfId.HMAC_SHA2_384)
    ecdh = start_key_exchange(KeId.CURVE25519)
    ecdh_answer, ecdh_responder = respond_key_exchange(KeId.CURVE25519, ecdh.public_data)
    kem = start_key_exchange(KeId.ML_KEM_768)
    kem_answer, kem_responder = respond_key_exchange(KeId.ML_KEM_768, kem.public_data)
    keymat_len = aead_keymat_len(encr_id, key_bits)

    def ike_keys(dh_secret: bytes, kem_secret: bytes) -> IkeKeys:
        keys0 = derive_ike_keys(prf, skeyseed(prf, NI, NR, dh_secret), NI, NR, SPI_I, SPI_R, keymat_len)
        seed1 = addke_skeyseed(prf, keys0.sk_d, kem_secret, NI, NR)
        return derive_ike_keys(prf, seed1, NI, NR, SPI_I, SPI_R, keymat_len)

    initiator_keys = ike_keys(ecdh.finish(ecdh_answer), kem.finish(kem_answer))
    responder_keys = ike_keys(ecdh_responder, kem_responder)
    assert initiator_keys == responder_keys

    sender = AeadProtector(encr_id, key_bits, initiator_keys.sk_ei)
    receiver = AeadProtector(encr_id, key_bits, responder_keys.sk_ei)
    iv = sender.next_iv()
    assert receiver.open(iv, b"hdr", sender.seal(iv, b"hdr", b"IKE_AUTH body")) == b"IKE_AUTH body"
    assert initiator_keys.sk_ei != initiator_keys.sk_er  # directions use different keys


@pytest.mark.parametrize("prf_id, shortest", [(PrfId.HMAC_SHA2_256, 16), (PrfId.HMAC_SHA2_512, 32)])
def test_nonce_length_rules(prf_id, shortest):
    prf = prf_for(prf_id)
    for good in (shortest, NONCE_LEN, 256):
        check_nonce(prf, bytes(good))
    for bad in (0, shortest - 1, 257):
        with pytest.raises(CryptoError):
            check_nonce(prf, bytes(bad))
