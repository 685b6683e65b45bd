"""IKEv2 messages to bytes and back (RFC 7296 section 3), sans-IO.

`decode` parses the header and the clear payload chain; an SK payload stays an
`EncryptedPayload` until `decrypt` authenticates and opens it with a
`Protector` (the SK_e/SK_a keys of one direction, AEAD only, RFC 5282).
Fragmentation (RFC 7383) is in `fragment.py`, built on the helpers here.
"""

from __future__ import annotations

import struct
from typing import Protocol

from ..records import record
from . import payloads as p
from .constants import (
    IKE_HEADER_LEN,
    IKE_VERSION,
    NON_ESP_MARKER,
    ExchangeType,
    HeaderFlag,
    PayloadType,
)
from .errors import IntegrityError, InvalidMajorVersion, InvariantError, ParseError, UnsupportedCriticalPayload
from .payload_codec import DECODERS as _DECODERS
from .payload_codec import PLAIN_ENCODERS as _PLAIN_ENCODERS
from .wire import Reader, u16, u32

MAX_MESSAGE_SIZE = 0xFFFF  # the largest UDP payload; nothing bigger is ever parsed or built
MAX_PAYLOADS = 64  # per message, clear and inner together
_CRITICAL = 0x80
_SK, _SKF = int(PayloadType.SK), int(PayloadType.SKF)
_HEADER = struct.Struct("!8s8sBBBBII")  # peek_header has checked the length first
_GENERIC_HEADER = struct.Struct("!BBH")  # next payload, flags, payload length
_unpack_generic_header = _GENERIC_HEADER.unpack_from
_NONE = int(PayloadType.NONE)
_EXCHANGES = {int(e): e for e in ExchangeType}  # known(ExchangeType, ...) without the call
# Plain ints: IntFlag arithmetic builds enum objects on every header.
_FLAG_I, _FLAG_R = int(HeaderFlag.INITIATOR), int(HeaderFlag.RESPONSE)


class Protector(Protocol):
    """What the codec needs from the SK crypto of one direction (AEAD)."""

    iv_len: int
    icv_len: int

    def next_iv(self) -> bytes: ...

    def seal(self, iv: bytes, aad: bytes, plaintext: bytes) -> bytes:
        """Returns ciphertext || ICV."""

    def open(self, iv: bytes, aad: bytes, ciphertext_and_icv: bytes) -> bytes:
        """Returns the plaintext; raises errors.IntegrityError on a bad ICV."""


@record
class Header:
    spi_i: bytes
    spi_r: bytes
    next_payload: int
    version: int
    exchange: int
    flags: int
    message_id: int
    length: int

    @property
    def is_initiator(self) -> bool:
        return bool(self.flags & _FLAG_I)

    @property
    def is_response(self) -> bool:
        return bool(self.flags & _FLAG_R)

    def pack(self) -> bytes:
        return (self.spi_i + self.spi_r
                + bytes([self.next_payload, self.version, self.exchange, self.flags])
                + u32(self.message_id) + u32(self.length))


