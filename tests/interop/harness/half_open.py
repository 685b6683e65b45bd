"""Leave a half-open IKE_SA on a responder: send one valid IKE_SA_INIT, never IKE_AUTH.

strongSwan counts half-open IKE_SAs to decide when to demand cookies
(``charon.cookie_threshold`` / ``cookie_threshold_ip``); one such SA plus a
threshold of 1 makes the *next* IKE_SA_INIT from anyone (or from that IP) get a
COOKIE. The SA stays half-open for ``charon.half_open_timeout`` (30 s by default).

The message is built by hand (RFC 7296 sections 3.1-3.9) so this helper does not
depend on the project's own IKE codec, which is what the interop tests exercise.
"""
from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

IKE_SA_INIT = 34
PAYLOAD_SA, PAYLOAD_KE, PAYLOAD_NONCE, PAYLOAD_NOTIFY = 33, 34, 40, 41
FLAG_INITIATOR, FLAG_RESPONSE = 0x08, 0x20
HEADER = struct.Struct("!8s8sBBBBII")   # SPIi SPIr next version exchange flags msgid len
# aes256gcm16-prfsha256-x25519: (transform type, transform id, key length or None)
DEFAULT_TRANSFORMS = ((1, 20, 256), (2, 5, None), (4, 31, None))
GROUP_X25519 = 31


class HalfOpenError(RuntimeError):
    """No (or no parseable) IKE_SA_INIT response arrived."""


@dataclass
class InitResponse:
    spi_i: bytes
    spi_r: bytes
    payloads: list[int]     # payload types in order
    notifies: list[int]     # notify message types


def _payload(next_type: int, body: bytes) -> bytes:
    return struct.pack("!BBH", next_type, 0, 4 + len(body)) + body


def _transform(last: bool, ttype: int, tid: int, key_bits: int | None) -> bytes:
    attrs = b"" if key_bits is None else struct.pack("!HH", 0x8000 | 14, key_bits)
    return struct.pack("!BBHBBH", 0 if last else 3, 0, 8 + len(attrs), ttype, 0, tid) + attrs


def build_ike_sa_init(spi_i: bytes, transforms=DEFAULT_TRANSFORMS) -> bytes:
    """An IKE_SA_INIT request with SA, KE (X25519) and Nonce payloads."""
    body = b"".join(_transform(i == len(transforms) - 1, *t) for i, t in enumerate(transforms))
    proposal = struct.pack("!BBHBBBB", 0, 0, 8 + len(body), 1, 1, 0, len(transforms)) + body
    public = X25519PrivateKey.generate().public_key().public_bytes_raw()
    payloads = (_payload(PAYLOAD_KE, proposal)
                + _payload(PAYLOAD_NONCE, struct.pack("!HH", GROUP_X25519, 0) + public)
                + _payload(0, os.urandom(32)))
    header = HEADER.pack(spi_i, bytes(8), PAYLOAD_SA, 0x20, IKE_SA_INIT, FLAG_INITIATOR, 0,
                         HEADER.size + len(payloads))
    return header + payloads


def parse_response(data: bytes, spi_i: bytes) -> InitResponse:
    if len(data) < HEADER.size:
        raise HalfOpenError(f"short IKE message ({len(data)} bytes)")
    got_spi_i, spi_r, next_type, _, exchange, flags, _, length = HEADER.unpack_from(data)
    if (got_spi_i, exchange) != (spi_i, IKE_SA_INIT) or not flags & FLAG_RESPONSE:
        raise HalfOpenError("not the IKE_SA_INIT response to our request")
    response = InitResponse(spi_i, spi_r, [], [])
    offset, end = HEADER.size, min(length, len(data))
    while next_type and offset + 4 <= end:
        following, _, plen = struct.unpack_from("!BBH", data, offset)
        if plen < 4 or offset + plen > end:
            raise HalfOpenError(f"bad payload length {plen} at offset {offset}")
        response.payloads.append(next_type)
        if next_type == PAYLOAD_NOTIFY and plen >= 8:
            response.notifies.append(struct.unpack_from("!H", data, offset + 6)[0])
        next_type, offset = following, offset + plen
    return response


def send_half_open(responder: str, port: int = 500, timeout: float = 5.0) -> InitResponse:
    """Send an IKE_SA_INIT to ``responder`` and return its parsed response.

    Run it inside a namespace with ``Namespace.call(send_half_open, addr)``.
    """
    spi_i = os.urandom(8)
    family = socket.AF_INET6 if ":" in responder else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(build_ike_sa_init(spi_i), (responder, port))
        try:
            data, _ = sock.recvfrom(65535)
        except socket.timeout:
            raise HalfOpenError(f"no IKE_SA_INIT response from {responder} in {timeout}s") from None
    response = parse_response(data, spi_i)
    if PAYLOAD_SA not in response.payloads:
        raise HalfOpenError(f"responder did not accept the IKE_SA_INIT "
                            f"(notify types {response.notifies})")
    return response
