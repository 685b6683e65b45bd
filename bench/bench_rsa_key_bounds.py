"""CPU to check one CSR's self-signature by RSA key size and public exponent (why MAX_RSA_BITS).

The mesh API verifies a CSR's self-signature before it signs anything, so whoever holds a
pod's token chooses the key that the operator verifies with. RSA verification costs grow
with the modulus and, above all, with the public exponent (OpenSSL accepts any exponent up
to 3072-bit moduli, 64-bit exponents above). Each case: a real signature over the same
message, verified `--verifies` times per round, rounds interleaved; the median per
verification and its ratio to RSA-2048 with e = 65537 are printed (docs/benchmarks.md).

    python bench/bench_rsa_key_bounds.py [--rounds 5] [--verifies 200]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]
from tests.support.pki import rsa_key_with_exponent  # noqa: E402

CASES = [(2048, 17), (2048, 256), (3072, 256), (3072, 3071), (4096, 17), (4096, 64), (8192, 17), (8192, 64)]
MESSAGE = b"certification request info"


def key_with_exponent(bits: int, exponent_bits: int) -> rsa.RSAPrivateKey:
    """An RSA key of `bits` whose public exponent has `exponent_bits` bits (17: 65537)."""
    exponent = 65537 if exponent_bits == 17 else secrets.randbits(exponent_bits) | 1 | (1 << (exponent_bits - 1))
    return rsa_key_with_exponent(bits, exponent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--verifies", type=int, default=200)
    args = parser.parse_args()
    keys = {case: key_with_exponent(*case) for case in CASES}
    signed = {case: (key.public_key(), key.sign(MESSAGE, padding.PKCS1v15(), hashes.SHA256()))
              for case, key in keys.items()}
    times: dict[tuple[int, int], list[float]] = {case: [] for case in CASES}
    for _ in range(args.rounds):
        for case, (public, signature) in signed.items():
            started = time.perf_counter()
            for _ in range(args.verifies):
                public.verify(signature, MESSAGE, padding.PKCS1v15(), hashes.SHA256())
            times[case].append((time.perf_counter() - started) / args.verifies)
    base = statistics.median(times[(2048, 17)])
    for case in CASES:
        median = statistics.median(times[case])
        print(f"RSA-{case[0]:<5} e {case[1]:>4} bits: {median * 1e3:7.3f} ms per verification, x{median / base:6.1f}")


if __name__ == "__main__":
    main()
