"""Netlink framing of our own: message headers, attributes (TLVs), nested attributes.

Why not pyroute2's `nlmsg`/`nla`: its decoder trusts the lengths it reads and its
package pulls ~1 MB of modules into every sidecar (docs/benchmarks.md), for what is
a header, a fixed struct and a chain of TLVs. Everything here reads untrusted bytes:
each length is checked against its parent before use and every failure is an
XfrmParseError, never struct.error or IndexError.

Layout (include/uapi/linux/netlink.h): a message is `nlmsghdr` (16 bytes) then its
payload; an attribute is `nlattr` (length including the 4-byte header, type with
NLA_F_NESTED / NLA_F_NET_BYTEORDER in the top bits) then its payload, padded to 4.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterator

from .errors import XfrmParseError, XfrmSpecError

NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
NLA_HEADER = struct.Struct("=HH")
NLMSG_HDRLEN = NLMSG_HEADER.size
NLA_HDRLEN = NLA_HEADER.size
NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = 0x3FFF
MAX_NESTING = 4  # deeper than anything the kernel sends us; bounds the recursion

Attributes = dict[int, "bytes | Attributes"]


def align(length: int) -> int:
    return (length + 3) & ~3


def pack_message(msg_type: int, flags: int, seq: int, body: bytes, pid: int = 0) -> bytes:
    return NLMSG_HEADER.pack(NLMSG_HDRLEN + len(body), msg_type, flags, seq, pid) + body


def pack_attr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded so the next one starts aligned."""
    length = NLA_HDRLEN + len(payload)
    if length > 0xFFFF:
        raise XfrmSpecError("encode", f"attribute type {kind} of {len(payload)} bytes does not fit nla_len")
    return NLA_HEADER.pack(length, kind) + payload + bytes(-length % 4)


def pack_nested(kind: int, attrs: bytes) -> bytes:
    return pack_attr(kind | NLA_F_NESTED, attrs)


def header(data: bytes, operation: str) -> tuple[int, int, int, int, int]:
    """The nlmsghdr of one whole message, its length checked against `data`."""
    if len(data) < NLMSG_HDRLEN:
        raise XfrmParseError(operation, f"netlink message of {len(data)} bytes has no header")
    fields = NLMSG_HEADER.unpack_from(data, 0)
    if fields[0] != len(data):
        raise XfrmParseError(operation, f"netlink length {fields[0]} != {len(data)} received")
    return fields


def iter_messages(datagram: bytes, operation: str) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, whole message) for each message of a datagram (a multipart dump part)."""
    offset = 0
    while offset < len(datagram):
        if len(datagram) - offset < NLMSG_HDRLEN:
            raise XfrmParseError(operation, "truncated netlink header")
        length, msg_type, flags, seq, _pid = NLMSG_HEADER.unpack_from(datagram, offset)
        if length < NLMSG_HDRLEN or offset + length > len(datagram):
            raise XfrmParseError(operation, f"netlink length {length} overruns the datagram")
        yield msg_type, flags, seq, bytes(datagram[offset : offset + length])
        offset += align(length)


def iter_attrs(data: bytes, start: int, end: int, operation: str) -> Iterator[tuple[int, int, int]]:
    """(type with flags, payload start, payload end) of the attributes filling data[start:end].

    The chain must fill its parent exactly (the last attribute's padding may be left out):
    a length below the header, past the parent, or leftover bytes are errors.
    """
    if start < 0 or end > len(data) or start > end:
        raise XfrmParseError(operation, f"attributes [{start}:{end}] outside a message of {len(data)} bytes")
    offset = start
    while offset < end:
        if end - offset < NLA_HDRLEN:
            raise XfrmParseError(operation, f"{end - offset} stray bytes after the last attribute")
        length, kind = NLA_HEADER.unpack_from(data, offset)
        if length < NLA_HDRLEN or offset + length > end:
            raise XfrmParseError(operation, f"attribute type {kind & NLA_TYPE_MASK} has bad length {length}")
        yield kind, offset + NLA_HDRLEN, offset + length
        offset += align(length)


def parse_attrs(
    data: bytes, start: int, end: int, operation: str, nested: Collection[int] = (), depth: int = 0
) -> Attributes:
    """type -> payload for data[start:end]; the types in `nested` hold attribute chains
    themselves and are parsed the same way (up to MAX_NESTING levels). A repeated type
    keeps its first payload, as the kernel's nla_parse does not say which wins."""
    if depth > MAX_NESTING:
        raise XfrmParseError(operation, f"attributes nested deeper than {MAX_NESTING}")
    attrs: Attributes = {}
    for kind, first, last in iter_attrs(data, start, end, operation):
        kind &= NLA_TYPE_MASK
        if kind in attrs:
            continue
        if kind in nested:
            attrs[kind] = parse_attrs(data, first, last, operation, nested, depth + 1)
        else:
            attrs[kind] = bytes(data[first:last])
    return attrs
