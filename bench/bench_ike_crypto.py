"""Micro-benchmark of the IKE core's cryptography on this machine.

Prints operations per second for a full key exchange with each supported
method (initiator keygen + responder keygen/encapsulation + initiator finish,
i.e. the work of BOTH peers), for SKEYSEED + SK_* derivation with each PRF,
and for sealing a 1 KiB SK payload. Usage:

    python bench/bench_ike_crypto.py [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sidecar"))

import cryptography  # noqa: E402
from cryptography.hazmat.backends.openssl import backend  # noqa: E402
from machine import cpu_model  # noqa: E402  (bench/, the script's own directory)

from ipsec_mesh.ike.constants import EncrId, KeId, PrfId  # noqa: E402
from ipsec_mesh.ike.crypto import SUPPORTED_PRF, AeadProtector, aead_keymat_len, prf_for  # noqa: E402
from ipsec_mesh.ike.keyexchange import SUPPORTED_KE, respond_key_exchange, start_key_exchange  # noqa: E402
from ipsec_mesh.ike.keymat import derive_child_keys, derive_ike_keys, skeyseed  # noqa: E402


def ops_per_second(operation: Callable[[], object], seconds: float) -> float:
    operation()  # warm-up (parameter caches, lazy loading)
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        operation()
        count += 1
        now = time.perf_counter()
        if now >= deadline or count >= 1_000_000:
            return count / (now - start)


def full_exchange(method: KeId) -> Callable[[], bytes]:
    def run() -> bytes:
        initiator = start_key_exchange(method)
        answer, _ = respond_key_exchange(method, initiator.public_data)
        return initiator.finish(answer)

    return run


def ike_sa_keys(prf_id: PrfId) -> Callable[[], object]:
    prf = prf_for(prf_id)
    ni, nr, shared = os.urandom(32), os.urandom(32), os.urandom(32)
    spi_i, spi_r = os.urandom(8), os.urandom(8)
    keymat_len = aead_keymat_len(EncrId.AES_GCM_16, 256)

    def run() -> object:
        keys = derive_ike_keys(prf, skeyseed(prf, ni, nr, shared), ni, nr, spi_i, spi_r, keymat_len)
        return derive_child_keys(prf, keys.sk_d, ni, nr, keymat_len)

    return run


def seal_1k(encr_id: EncrId, key_bits: int | None) -> Callable[[], bytes]:
    protector = AeadProtector(encr_id, key_bits, os.urandom(aead_keymat_len(encr_id, key_bits)))
    payload, aad = os.urandom(1024), os.urandom(32)
    return lambda: protector.seal(protector.next_iv(), aad, payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time budget per measurement")
    seconds = parser.parse_args().seconds

    print(f"platform: {platform.platform()}")
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical CPUs)")
    print(f"python: {platform.python_implementation()} {platform.python_version()}")
    print(f"cryptography {cryptography.__version__} on {backend.openssl_version_text()}")
    print()
    print("key exchange (both peers' work, one full exchange)      ops/s")
    for method in sorted(SUPPORTED_KE):
        print(f"  {method.name:<14} ({int(method):>2})  {ops_per_second(full_exchange(method), seconds):>32,.1f}")
    print()
    print("SKEYSEED + 7 SK_* keys + first Child SA KEYMAT           ops/s")
    for prf_id in sorted(SUPPORTED_PRF):
        print(f"  {prf_id.name:<20} {ops_per_second(ike_sa_keys(prf_id), seconds):>32,.1f}")
    print()
    print("SK payload seal, 1 KiB                                   ops/s")
    for encr_id, key_bits in ((EncrId.AES_GCM_16, 128), (EncrId.AES_GCM_16, 256), (EncrId.CHACHA20_POLY1305, None)):
        label = f"{encr_id.name}" + (f"-{key_bits}" if key_bits else "")
        print(f"  {label:<20} {ops_per_second(seal_1k(encr_id, key_bits), seconds):>32,.1f}")


if __name__ == "__main__":
    main()
