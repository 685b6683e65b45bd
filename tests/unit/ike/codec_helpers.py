"""Shared by the codec tests: a real AES-GCM-16 Protector and the strongSwan capture."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipsec_mesh.ike.errors import IntegrityError

CAPTURE = Path(__file__).resolve().parents[2] / "data" / "strongswan" / "strongswan_ikev2.txt"


class AesGcmProtector:
    """RFC 5282 / RFC 4106 style: SK_e = key || 4-byte salt, nonce = salt || 8-byte IV."""

    iv_len = 8
    icv_len = 16

    def __init__(self, key_and_salt: bytes):
        self._aead = AESGCM(key_and_salt[:-4])
        self._salt = key_and_salt[-4:]
        self._counter = 0

    def next_iv(self) -> bytes:
        self._counter += 1
        return self._counter.to_bytes(8, "big")

    def seal(self, iv: bytes, aad: bytes, plaintext: bytes) -> bytes:
        return self._aead.encrypt(self._salt + iv, plaintext, aad)

    def open(self, iv: bytes, aad: bytes, ciphertext_and_icv: bytes) -> bytes:
        try:
            return self._aead.decrypt(self._salt + iv, ciphertext_and_icv, aad)
        except InvalidTag:
            raise IntegrityError("bad ICV") from None


TEST_KEY = bytes(range(32)) + b"salt"


def protector() -> AesGcmProtector:
    return AesGcmProtector(TEST_KEY)


@dataclass
class CapturedPacket:
    src: str
    src_port: int
    dst_port: int
    payload: bytes  # the UDP payload, non-ESP marker included on port 4500


def load_capture() -> tuple[list[CapturedPacket], dict[str, bytes]]:
    packets, keys = [], {}
    for line in CAPTURE.read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == "packet":
            packets.append(CapturedPacket(fields[1], int(fields[2]), int(fields[3]),
                                          bytes.fromhex(fields[4])))
        elif fields and fields[0] == "key":
            keys[fields[1]] = bytes.fromhex(fields[2])
    return packets, keys


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1:]
