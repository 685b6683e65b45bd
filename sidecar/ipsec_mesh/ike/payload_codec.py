"""Payload bodies (RFC 7296 sections 3.3-3.16) to bytes and back.

A "body" is a payload without its 4-byte generic header; the chain of generic
headers, SK and SKF live in `message.py`. Decoders get hostile bytes and raise
only `ParseError`; encoders get our own objects and raise ValueError for ones
that cannot be put on the wire (a programming error, not an attack).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Sequence
from typing import Any, Callable, TypeVar

from . import payloads as p
from .constants import NotifyType, PayloadType, ProtocolId, TransformAttr, TransformType, TsType
from .errors import ParseError
from .wire import Reader, remember, remember_parse, u16

# Limits against hostile input (far above anything a sane peer sends).
MAX_PROPOSALS = 64
MAX_TRANSFORMS = 64
MAX_TRANSFORM_ATTRIBUTES = 16
MAX_TRAFFIC_SELECTORS = 32
MAX_DELETE_SPIS = 512
MAX_CONFIG_ATTRIBUTES = 64
NONCE_MIN, NONCE_MAX = 16, 256

_LAST, _MORE_PROPOSALS, _MORE_TRANSFORMS = 0, 2, 3
_ATTR_TV = 0x8000  # AF bit: attribute value is the 2 bytes after the type
_TS_LAYOUT = {TsType.TS_IPV4_ADDR_RANGE: (16, 4), TsType.TS_IPV6_ADDR_RANGE: (40, 16)}
# For decoding, by wire value: (type, selector length, address length).
_TS_DECODE: dict[int, tuple[TsType, int, int]] = {t: (t, *layout) for t, layout in _TS_LAYOUT.items()}
_BBH, _BBBB = struct.Struct("!BBH"), struct.Struct("!BBBB")
_PORTS = struct.Struct("!HH")
# Encoding packs each fixed-size header in one call (these run for every payload sent).
_TRANSFORM_HEADER = struct.Struct("!BxHBxH")  # last/more, length, transform type, transform ID
_TV_ATTRIBUTE = struct.Struct("!HH")  # attribute type with the AF bit, value
_NOTIFY_HEADER = struct.Struct("!BBH")  # protocol, SPI size, notify type
_SELECTOR_HEADER = struct.Struct("!BBHHH")  # type, IP protocol, length, start port, end port
_CHILD_SPI_SIZE = 4
_IKE_SPI_SIZE = 8
# Proposal SPI sizes (3.3.1): none in IKE_SA_INIT, 8 when rekeying the IKE SA, 4 for ESP/AH.
_PROPOSAL_SPI_SIZES: dict[int, tuple[int, ...]] = {ProtocolId.IKE: (0, _IKE_SPI_SIZE), ProtocolId.ESP: (_CHILD_SPI_SIZE,),
                       ProtocolId.AH: (_CHILD_SPI_SIZE,)}


def known(enum_cls: type[enum.IntEnum], value: int) -> int:
    """The enum member for a known wire value, else the bare int (kept, not rejected)."""
    return _members(enum_cls).get(value, value)


def _members(enum_cls: type[enum.IntEnum]) -> dict[int, enum.IntEnum]:
    members = _MEMBERS.get(enum_cls)
    if members is None:
        members = _MEMBERS[enum_cls] = {int(m): m for m in enum_cls}
    return members


_MEMBERS: dict[type[enum.IntEnum], dict[int, enum.IntEnum]] = {}  # a dict lookup instead of EnumType.__call__
# Looked up directly by the notify decoder (a message carries several notifies).
_NOTIFY_TYPES, _PROTOCOLS = _members(NotifyType), _members(ProtocolId)


# -- SA (3.3) -----------------------------------------------------------------

def _encode_sa(sa: p.SaPayload) -> bytes:
    if not sa.proposals or len(sa.proposals) > MAX_PROPOSALS:
        raise ValueError(f"SA needs 1..{MAX_PROPOSALS} proposals, has {len(sa.proposals)}")
    out = bytearray()
    for i, prop in enumerate(sa.proposals):
        body = _encode_proposal(prop)
        more = _LAST if i == len(sa.proposals) - 1 else _MORE_PROPOSALS
        out += _BBH.pack(more, 0, 4 + len(body)) + body
    return bytes(out)


def _encode_proposal(prop: p.Proposal) -> bytes:
    transforms = prop.transforms
    if not 1 <= len(transforms) <= min(MAX_TRANSFORMS, 255):
        raise ValueError(f"proposal needs 1..{MAX_TRANSFORMS} transforms")
    # Every answer of one selection carries the same (memoised, immutable) tuple of frozen
    # transforms, and every offer of a config the same: their bytes are encoded once. Keyed
    # by identity (hashing the records costs more than a small encoding); the entry holds
    # the tuple, so its id stays its own. Lists (mutable) are always encoded afresh.
    if transforms.__class__ is tuple:
        entry = _ENCODED_TRANSFORMS.get(id(transforms))
        if entry is None or entry[0] is not transforms:
            entry = (transforms, _encode_transforms(transforms))
            remember(_ENCODED_TRANSFORMS, id(transforms), entry)
        encoded = entry[1]
    else:
        encoded = _encode_transforms(transforms)
    return bytes((prop.number, prop.protocol, len(prop.spi), len(transforms))) + prop.spi + encoded


def _encode_transforms(transforms: Sequence[p.Transform]) -> bytes:
    out = bytearray()
    for i, tr in enumerate(transforms):
        attrs = b""
        if tr.key_length is not None:
            attrs = _TV_ATTRIBUTE.pack(_ATTR_TV | TransformAttr.KEY_LENGTH, tr.key_length)
        more = _LAST if i == len(transforms) - 1 else _MORE_TRANSFORMS
        out += _TRANSFORM_HEADER.pack(more, 8 + len(attrs), tr.type, tr.id) + attrs
    return bytes(out)


_ENCODED_TRANSFORMS: dict[int, tuple[tuple[p.Transform, ...], bytes]] = {}


def _decode_sa(body: bytes) -> p.SaPayload:
    # A peer's IKE_SA_INIT offer has the same bytes in every IKE SA (its proposals carry no
    # SPI): the (frozen) proposals parsed from them are kept, each payload gets its own list.
    known_offer = _SA_OFFERS.get(body)
    if known_offer is not None:
        return p.SaPayload(list(known_offer))
    payload = _parse_sa(body)
    # ESP offers and rekeys carry an SPI per SA: not kept.
    if not any(prop.spi for prop in payload.proposals):
        remember_parse(_SA_OFFERS, body, tuple(payload.proposals), body)
    return payload


def _parse_sa(body: bytes) -> p.SaPayload:
    # Sliced directly (no Reader): two SA payloads per IKE SA; every length checked first.
    end = len(body)
    pos = 0
    proposals: list[tuple[p.Proposal, bool]] = []
    more = _MORE_PROPOSALS
    while more != _LAST:
        if len(proposals) == MAX_PROPOSALS:
            raise ParseError(f"SA: more than {MAX_PROPOSALS} proposals")
        if pos + 4 > end:
            raise ParseError(f"SA: needs 4 bytes, {end - pos} left")
        more, _, length = _BBH.unpack_from(body, pos)
        if more not in (_LAST, _MORE_PROPOSALS):
            raise ParseError(f"SA: bad last-substructure value {more}")
        if length < 8:
            raise ParseError(f"SA: proposal length {length} < 8")
        if pos + length > end:
            raise ParseError(f"SA: needs {length - 4} bytes, {end - pos - 4} left")
        proposals.append(_decode_proposal(body[pos + 4:pos + length]))
        pos += length
    if pos != end:
        raise ParseError(f"SA: {end - pos} unexpected trailing bytes")
    numbers = [prop.number for prop, _ in proposals]
    # RFC 7296 3.3.1: an offer numbers its proposals 1, 2, ...; an answer holds the chosen one.
    if len(numbers) > 1 and numbers != list(range(1, len(numbers) + 1)):
        raise ParseError(f"SA: proposals numbered {numbers}, expected 1..{len(numbers)}")
    if numbers[0] == 0:
        raise ParseError("SA: proposal number 0")
    # A proposal with an attribute we do not understand is unacceptable (3.3.6):
    # it is dropped here, so the state machine can never choose it.
    return p.SaPayload([prop for prop, acceptable in proposals if acceptable])


def _decode_proposal(body: bytes) -> tuple[p.Proposal, bool]:
    number, protocol, spi_size, count = _BBBB.unpack_from(body)  # _decode_sa checked length >= 8
    protocol = _PROTOCOLS.get(protocol, protocol)
    expected_spi = _PROPOSAL_SPI_SIZES.get(protocol)
    if expected_spi is not None and spi_size not in expected_spi:
        raise ParseError(f"proposal: SPI size {spi_size} invalid for protocol {protocol}")
    if not 1 <= count <= MAX_TRANSFORMS:
        raise ParseError(f"proposal: {count} transforms, allowed 1..{MAX_TRANSFORMS}")
    if 4 + spi_size > len(body):
        raise ParseError(f"proposal: needs {spi_size} bytes, {len(body) - 4} left")
    spi = body[4:4 + spi_size]
    raw = body[4 + spi_size:]
    # A peer offers the same transforms in every IKE SA (only the SPI changes): the bytes
    # of a list decoded before map to its (immutable) result, which is all the parse yields.
    key = (count, raw)
    decoded = _TRANSFORM_LISTS.get(key)
    if decoded is None:
        decoded = _decode_transforms(Reader(raw, "proposal"), count)
        remember_parse(_TRANSFORM_LISTS, key, decoded, raw)
    transforms, acceptable = decoded
    return p.Proposal(number, protocol, spi, transforms), acceptable


def _decode_transforms(r: Reader, count: int) -> tuple[tuple[p.Transform, ...], bool]:
    transforms, acceptable = [], True
    for i in range(count):
        more, _, length = r.unpack(_BBH)
        if more != (_LAST if i == count - 1 else _MORE_TRANSFORMS):
            raise ParseError(f"proposal: last-substructure {more} disagrees with count {count}")
        if length < 8:
            raise ParseError(f"transform length {length} < 8")
        transform, understood = _decode_transform(r.sub(length - 4, "transform"))
        transforms.append(transform)
        acceptable = acceptable and understood
    r.expect_end()
    return tuple(transforms), acceptable


# Results of pure parses, by the bytes parsed (`wire.remember` bounds them).
_TRANSFORM_LISTS: dict[tuple[int, bytes], tuple[tuple[p.Transform, ...], bool]] = {}
_SELECTORS: dict[tuple[int, int, bytes], p.TrafficSelector] = {}
_SA_OFFERS: dict[bytes, tuple[p.Proposal, ...]] = {}  # SA payload bodies without SPIs
_TS_LISTS: dict[bytes, tuple[p.TrafficSelector, ...]] = {}  # TS payload bodies


def _decode_transform(r: Reader) -> tuple[p.Transform, bool]:
    ttype, _, tid = r.unpack(_BBH)
    ttype = known(TransformType, ttype)
    key_length, understood, count = None, True, 0
    while r.remaining:
        count += 1
        if count > MAX_TRANSFORM_ATTRIBUTES:
            raise ParseError(f"transform: more than {MAX_TRANSFORM_ATTRIBUTES} attributes")
        word = r.u16()
        attr_type = word & ~_ATTR_TV
        value: int | None = None  # a TLV attribute's value is skipped: only KEY_LENGTH is used
        if word & _ATTR_TV:
            value = r.u16()
        else:
            r.take(r.u16())
        if attr_type != TransformAttr.KEY_LENGTH:
            understood = False
        elif value is None:
            raise ParseError("transform: KEY_LENGTH must use the TV format")
        elif key_length is not None:
            raise ParseError("transform: KEY_LENGTH given twice")
        else:
            key_length = value
    return p.Transform(ttype, tid, key_length), understood


# -- simple "type + reserved + data" payloads ---------------------------------

# The payloads below have a short fixed header and are sliced directly (no Reader):
# every IKE SA carries several of them.
def _decode_ke(body: bytes) -> p.KePayload:
    if len(body) < 4:
        raise ParseError(f"KE: needs 4 bytes, {len(body)} left")
    return p.KePayload(body[0] << 8 | body[1], body[4:])


def _encode_ke(ke: p.KePayload) -> bytes:
    return u16(ke.group) + b"\0\0" + ke.data


_T = TypeVar("_T")
_Ts = TypeVar("_Ts", bound=p.TsPayload)


def _typed_decoder(cls: Callable[[int, bytes], _T], what: str, reserved: int) -> Callable[[bytes], _T]:
    """Decoder for payloads made of a 1-byte type, `reserved` zero bytes, then data."""

    header = 1 + reserved

    def decode(body: bytes) -> _T:
        if len(body) < header:
            raise ParseError(f"{what}: needs {header} bytes, {len(body)} left")
        return cls(body[0], body[header:])

    return decode


def _encode_id(payload: p.IdPayload) -> bytes:
    return payload.body()


def _encode_auth(auth: p.AuthPayload) -> bytes:
    return bytes([auth.method, 0, 0, 0]) + auth.data


def _encode_cert(cert: p.CertPayload | p.CertReqPayload) -> bytes:
    return bytes([cert.encoding]) + cert.data


def _decode_nonce(body: bytes) -> p.NoncePayload:
    if not NONCE_MIN <= len(body) <= NONCE_MAX:
        raise ParseError(f"nonce of {len(body)} bytes, allowed {NONCE_MIN}..{NONCE_MAX}")
    return p.NoncePayload(body)


def _encode_nonce(nonce: p.NoncePayload) -> bytes:
    if not NONCE_MIN <= len(nonce.data) <= NONCE_MAX:
        raise ValueError(f"nonce of {len(nonce.data)} bytes, allowed {NONCE_MIN}..{NONCE_MAX}")
    return nonce.data


# -- NOTIFY (3.10) and DELETE (3.11) ------------------------------------------

def _decode_notify(body: bytes) -> p.NotifyPayload:
    # Sliced directly (no Reader): a message carries many notifies.
    if len(body) < 4:
        raise ParseError(f"NOTIFY: needs 4 bytes, {len(body)} left")
    protocol, spi_size, ntype = _BBH.unpack_from(body)
    if 4 + spi_size > len(body):
        raise ParseError(f"NOTIFY: needs {spi_size} bytes, {len(body) - 4} left")
    return p.NotifyPayload(_NOTIFY_TYPES.get(ntype, ntype), _PROTOCOLS.get(protocol, protocol),
                           body[4:4 + spi_size], body[4 + spi_size:])


def _encode_notify(n: p.NotifyPayload) -> bytes:
    return _NOTIFY_HEADER.pack(n.protocol, len(n.spi), n.type) + n.spi + n.data


def _delete_spi_size(protocol: int) -> int:
    if protocol == ProtocolId.IKE:
        return 0
    if protocol in (ProtocolId.ESP, ProtocolId.AH):
        return _CHILD_SPI_SIZE
    raise ParseError(f"DELETE: protocol {protocol} is not IKE, ESP or AH")


def _decode_delete(body: bytes) -> p.DeletePayload:
    r = Reader(body, "DELETE")
    protocol, spi_size, count = known(ProtocolId, r.u8()), r.u8(), r.u16()
    if spi_size != _delete_spi_size(protocol):
        raise ParseError(f"DELETE: SPI size {spi_size} invalid for protocol {protocol}")
    if count > MAX_DELETE_SPIS or (protocol == ProtocolId.IKE and count):
        raise ParseError(f"DELETE: {count} SPIs not allowed for protocol {protocol}")
    spis = [r.take(spi_size) for _ in range(count)]
    r.expect_end()
    return p.DeletePayload(protocol, spis)


def _encode_delete(d: p.DeletePayload) -> bytes:
    try:
        size = _delete_spi_size(d.protocol)
    except ParseError as exc:
        raise ValueError(str(exc)) from None
    if any(len(spi) != size for spi in d.spis) or len(d.spis) > MAX_DELETE_SPIS:
        raise ValueError(f"DELETE {d.protocol}: SPIs must be {size} bytes, at most {MAX_DELETE_SPIS}")
    return bytes([d.protocol, size]) + u16(len(d.spis)) + b"".join(d.spis)


# -- TS (3.13) ----------------------------------------------------------------

def _decode_ts(cls: type[_Ts]) -> Callable[[bytes], _Ts]:
    def decode(body: bytes) -> _Ts:
        # A peer sends the same selectors in every CHILD_SA request: the (frozen) selectors
        # parsed from the same bytes are kept, each payload gets its own list.
        known = _TS_LISTS.get(body)
        if known is not None:
            return cls(list(known))
        r = Reader(body, "TS")
        count = r.u8()
        r.skip(3)
        if count > MAX_TRAFFIC_SELECTORS:
            raise ParseError(f"TS: {count} selectors, at most {MAX_TRAFFIC_SELECTORS}")
        selectors = [_decode_selector(r) for _ in range(count)]
        r.expect_end()
        remember_parse(_TS_LISTS, body, tuple(selectors), body)
        return cls(selectors)

    return decode


def _decode_selector(r: Reader) -> p.TrafficSelector:
    ts_type, ip_protocol, length = r.unpack(_BBH)
    layout = _TS_DECODE.get(ts_type)
    if layout is None:
        raise ParseError(f"TS: unsupported selector type {ts_type}")
    known_type, expected_length, addr_len = layout
    if length != expected_length:
        raise ParseError(f"TS: type {ts_type} selector of length {length}, expected {expected_length}")
    key = (ts_type, ip_protocol, r.take(length - 4))
    selector = _SELECTORS.get(key)
    if selector is None:
        raw = key[2]
        start_port, end_port = _PORTS.unpack_from(raw)
        start, end = ipaddress.ip_address(raw[4:4 + addr_len]), ipaddress.ip_address(raw[4 + addr_len:])
        selector = p.TrafficSelector(known_type, ip_protocol, start_port, end_port, start, end)
        remember(_SELECTORS, key, selector)
    return selector


def _encode_ts(ts: p.TsPayload) -> bytes:
    if len(ts.selectors) > MAX_TRAFFIC_SELECTORS:
        raise ValueError(f"TS: at most {MAX_TRAFFIC_SELECTORS} selectors")
    out = bytearray([len(ts.selectors), 0, 0, 0])
    for sel in ts.selectors:
        length, addr_len = _TS_LAYOUT[sel.ts_type]
        start, end = sel.start_addr.packed, sel.end_addr.packed
        if len(start) != addr_len or len(end) != addr_len:
            raise ValueError(f"TS type {sel.ts_type} with addresses {sel.start_addr}-{sel.end_addr}")
        out += _SELECTOR_HEADER.pack(sel.ts_type, sel.ip_protocol, length, sel.start_port, sel.end_port)
        out += start + end
    return bytes(out)


# -- CP (3.15) ----------------------------------------------------------------

def _decode_cp(body: bytes) -> p.CpPayload:
    r = Reader(body, "CP")
    cfg_type = r.u8()
    r.skip(3)
    attributes: list[p.ConfigAttribute] = []
    while r.remaining:
        if len(attributes) == MAX_CONFIG_ATTRIBUTES:
            raise ParseError(f"CP: more than {MAX_CONFIG_ATTRIBUTES} attributes")
        attr_type = r.u16() & 0x7FFF  # the top bit is reserved, ignored on receipt
        attributes.append(p.ConfigAttribute(attr_type, r.take(r.u16())))
    return p.CpPayload(cfg_type, attributes)


def _encode_cp(cp: p.CpPayload) -> bytes:
    out = bytearray([cp.cfg_type, 0, 0, 0])
    for attr in cp.attributes:
        if not 0 <= attr.type <= 0x7FFF:
            raise ValueError(f"CP attribute type {attr.type} does not fit 15 bits")
        out += u16(attr.type) + u16(len(attr.value)) + attr.value
    return bytes(out)


def _data_of(payload: p.VendorIdPayload | p.EapPayload | p.UnknownPayload) -> bytes:
    return payload.data


# -- dispatch -----------------------------------------------------------------

# By payload type; message.py's chain decoder looks them up directly.
DECODERS: dict[int, Callable[[bytes], p.Payload]] = {
    PayloadType.SA: _decode_sa,
    PayloadType.KE: _decode_ke,
    PayloadType.IDi: _typed_decoder(p.IdiPayload, "IDi", 3),
    PayloadType.IDr: _typed_decoder(p.IdrPayload, "IDr", 3),
    PayloadType.CERT: _typed_decoder(p.CertPayload, "CERT", 0),
    PayloadType.CERTREQ: _typed_decoder(p.CertReqPayload, "CERTREQ", 0),
    PayloadType.AUTH: _typed_decoder(p.AuthPayload, "AUTH", 3),
    PayloadType.NONCE: _decode_nonce,
    PayloadType.NOTIFY: _decode_notify,
    PayloadType.DELETE: _decode_delete,
    PayloadType.VENDOR_ID: p.VendorIdPayload,
    PayloadType.TSi: _decode_ts(p.TsiPayload),
    PayloadType.TSr: _decode_ts(p.TsrPayload),
    PayloadType.CP: _decode_cp,
    PayloadType.EAP: p.EapPayload,
}

# Each encoder takes exactly the class it is keyed by (a mapping mypy cannot express).
_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    p.SaPayload: _encode_sa,
    p.KePayload: _encode_ke,
    p.IdiPayload: _encode_id,
    p.IdrPayload: _encode_id,
    p.CertPayload: _encode_cert,
    p.CertReqPayload: _encode_cert,
    p.AuthPayload: _encode_auth,
    p.NoncePayload: _encode_nonce,
    p.NotifyPayload: _encode_notify,
    p.DeletePayload: _encode_delete,
    p.VendorIdPayload: _data_of,
    p.TsiPayload: _encode_ts,
    p.TsrPayload: _encode_ts,
    p.CpPayload: _encode_cp,
    p.EapPayload: _data_of,
    p.UnknownPayload: _data_of,
}


# By class, with the wire type: message.py's chain encoder looks them up directly (one
# lookup per payload for both).
PLAIN_ENCODERS: dict[type, tuple[int, Callable[[Any], bytes]]] = {
    cls: (p.TYPE_OF_CLASS[cls], encoder) for cls, encoder in _ENCODERS.items() if cls is not p.UnknownPayload
}


def decode_body(ptype: int, body: bytes) -> p.Payload:
    """The payload object for a known plain (not SK/SKF) payload type."""
    return DECODERS[ptype](body)


def encode_body(payload: p.Payload) -> bytes:
    """The wire body of a plain payload object (not SK/SKF)."""
    try:
        encoder = _ENCODERS[type(payload)]
    except KeyError:
        raise ValueError(f"cannot encode {type(payload).__name__} as a plain payload") from None
    try:
        return encoder(payload)
    except (OverflowError, TypeError, struct.error) as exc:  # a field out of range for its wire width
        raise ValueError(f"{type(payload).__name__}: {exc}") from None