def peek_header(data: bytes) -> Header:
    """The IKE header of a datagram, checked: length field == datagram size, major version 2."""
    if len(data) < IKE_HEADER_LEN:
        raise ParseError(f"datagram of {len(data)} bytes is shorter than an IKE header")
    if len(data) > MAX_MESSAGE_SIZE:
        raise ParseError(f"datagram of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    spi_i, spi_r, next_payload, version, exchange, flags, message_id, length = _HEADER.unpack_from(data)
    if version >> 4 != IKE_VERSION >> 4:  # the minor version is ignored on receipt
        raise InvalidMajorVersion(f"IKE major version {version >> 4}", version)
    if length != len(data):
        raise ParseError(f"IKE header says {length} bytes, datagram has {len(data)}")
    return Header(spi_i, spi_r, next_payload, version, exchange, flags, message_id, length)


def decode(data: bytes, header: Header | None = None) -> p.Message:
    """Header and clear payload chain; SK/SKF are kept encrypted (and must come last).

    `header`: what `peek_header(data)` returned for these same bytes, when the caller has
    already checked it (the endpoint does, to drop unwanted datagrams before this parse).
    """
    if header is None:
        header = peek_header(data)
    if data.__class__ is not bytes:  # payload bodies are slices of it: bytes, not views
        data = bytes(data)
    payloads = decode_chain(header.next_payload, data, IKE_HEADER_LEN, MAX_PAYLOADS, outer=True)
    return _message_like(header, payloads)


def _message_like(header: Header, payloads: list[p.Payload]) -> p.Message:
    flags = header.flags
    return p.Message(header.spi_i, header.spi_r, _EXCHANGES.get(header.exchange, header.exchange),
                     bool(flags & _FLAG_I), bool(flags & _FLAG_R), header.message_id, payloads)


def decode_chain(first_type: int, data: bytes, pos: int, limit: int, *, outer: bool) -> list[p.Payload]:
    """The payload chain that fills `data` from `pos` on. Only an outer chain may end in SK/SKF.

    Reads the generic headers straight from `data` (a Reader call per field cost more than
    the rest of the loop); every length is checked against what is left before it is used.
    """
    end = len(data)
    payloads: list[p.Payload] = []
    append, decoders, unpack = payloads.append, _DECODERS, _unpack_generic_header  # locals: per payload
    ptype = first_type
    count = 0
    while ptype != _NONE:
        if count >= limit:
            raise ParseError(f"more than {limit} payloads")
        count += 1
        if pos + 4 > end:
            raise ParseError(f"{_chain_name(outer)}: needs 4 bytes, {end - pos} left")
        next_type, flags, length = unpack(data, pos)
        if length < 4:
            raise ParseError(f"payload {ptype}: length {length} < 4")
        body_end = pos + length
        if body_end > end:
            raise ParseError(f"{_chain_name(outer)}: needs {length - 4} bytes, {end - pos - 4} left")
        decoder = decoders.get(ptype)
        if decoder is not None:  # known payloads ignore the critical bit
            append(decoder(data[pos + 4:body_end]))
        elif ptype == _SK or ptype == _SKF:
            if not outer:
                raise ParseError(f"payload {ptype} nested inside an encrypted payload")
            if body_end != end:
                raise ParseError(f"payload {ptype} is not the last payload")
            append(_decode_encrypted(ptype, next_type, data[pos + 4:body_end]))
            return payloads
        else:
            append(_decode_unknown(ptype, bool(flags & _CRITICAL), data[pos + 4:body_end]))
        pos = body_end
        ptype = next_type
    if pos != end:
        raise ParseError(f"{_chain_name(outer)}: {end - pos} unexpected trailing bytes")
    return payloads


def _chain_name(outer: bool) -> str:
    return "IKE message" if outer else "inner payloads"


def _decode_unknown(ptype: int, critical: bool, body: bytes) -> p.Payload:
    if critical:
        raise UnsupportedCriticalPayload(f"unsupported critical payload {ptype}", ptype)
    return p.UnknownPayload(ptype, critical, body)


def _decode_encrypted(ptype: int, first_inner: int, body: bytes) -> p.EncryptedPayload | p.EncryptedFragment:
    if ptype == PayloadType.SK:
        return p.EncryptedPayload(first_inner, body)
    r = Reader(body, "SKF")
    number, total = r.u16(), r.u16()
    if not 1 <= number <= total:
        raise ParseError(f"SKF: fragment {number} of {total}")
    return p.EncryptedFragment(first_inner, number, total, r.rest())


# -- encoding -----------------------------------------------------------------

def encode_chain(payloads: list[p.Payload]) -> tuple[int, bytes]:
    """(type of the first payload, the chain's bytes). SK/SKF objects go out as received."""
    count = len(payloads)
    if count > MAX_PAYLOADS:
        raise ValueError(f"{count} payloads, at most {MAX_PAYLOADS}")
    if not count:
        return PayloadType.NONE, b""
    # Last payload first: each generic header names the type of the payload after it.
    final = payloads[-1]
    next_type = (final.first_inner if isinstance(final, (p.EncryptedPayload, p.EncryptedFragment))
                 else _NONE)
    parts = [b""] * (2 * count)
    pack = _GENERIC_HEADER.pack
    plain = _PLAIN_ENCODERS
    for i in range(count - 1, -1, -1):
        payload = payloads[i]
        entry = plain.get(payload.__class__)
        if entry is not None:
            ptype, encoder = entry
            try:
                body = encoder(payload)
            except (OverflowError, TypeError, struct.error) as exc:  # a field out of range for its wire width
                raise ValueError(f"{type(payload).__name__}: {exc}") from None
            flag = 0
        else:
            ptype = p.payload_type_of(payload)
            body, flag = _as_received(payload, i == count - 1)
        size = len(body)
        if size > 0xFFFF - 4:
            raise ValueError(f"payload {ptype}: {size} bytes do not fit its 16-bit length")
        parts[2 * i] = pack(next_type, flag, 4 + size)
        parts[2 * i + 1] = body
        next_type = ptype
    return next_type, b"".join(parts)


def _as_received(payload: p.Payload, is_last: bool) -> tuple[bytes, int]:
    """(body, flags) of a payload kept as it came: SK/SKF (last only) or an unknown payload."""
    if isinstance(payload, p.UnknownPayload):
        return payload.data, _CRITICAL if payload.critical else 0
    if not is_last:
        raise ValueError("SK/SKF must be the last payload")
    if isinstance(payload, p.EncryptedPayload):
        return payload.raw, 0
    if not isinstance(payload, p.EncryptedFragment):
        raise InvariantError("expected isinstance(payload, p.EncryptedFragment)")
    return u16(payload.number) + u16(payload.total) + payload.raw, 0


def header_for(msg: p.Message, next_payload: int, length: int) -> bytes:
    if length > MAX_MESSAGE_SIZE:
        raise ValueError(f"message of {length} bytes exceeds {MAX_MESSAGE_SIZE}")
    if len(msg.spi_i) != 8 or len(msg.spi_r) != 8:  # the struct would pad or cut them silently
        raise ValueError("IKE SPIs must be 8 bytes each")
    flags = (_FLAG_I if msg.is_initiator else 0) | (_FLAG_R if msg.is_response else 0)
    try:
        # One pack (two per message sent: the header and, sealed, the AAD).
        return _HEADER.pack(msg.spi_i, msg.spi_r, next_payload, IKE_VERSION, msg.exchange, flags,
                            msg.message_id, length)
    except struct.error as exc:  # a field out of range for its wire width
        raise ValueError(f"IKE header: {exc}") from None


def encode(msg: p.Message, protector: Protector | None = None) -> bytes:
    """The datagram for `msg`: payloads in clear, or all inside one SK payload."""
    if len(msg.spi_i) != 8 or len(msg.spi_r) != 8:
        raise ValueError("IKE SPIs must be 8 bytes each")
    first, chain = encode_chain(msg.payloads)
    if protector is None:
        return header_for(msg, first, IKE_HEADER_LEN + len(chain)) + chain
    return seal_payload(msg, PayloadType.SK, first, b"", chain, protector)


def seal_payload(msg: p.Message, ptype: int, first_inner: int, fields: bytes, content: bytes,
                 protector: Protector) -> bytes:
    """A datagram holding one SK or SKF payload (with `fields` after its generic header).

    Plaintext = content || pad length 0: AEAD needs no block alignment (RFC 5282), and
    the AAD is every byte before the IV (header, generic header, SKF fields).
    """
    plaintext = content + b"\x00"
    iv = protector.next_iv()
    if len(iv) != protector.iv_len:
        raise ValueError(f"protector gave a {len(iv)}-byte IV, expected {protector.iv_len}")
    payload_len = 4 + len(fields) + len(iv) + len(plaintext) + protector.icv_len
    aad = header_for(msg, ptype, IKE_HEADER_LEN + payload_len) + _GENERIC_HEADER.pack(first_inner, 0, payload_len) + fields
    sealed = protector.seal(iv, aad, plaintext)
    if len(sealed) != len(plaintext) + protector.icv_len:
        raise ValueError("protector output length is not plaintext + ICV")
    return aad + iv + sealed


# -- decryption ---------------------------------------------------------------

def open_payload(data: bytes, raw: bytes, protector: Protector) -> bytes:
    """Authenticate and decrypt the trailing SK/SKF content `raw` of `data`; padding removed.

    Too short to hold IV, ICV and a pad length byte means it cannot authenticate:
    IntegrityError (dropped silently). Bad padding after authentication: ParseError.
    """
    if len(raw) < protector.iv_len + protector.icv_len + 1:
        raise IntegrityError("encrypted payload too short to authenticate")
    if not data.endswith(raw):
        raise ParseError("encrypted payload is not the tail of the datagram")
    aad = data[:len(data) - len(raw)]
    plaintext = protector.open(raw[:protector.iv_len], aad, raw[protector.iv_len:])
    pad_length = plaintext[-1] if plaintext else 0
    if not plaintext or pad_length + 1 > len(plaintext):
        raise ParseError(f"pad length {pad_length} exceeds the {len(plaintext)}-byte plaintext")
    return plaintext[:len(plaintext) - 1 - pad_length]


def decrypt(data: bytes, msg: p.Message, protector: Protector) -> p.Message:
    """`msg` (decoded from `data`, ending in SK) with the SK payload replaced by its contents."""
    if not msg.payloads or not isinstance(msg.payloads[-1], p.EncryptedPayload):
        raise ParseError("message has no SK payload to decrypt")
    clear, sk = msg.payloads[:-1], msg.payloads[-1]
    inner = open_payload(data, sk.raw, protector)
    return with_inner(msg, clear, sk.first_inner, inner)


def with_inner(msg: p.Message, clear: list[p.Payload], first_inner: int, inner: bytes) -> p.Message:
    """A copy of `msg` whose payloads are `clear` followed by the chain parsed from `inner`."""
    payloads = decode_chain(first_inner, bytes(inner), 0, MAX_PAYLOADS - len(clear), outer=False)
    return p.Message(msg.spi_i, msg.spi_r, msg.exchange, msg.is_initiator, msg.is_response,
                     msg.message_id, list(clear) + payloads, inner_plain=inner, inner_first=first_inner)


def strip_non_esp_marker(data: bytes) -> bytes | None:
    """For a datagram on port 4500: the IKE message after the non-ESP marker (RFC 3948),
    or None when it is not IKE (ESP has a non-zero SPI there; a 1-byte NAT keepalive)."""
    if len(data) >= len(NON_ESP_MARKER) and data[:len(NON_ESP_MARKER)] == NON_ESP_MARKER:
        return data[len(NON_ESP_MARKER):]
    return None
