"""Stateless COOKIEs against IKE_SA_INIT floods (RFC 7296 §2.6).

cookie = version(1 byte) | SHA-256(len(Ni) | Ni | family | IPi | SPIi | secret[version])

Every variable-size field is framed (a 2-byte length before the nonce, the IP version
before the address), so no two (nonce, address) pairs hash the same bytes: unframed,
Ni | IPv6 and Ni | IPv6[:12] | IPv4 were one input, and a cookie handed to an IPv6
source verified for an IPv4 one.

The secret rotates; the previous one stays valid for one period so a cookie handed
out just before a rotation still works. No clock inside: the caller passes `now`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from typing import Callable


class CookieJar:
    def __init__(self, rotate_every: float = 120.0, random_bytes: Callable[[int], bytes] = os.urandom):
        self._random = random_bytes
        self._rotate_every = rotate_every
        self._version = 0
        self._secrets: dict[int, bytes] = {0: random_bytes(32)}
        self._rotated_at: float | None = None

    def _maybe_rotate(self, now: float) -> None:
        if self._rotated_at is None:
            self._rotated_at = now
        elif now - self._rotated_at >= self._rotate_every:
            previous = self._version
            self._version = (self._version + 1) % 256
            self._secrets = {previous: self._secrets[previous], self._version: self._random(32)}
            self._rotated_at = now

    @staticmethod
    def _digest(secret: bytes, nonce: bytes, address: str, spi_i: bytes) -> bytes:
        ip = ipaddress.ip_address(address)
        # A nonce fits its payload's 16-bit length, and the SPI is the header's fixed 8 bytes.
        framed = len(nonce).to_bytes(2, "big") + nonce + bytes([ip.version]) + ip.packed + spi_i
        return hashlib.sha256(framed + secret).digest()

    def make(self, nonce: bytes, address: str, spi_i: bytes, now: float) -> bytes:
        self._maybe_rotate(now)
        return bytes([self._version]) + self._digest(self._secrets[self._version], nonce, address, spi_i)

    def check(self, cookie: bytes, nonce: bytes, address: str, spi_i: bytes, now: float) -> bool:
        self._maybe_rotate(now)
        if len(cookie) != 33:
            return False
        secret = self._secrets.get(cookie[0])
        if secret is None:
            return False
        return hmac.compare_digest(cookie[1:], self._digest(secret, nonce, address, spi_i))
