"""A minimal, bounds-checked DER reader.

Only what the IKE core needs to look inside values that `cryptography` has no
public parser for: the DER Distinguished Name of an ID_DER_ASN1_DN identity and
the parameters of an RFC 7427 AlgorithmIdentifier. Every malformed input
raises `DerError`; nothing here raises IndexError or ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ParseError

SEQUENCE = 0x30
SET = 0x31
OBJECT_IDENTIFIER = 0x06
NULL = 0x05
INTEGER = 0x02

MAX_DEPTH_ITEMS = 256  # more children than this in one container is not a real DN/params


class DerError(ParseError):
    """A DER value is truncated, has a bad length, or has an unexpected tag."""


@dataclass(frozen=True)
class Tlv:
    tag: int
    value: bytes
    encoded: bytes  # the whole TLV, as found


def read_tlv(buf: bytes, pos: int = 0) -> tuple[Tlv, int]:
    """Read one TLV at `pos`; return it and the offset just after it."""
    if pos + 2 > len(buf):
        raise DerError("truncated DER header")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte DER tags are not supported")
    first = buf[pos + 1]
    head = pos + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise DerError("indefinite or oversized DER length")
        if head + count > len(buf):
            raise DerError("truncated DER length")
        length = int.from_bytes(buf[head:head + count], "big")
        if length < 0x80 or buf[head] == 0:
            raise DerError("non-minimal DER length")
        head += count
    end = head + length
    if end > len(buf):
        raise DerError("DER value runs past its container")
    return Tlv(tag, bytes(buf[head:end]), bytes(buf[pos:end])), end


def read_single(buf: bytes, tag: int | None = None) -> Tlv:
    """Read a buffer that must hold exactly one TLV (of `tag`, when given)."""
    tlv, end = read_tlv(buf)
    if end != len(buf):
        raise DerError("trailing bytes after DER value")
    if tag is not None and tlv.tag != tag:
        raise DerError(f"expected DER tag 0x{tag:02x}, got 0x{tlv.tag:02x}")
    return tlv


def children(value: bytes) -> list[Tlv]:
    """The TLVs inside a constructed value, in order."""
    items: list[Tlv] = []
    pos = 0
    while pos < len(value):
        if len(items) >= MAX_DEPTH_ITEMS:
            raise DerError("too many DER elements")
        tlv, pos = read_tlv(value, pos)
        items.append(tlv)
    return items


def oid_to_dotted(value: bytes) -> str:
    """The dotted form of an OBJECT IDENTIFIER's content octets."""
    if not value or value[-1] & 0x80:
        raise DerError("bad OBJECT IDENTIFIER encoding")
    arcs: list[int] = []
    current = 0
    for i, byte in enumerate(value):
        if current == 0 and byte == 0x80 and (i == 0 or not value[i - 1] & 0x80):
            raise DerError("non-minimal OBJECT IDENTIFIER arc")
        current = (current << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(current)
            current = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def read_integer(value: bytes) -> int:
    if not value:
        raise DerError("empty INTEGER")
    return int.from_bytes(value, "big", signed=True)


# -- encoding (only what AlgorithmIdentifiers need) ------------------------------------------
def encode_tlv(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + content


def encode_oid(dotted: str) -> bytes:
    """A complete OBJECT IDENTIFIER TLV from its dotted form."""
    arcs = [int(a) for a in dotted.split(".")]
    content = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        content.extend(reversed(chunk))
    return encode_tlv(OBJECT_IDENTIFIER, bytes(content))


def encode_integer(value: int) -> bytes:
    return encode_tlv(INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def encode_sequence(*items: bytes) -> bytes:
    return encode_tlv(SEQUENCE, b"".join(items))


def encode_explicit(number: int, content: bytes) -> bytes:
    """An EXPLICIT context-specific tag [number] around `content`."""
    return encode_tlv(0xA0 | number, content)


NULL_TLV = bytes([NULL, 0])
