"""Key exchange methods: agreement, known answers and RFC 6989-style input checks."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives.asymmetric import dh, ec, x25519

from ipsec_mesh.ike.constants import FORBIDDEN_KE, KeId
from ipsec_mesh.ike.errors import CryptoError
from ipsec_mesh.ike.keyexchange import (
    MODP_GENERATOR,
    MODP_PRIMES,
    SUPPORTED_KE,
    DhInitiator,
    KemInitiator,
    ke_data_len,
    respond_key_exchange,
    start_key_exchange,
)

DH_METHODS = sorted(SUPPORTED_KE - {KeId.ML_KEM_768, KeId.ML_KEM_1024})


def test_required_methods_are_supported():
    required = {KeId.MODP_2048, KeId.ECP_256, KeId.ECP_384, KeId.CURVE25519, KeId.ML_KEM_768}
    assert required <= SUPPORTED_KE
    assert not SUPPORTED_KE & FORBIDDEN_KE


@pytest.mark.parametrize("method", sorted(SUPPORTED_KE))
def test_both_sides_agree(method):
    initiator = start_key_exchange(method)
    assert len(initiator.public_data) == ke_data_len(method)
    answer, responder_secret = respond_key_exchange(method, initiator.public_data)
    assert len(answer) == ke_data_len(method, responder=True)
    assert initiator.finish(answer) == responder_secret
    assert len(responder_secret) >= 32 and any(responder_secret)


@pytest.mark.parametrize("method", sorted(SUPPORTED_KE))
def test_each_exchange_uses_a_fresh_key(method):
    assert start_key_exchange(method).public_data != start_key_exchange(method).public_data


@pytest.mark.parametrize(
    "method, initiator_len, responder_len",
    [
        (KeId.MODP_2048, 256, 256),
        (KeId.MODP_3072, 384, 384),
        (KeId.MODP_4096, 512, 512),
        (KeId.ECP_256, 64, 64),
        (KeId.ECP_384, 96, 96),
        (KeId.ECP_521, 132, 132),
        (KeId.CURVE25519, 32, 32),
        (KeId.CURVE448, 56, 56),
        (KeId.ML_KEM_768, 1184, 1088),
        (KeId.ML_KEM_1024, 1568, 1568),
    ],
)
def test_ke_data_lengths(method, initiator_len, responder_len):
    assert ke_data_len(method) == initiator_len
    assert ke_data_len(method, responder=True) == responder_len


@pytest.mark.parametrize(
    "method",
    sorted(FORBIDDEN_KE) + [KeId.MODP_1536, KeId.ML_KEM_512, KeId.NONE, 1234],
)
def test_unsupported_or_forbidden_methods_are_refused(method):
    with pytest.raises(CryptoError):
        start_key_exchange(method)
    with pytest.raises(CryptoError):
        respond_key_exchange(method, bytes(32))
    with pytest.raises(CryptoError):
        ke_data_len(method)


def test_forbidden_group_message_says_must_not():
    with pytest.raises(CryptoError, match="MUST NOT"):
        start_key_exchange(KeId.MODP_1024)


def test_initiator_classes_refuse_the_other_kind():
    with pytest.raises(CryptoError):
        DhInitiator(KeId.ML_KEM_768)
    with pytest.raises(CryptoError):
        KemInitiator(KeId.CURVE25519)


# --- MODP groups (RFC 3526) --------------------------------------------------------


def _pi_times_2_to(bits: int) -> int:
    """floor(pi * 2^bits) by Machin's formula in integer arithmetic."""

    def arctan_inverse(x: int, one: int) -> int:
        total = term = one // x
        n, sign = 1, -1
        while term:
            term //= x * x
            total += sign * (term // (2 * n + 1))
            sign, n = -sign, n + 1
        return total

    guard = 64
    one = 1 << (bits + guard)
    return (4 * (4 * arctan_inverse(5, one) - arctan_inverse(239, one))) >> guard


def _probably_prime(n: int, rounds: int = 4) -> bool:
    """Miller-Rabin with random bases (seeded, so the test is reproducible)."""
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    rng = random.Random(n & 0xFFFFFFFF)
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


# RFC 3526: p = 2^n - 2^(n-64) - 1 + 2^64 * ([2^(n-130) pi] + k)
RFC3526_OFFSETS = {KeId.MODP_2048: 124476, KeId.MODP_3072: 1690314, KeId.MODP_4096: 240904}


@pytest.mark.parametrize("method", sorted(MODP_PRIMES))
def test_modp_prime_matches_rfc3526_formula(method):
    bits = MODP_PRIMES[method].bit_length()
    expected = 2**bits - 2 ** (bits - 64) - 1 + 2**64 * (_pi_times_2_to(bits - 130) + RFC3526_OFFSETS[method])
    assert MODP_PRIMES[method] == expected
    assert bits == {KeId.MODP_2048: 2048, KeId.MODP_3072: 3072, KeId.MODP_4096: 4096}[method]


@pytest.mark.parametrize("method", sorted(MODP_PRIMES))
def test_modp_group_is_a_safe_prime_with_generator_2(method):
    p = MODP_PRIMES[method]
    q = (p - 1) // 2
    assert _probably_prime(p) and _probably_prime(q)
    assert not _probably_prime(p + 2)  # the test can say "no"
    assert MODP_GENERATOR == 2
    assert pow(2, q, p) == 1  # 2 generates the prime-order subgroup


@pytest.mark.parametrize("method", sorted(MODP_PRIMES))
def test_modp_public_values_out_of_range_are_refused(method):
    p, size = MODP_PRIMES[method], ke_data_len(method)
    initiator = start_key_exchange(method)
    for y in (0, 1, p - 1, p, p + 1, 2**(8 * size) - 1):
        # Our own RFC 6989 check refuses these (OpenSSL would too, later).
        with pytest.raises(CryptoError, match="out of range"):
            initiator.finish(y.to_bytes(size, "big"))
        with pytest.raises(CryptoError, match="out of range"):
            respond_key_exchange(method, y.to_bytes(size, "big"))
    assert len(initiator.finish((2).to_bytes(size, "big"))) == size  # smallest allowed value


@pytest.mark.parametrize("delta", [-1, 1])
def test_modp_public_value_of_wrong_length_is_refused(delta):
    good = start_key_exchange(KeId.MODP_2048).public_data
    bad = good[:delta] if delta < 0 else b"\x00" + good
    with pytest.raises(CryptoError):
        start_key_exchange(KeId.MODP_2048).finish(bad)


@pytest.mark.filterwarnings("ignore:Diffie-Hellman over finite fields")
def test_modp_shared_secret_keeps_leading_zeros():
    # With private exponent x = 3 and peer value y = 5 the secret is 125: RFC 7296
    # section 2.14 wants it as 256 octets, not one.
    p = MODP_PRIMES[KeId.MODP_2048]
    params = dh.DHParameterNumbers(p, 2)
    private = dh.DHPrivateNumbers(3, dh.DHPublicNumbers(pow(2, 3, p), params)).private_key()
    initiator = DhInitiator(KeId.MODP_2048, private)
    assert initiator.public_data == (8).to_bytes(256, "big")
    assert initiator.finish((5).to_bytes(256, "big")) == (125).to_bytes(256, "big")


# --- ECP groups (RFC 5903) ------------------------------------------------------------

# RFC 5903 section 8.1, 256-bit random ECP group.
ECP256_I = 0xC88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433
ECP256_GI = bytes.fromhex(
    "DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180"
    "5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3"
)
ECP256_R = 0xC6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53
ECP256_GR = bytes.fromhex(
    "D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63"
    "56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB"
)
ECP256_GIRX = bytes.fromhex("D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE")


def test_rfc5903_group19_known_answer():
    initiator = DhInitiator(KeId.ECP_256, ec.derive_private_key(ECP256_I, ec.SECP256R1()))
    responder = DhInitiator(KeId.ECP_256, ec.derive_private_key(ECP256_R, ec.SECP256R1()))
    assert initiator.public_data == ECP256_GI
    assert responder.public_data == ECP256_GR
    assert initiator.finish(ECP256_GR) == ECP256_GIRX  # the x coordinate only
    assert responder.finish(ECP256_GI) == ECP256_GIRX


@pytest.mark.parametrize("method", [KeId.ECP_256, KeId.ECP_384, KeId.ECP_521])
def test_ecp_points_off_the_curve_are_refused(method):
    size = ke_data_len(method)
    good = start_key_exchange(method).public_data
    off_curve = good[:-1] + bytes([good[-1] ^ 1])
    for bad in (off_curve, bytes(size), b"\xff" * size, b"\x04" + good, good[:-1], good + b"\x00"):
        with pytest.raises(CryptoError):
            start_key_exchange(method).finish(bad)
        with pytest.raises(CryptoError):
            respond_key_exchange(method, bad)


# --- Curve25519 / Curve448 (RFC 7748, RFC 8031) -------------------------------------------

ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
ALICE_BOB_SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


def test_rfc7748_x25519_known_answer():
    alice = DhInitiator(KeId.CURVE25519, x25519.X25519PrivateKey.from_private_bytes(ALICE_PRIVATE))
    bob = DhInitiator(KeId.CURVE25519, x25519.X25519PrivateKey.from_private_bytes(BOB_PRIVATE))
    assert alice.public_data == ALICE_PUBLIC and bob.public_data == BOB_PUBLIC
    assert alice.finish(BOB_PUBLIC) == bob.finish(ALICE_PUBLIC) == ALICE_BOB_SHARED


def test_rfc7748_x25519_scalar_multiplication():
    # RFC 7748 section 5.2, first test vector.
    scalar = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    expected = bytes.fromhex("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
    initiator = DhInitiator(KeId.CURVE25519, x25519.X25519PrivateKey.from_private_bytes(scalar))
    assert initiator.finish(u) == expected


SMALL_ORDER_X25519 = [
    bytes(32),  # u = 0
    (1).to_bytes(32, "little"),  # u = 1
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),  # order 8
]


@pytest.mark.parametrize("point", SMALL_ORDER_X25519)
def test_x25519_all_zero_shared_secret_is_refused(point):
    with pytest.raises(CryptoError, match="all-zero"):
        start_key_exchange(KeId.CURVE25519).finish(point)
    with pytest.raises(CryptoError):
        respond_key_exchange(KeId.CURVE25519, point)


@pytest.mark.parametrize("method, size", [(KeId.CURVE25519, 32), (KeId.CURVE448, 56)])
def test_montgomery_wrong_lengths_are_refused(method, size):
    good = start_key_exchange(method).public_data
    for bad in (good[:-1], good + b"\x01", b""):
        with pytest.raises(CryptoError):
            start_key_exchange(method).finish(bad)


def test_x448_all_zero_shared_secret_is_refused():
    with pytest.raises(CryptoError):
        start_key_exchange(KeId.CURVE448).finish(bytes(56))


# --- ML-KEM (FIPS 203) -------------------------------------------------------------------


@pytest.mark.parametrize("method", [KeId.ML_KEM_768, KeId.ML_KEM_1024])
def test_mlkem_encapsulation_key_checks(method):
    encapsulation_key = start_key_exchange(method).public_data
    for bad in (encapsulation_key[:-1], encapsulation_key + b"\x00", b""):
        with pytest.raises(CryptoError):
            respond_key_exchange(method, bad)
    # First 12-bit coefficient set to 4095 >= q = 3329: FIPS 203 modulus check fails.
    out_of_range = b"\xff\x0f" + encapsulation_key[2:]
    with pytest.raises(CryptoError, match="FIPS 203"):
        respond_key_exchange(method, out_of_range)


@pytest.mark.parametrize("method", [KeId.ML_KEM_768, KeId.ML_KEM_1024])
def test_mlkem_ciphertext_checks(method):
    initiator = start_key_exchange(method)
    ciphertext, secret = respond_key_exchange(method, initiator.public_data)
    for bad in (ciphertext[:-1], ciphertext + b"\x00", b""):
        with pytest.raises(CryptoError):
            initiator.finish(bad)
    # A forged ciphertext of the right length decapsulates to an unrelated
    # secret (implicit rejection): the exchange then fails at AUTH.
    forged = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    assert initiator.finish(forged) != secret
    assert initiator.finish(ciphertext) == secret


def test_repr_shows_no_key_material():
    initiator = start_key_exchange(KeId.CURVE25519)
    assert repr(initiator) == "DhInitiator(CURVE25519)"


def test_a_given_key_must_be_of_the_methods_class():
    # The public value and the secret are computed by the method's code: a key of another
    # group (known-answer tests give one) is refused instead of used by the wrong code.
    with pytest.raises(CryptoError, match="not a CURVE25519 key"):
        DhInitiator(KeId.CURVE25519, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(CryptoError, match="not a CURVE448 key"):
        DhInitiator(KeId.CURVE448, x25519.X25519PrivateKey.generate())
    with pytest.raises(CryptoError, match="not a ECP_256 key"):
        DhInitiator(KeId.ECP_256, x25519.X25519PrivateKey.generate())
    assert len(DhInitiator(31, x25519.X25519PrivateKey.generate()).public_data) == 32
    assert DhInitiator(31).method is KeId.CURVE25519  # the member, from a bare wire value
