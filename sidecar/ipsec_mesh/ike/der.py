"""A minimal, strict, bounds-checked DER reader (and the few encoders we need).

What the IKE core reads itself: DER Distinguished Names (ID_DER_ASN1_DN), RFC 7427
AlgorithmIdentifiers and X.509 certificates (certificate.py), so that the sidecar
never loads `cryptography.x509`. Strict DER only: definite, minimal lengths;
single-byte tags; minimal INTEGERs; BOOLEAN as 00/FF; BIT STRINGs with zero
padding bits; UTCTime/GeneralizedTime as YYMMDDHHMMSSZ/YYYYMMDDHHMMSSZ.
Every malformed input raises `DerError`; nothing here raises IndexError or
ValueError. Nesting is bounded by the callers, which descend fixed schemas.
"""

from __future__ import annotations

from ..records import record
from .errors import ParseError

SEQUENCE = 0x30
SET = 0x31
OBJECT_IDENTIFIER = 0x06
NULL = 0x05
INTEGER = 0x02
BOOLEAN = 0x01
BIT_STRING = 0x03
OCTET_STRING = 0x04
UTF8_STRING = 0x0C
IA5_STRING = 0x16
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18

MAX_DEPTH_ITEMS = 256  # more children than this in one container is not a real DN/params
MAX_OID_BYTES = 63  # as cryptography's ASN.1 parser; no real OID comes near


class DerError(ParseError):
    """A DER value is truncated, has a bad length, or has an unexpected tag."""


@record(frozen=True)
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
    if not value or value[-1] & 0x80 or len(value) > MAX_OID_BYTES:
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
    """An INTEGER's content octets, which DER requires to be minimal (X.690 8.3.2)."""
    if not value:
        raise DerError("empty INTEGER")
    if len(value) > 1 and ((value[0] == 0 and not value[1] & 0x80) or (value[0] == 0xFF and value[1] & 0x80)):
        raise DerError("non-minimal INTEGER")
    return int.from_bytes(value, "big", signed=True)


def read_boolean(value: bytes) -> bool:
    if value == b"\xff":
        return True
    if value == b"\x00":
        return False
    raise DerError("BOOLEAN must be one octet 00 or FF")


def read_bit_string(value: bytes) -> bytes:
    """A BIT STRING's bits (padding bits, which DER requires to be zero, included as zeros)."""
    if not value or value[0] > 7 or (len(value) == 1 and value[0]):
        raise DerError("bad BIT STRING unused-bits octet")
    if len(value) > 1 and value[-1] & ((1 << value[0]) - 1):
        raise DerError("BIT STRING padding bits are not zero")
    return bytes(value[1:])


def read_octets(value: bytes) -> bytes:
    """A BIT STRING holding whole octets (signatures, keys)."""
    if not value or value[0] != 0:
        raise DerError("BIT STRING with unused bits where whole octets are expected")
    return bytes(value[1:])


_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def read_time(tlv: Tlv) -> int:
    """UTCTime (RFC 5280: YY < 50 is 20YY) or GeneralizedTime, as POSIX seconds (UTC)."""
    if tlv.tag == UTC_TIME and len(tlv.value) == 13:
        digits = tlv.value[:12]
    elif tlv.tag == GENERALIZED_TIME and len(tlv.value) == 15:
        digits = tlv.value[:14]
    else:
        raise DerError("time is neither YYMMDDHHMMSSZ UTCTime nor YYYYMMDDHHMMSSZ GeneralizedTime")
    if tlv.value[-1:] != b"Z" or not all(0x30 <= b <= 0x39 for b in digits):
        raise DerError("time has a non-digit, fractional seconds or a zone other than Z")
    if tlv.tag == UTC_TIME:
        year = int(digits[:2])
        year += 2000 if year < 50 else 1900
        rest = digits[2:]
    else:
        year = int(digits[:4])
        rest = digits[4:]
    month, day, hour, minute, second = (int(rest[i:i + 2]) for i in range(0, 10, 2))
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not 1 <= month <= 12 or not 1 <= day <= _DAYS_IN_MONTH[month - 1] + (leap and month == 2):
        raise DerError("time has an impossible date")
    if hour > 23 or minute > 59 or second > 59:
        raise DerError("time has an impossible time of day")
    return _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second


def time_text(seconds: int) -> str:
    """POSIX seconds as ISO 8601 UTC, for messages (without loading datetime)."""
    days, rest = divmod(seconds, 86400)
    year, month, day = _civil_from_days(days)
    return f"{year:04d}-{month:02d}-{day:02d} {rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}+00:00"


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day count since 1970-01-01 (H. Hinnant's algorithm)."""
    days += 719468
    era = days // 146097
    day_of_era = days - era * 146097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    mp = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return year_of_era + era * 400 + (month <= 2), month, day


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


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


def encode_set(*items: bytes) -> bytes:
    """A SET OF, its elements sorted as DER requires (X.690 11.6)."""
    return encode_tlv(SET, b"".join(sorted(items)))


def encode_bit_string(octets: bytes) -> bytes:
    return encode_tlv(BIT_STRING, b"\x00" + octets)


def encode_explicit(number: int, content: bytes) -> bytes:
    """An EXPLICIT context-specific tag [number] around `content`."""
    return encode_tlv(0xA0 | number, content)


NULL_TLV = bytes([NULL, 0])
