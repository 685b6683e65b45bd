"""XFRM kernel structs and messages, packed and parsed with precompiled `struct` layouts.

`fields` are packed one after another with no implicit alignment, so the C
padding of include/uapi/linux/xfrm.h is spelled out as `x` pad fields. Nested
structs are flattened with a name prefix (`sel_daddr`, `lft_soft_byte_limit`).
`STRUCT_SIZES` is checked against the sizes the header implies (x86-64) by the
unit tests: xfrm_usersa_info 224, xfrm_userpolicy_info 168, ...

Byte order: ports and SPIs are big-endian (`>H`, `>I`), all else host order.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from .constants import Attr
from .errors import XfrmParseError, XfrmSpecError
from .netlink import NLMSG_HDRLEN, align, header, iter_attrs, pack_attr

Fields = tuple[tuple[str, str], ...]

ADDRESS = "16s"  # xfrm_address_t: a4 or a6[4], zero-padded


def _prefixed(prefix: str, fields: Fields) -> Fields:
    return tuple((prefix + name, fmt) for name, fmt in fields)


SELECTOR: Fields = (
    ("daddr", ADDRESS),
    ("saddr", ADDRESS),
    ("dport", ">H"),
    ("dport_mask", ">H"),
    ("sport", ">H"),
    ("sport_mask", ">H"),
    ("family", "H"),
    ("prefixlen_d", "B"),
    ("prefixlen_s", "B"),
    ("proto", "B"),
    ("_pad_sel", "3x"),
    ("ifindex", "i"),
    ("user", "I"),  # ipsec-mesh's policy ownership tag, see ownership.py
)
XFRM_ID: Fields = (("daddr", ADDRESS), ("spi", ">I"), ("proto", "B"), ("_pad_id", "3x"))
LIFETIME_CFG: Fields = tuple(
    (name, "Q")
    for name in (
        "soft_byte_limit",
        "hard_byte_limit",
        "soft_packet_limit",
        "hard_packet_limit",
        "soft_add_expires_seconds",
        "hard_add_expires_seconds",
        "soft_use_expires_seconds",
        "hard_use_expires_seconds",
    )
)
LIFETIME_CUR: Fields = (("bytes", "Q"), ("packets", "Q"), ("add_time", "Q"), ("use_time", "Q"))
STATS: Fields = (("replay_window", "I"), ("replay", "I"), ("integrity_failed", "I"))

USERSA_INFO: Fields = (
    _prefixed("sel_", SELECTOR)
    + _prefixed("id_", XFRM_ID)
    + (("saddr", ADDRESS),)
    + _prefixed("lft_", LIFETIME_CFG)
    + _prefixed("cur_", LIFETIME_CUR)
    + _prefixed("stats_", STATS)
    + (
        ("seq", "I"),
        ("reqid", "I"),
        ("family", "H"),
        ("mode", "B"),
        ("replay_window", "B"),
        ("flags", "B"),
        ("_pad_sa", "7x"),
    )
)
USERSA_ID: Fields = (
    ("daddr", ADDRESS),
    ("spi", ">I"),
    ("family", "H"),
    ("proto", "B"),
    ("_pad_said", "x"),
)
USERSPI_INFO: Fields = USERSA_INFO + (("min", "I"), ("max", "I"))
USERPOLICY_INFO: Fields = (
    _prefixed("sel_", SELECTOR)
    + _prefixed("lft_", LIFETIME_CFG)
    + _prefixed("cur_", LIFETIME_CUR)
    + (
        ("priority", "I"),
        ("index", "I"),
        ("dir", "B"),
        ("action", "B"),
        ("flags", "B"),
        ("share", "B"),
        ("_pad_pol", "4x"),
    )
)
USERPOLICY_ID: Fields = _prefixed("sel_", SELECTOR) + (
    ("index", "I"),
    ("dir", "B"),
    ("_pad_polid", "3x"),
)
USER_TMPL: Fields = _prefixed("id_", XFRM_ID) + (
    ("family", "H"),
    ("_pad_tmpl1", "2x"),
    ("saddr", ADDRESS),
    ("reqid", "I"),
    ("mode", "B"),
    ("share", "B"),
    ("optional", "B"),
    ("_pad_tmpl2", "x"),
    ("aalgos", "I"),
    ("ealgos", "I"),
    ("calgos", "I"),
)
ENCAP_TMPL: Fields = (
    ("encap_type", "H"),
    ("encap_sport", ">H"),
    ("encap_dport", ">H"),
    ("_pad_encap", "2x"),
    ("encap_oa", ADDRESS),
)
USER_ACQUIRE: Fields = (
    _prefixed("id_", XFRM_ID)
    + (("saddr", ADDRESS),)
    + _prefixed("sel_", SELECTOR)
    + _prefixed("pol_", USERPOLICY_INFO)
    + (("aalgos", "I"), ("ealgos", "I"), ("calgos", "I"), ("seq", "I"))
)
USER_EXPIRE: Fields = USERSA_INFO + (("hard", "B"), ("_pad_exp", "7x"))
USER_POLEXPIRE: Fields = USERPOLICY_INFO + (("hard", "B"), ("_pad_polexp", "7x"))
USER_MAPPING: Fields = (
    _prefixed("id_", USERSA_ID)
    + (
        ("reqid", "I"),
        ("old_saddr", ADDRESS),
        ("new_saddr", ADDRESS),
        ("old_sport", ">H"),
        ("new_sport", ">H"),
    )
)
USERSA_FLUSH: Fields = (("proto", "B"), ("_pad_flush", "3x"))
MARK: Fields = (("v", "I"), ("m", "I"))  # the kernel's names
REPLAY_ESN: Fields = (
    ("bmp_len", "I"),
    ("oseq", "I"),
    ("seq", "I"),
    ("oseq_hi", "I"),
    ("seq_hi", "I"),
    ("replay_window", "I"),
)
ALGO_AEAD: Fields = (("alg_name", "64s"), ("alg_key_len", "I"), ("alg_icv_len", "I"))
USERPOLICY_TYPE: Fields = (
    ("type", "B"),
    ("_pad_ptype1", "x"),
    ("reserved1", "H"),
    ("reserved2", "B"),
    ("_pad_ptype2", "x"),
)


def size_of(fields: Fields) -> int:
    return sum(struct.calcsize(fmt) for _, fmt in fields)


STRUCT_SIZES = {
    "xfrm_selector": size_of(SELECTOR),
    "xfrm_id": size_of(XFRM_ID),
    "xfrm_lifetime_cfg": size_of(LIFETIME_CFG),
    "xfrm_lifetime_cur": size_of(LIFETIME_CUR),
    "xfrm_usersa_info": size_of(USERSA_INFO),
    "xfrm_usersa_id": size_of(USERSA_ID),
    "xfrm_userspi_info": size_of(USERSPI_INFO),
    "xfrm_userpolicy_info": size_of(USERPOLICY_INFO),
    "xfrm_userpolicy_id": size_of(USERPOLICY_ID),
    "xfrm_user_tmpl": size_of(USER_TMPL),
    "xfrm_encap_tmpl": size_of(ENCAP_TMPL),
    "xfrm_user_acquire": size_of(USER_ACQUIRE),
    "xfrm_user_expire": size_of(USER_EXPIRE),
    "xfrm_user_polexpire": size_of(USER_POLEXPIRE),
    "xfrm_user_mapping": size_of(USER_MAPPING),
    "xfrm_mark": size_of(MARK),
    "xfrm_replay_state_esn": size_of(REPLAY_ESN),
    "xfrm_algo_aead": size_of(ALGO_AEAD),
    "xfrm_userpolicy_type": size_of(USERPOLICY_TYPE),
}


def _swap16(value: int) -> int:  # to_bytes: a value outside 0..65535 raises instead of wrapping
    return int.from_bytes(value.to_bytes(2, "big"), "little")


def _swap32(value: int) -> int:
    return int.from_bytes(value.to_bytes(4, "big"), "little")


class CompiledLayout:
    """All fixed fields of a struct as one precompiled `struct.Struct`.

    Big-endian fields are byte-swapped into host order so a single native
    format covers the whole struct.
    """

    def __init__(self, fields: Fields):
        native: list[str] = []
        self.names: list[str] = []
        self.swaps: list[Callable[[int], int] | None] = []
        for name, fmt in fields:
            if fmt.endswith("x"):
                native.append(fmt)
                continue
            swap = None
            if fmt.startswith(">"):
                fmt = fmt[1:]
                swap = _swap16 if fmt == "H" else _swap32
            native.append(fmt)
            self.names.append(name)
            self.swaps.append(swap)
        self.struct = struct.Struct("=" + "".join(native))
        self.size = self.struct.size
        self.defaults = [b"" if fmt.endswith("s") else 0 for name, fmt in fields if not fmt.endswith("x")]

    def pack(self, values: Mapping[str, Any]) -> bytes:
        """The struct with `values` by field name; a missing field is zero."""
        packed = []
        try:
            for name, swap, default in zip(self.names, self.swaps, self.defaults, strict=True):
                value: Any = values.get(name)
                value = default if value is None else value
                packed.append(swap(value) if swap else value)
            return self.struct.pack(*packed)
        except (struct.error, OverflowError, TypeError) as exc:  # a value outside its kernel field
            raise XfrmSpecError("encode", f"field out of range: {exc}") from None

    def unpack(self, data: bytes, offset: int = 0) -> dict[str, Any]:
        """Field name -> value; the caller has checked that `size` bytes are there."""
        values = self.struct.unpack_from(data, offset)
        return {
            name: swap(value) if swap else value
            for name, swap, value in zip(self.names, self.swaps, values, strict=True)
        }


class AttrCodec:
    """How one attribute's payload is packed and read: raw bytes, an unsigned integer, or a
    struct (followed by a variable part we send but never read back: keys, the replay bitmap)."""

    def __init__(self, kind: int, name: str, fmt: str | Fields, tail: str | None = None):
        self.kind, self.name, self.tail = kind, name, tail
        self.integer = struct.Struct("=" + fmt) if isinstance(fmt, str) and fmt != "bytes" else None
        self.layout = CompiledLayout(fmt) if not isinstance(fmt, str) else None
        self.min_size = (self.layout or self.integer or struct.Struct("")).size

    def pack(self, value: Any) -> bytes:
        if self.layout is not None:
            payload = self.layout.pack(value) + ((value.get(self.tail) or b"") if self.tail else b"")
        elif self.integer is not None:
            try:
                payload = self.integer.pack(value)
            except (struct.error, OverflowError, TypeError) as exc:
                raise XfrmSpecError("encode", f"{self.name}: {exc}") from None
        else:
            payload = bytes(value)
        return pack_attr(self.kind, payload)

    def unpack(self, data: bytes, first: int, last: int, operation: str) -> Any:
        if last - first < self.min_size:
            raise XfrmParseError(operation, f"attribute {self.name} truncated ({last - first} bytes)")
        if self.layout is not None:
            return self.layout.unpack(data, first)  # the tail (key, bitmap) is never copied out
        if self.integer is not None:
            return self.integer.unpack_from(data, first)[0]
        return bytes(data[first:last])


# The XFRMA_* attributes ipsec-mesh sends or reads; others in a kernel message are skipped.
ATTRS = {
    codec.name: codec
    for codec in (
        AttrCodec(Attr.ALG_AUTH, "XFRMA_ALG_AUTH", "bytes"),
        AttrCodec(Attr.ALG_CRYPT, "XFRMA_ALG_CRYPT", "bytes"),
        AttrCodec(Attr.ENCAP, "XFRMA_ENCAP", ENCAP_TMPL),
        AttrCodec(Attr.TMPL, "XFRMA_TMPL", "bytes"),  # an array of xfrm_user_tmpl (TEMPLATE)
        AttrCodec(Attr.SEC_CTX, "XFRMA_SEC_CTX", "bytes"),
        AttrCodec(Attr.SRCADDR, "XFRMA_SRCADDR", "bytes"),
        AttrCodec(Attr.LASTUSED, "XFRMA_LASTUSED", "Q"),
        AttrCodec(Attr.POLICY_TYPE, "XFRMA_POLICY_TYPE", USERPOLICY_TYPE),
        AttrCodec(Attr.ALG_AEAD, "XFRMA_ALG_AEAD", ALGO_AEAD, tail="alg_key"),
        AttrCodec(Attr.ALG_AUTH_TRUNC, "XFRMA_ALG_AUTH_TRUNC", "bytes"),
        AttrCodec(Attr.MARK, "XFRMA_MARK", MARK),
        AttrCodec(Attr.TFCPAD, "XFRMA_TFCPAD", "I"),
        AttrCodec(Attr.REPLAY_ESN_VAL, "XFRMA_REPLAY_ESN_VAL", REPLAY_ESN, tail="bmp"),
        AttrCodec(Attr.SA_EXTRA_FLAGS, "XFRMA_SA_EXTRA_FLAGS", "I"),
        AttrCodec(Attr.SET_MARK, "XFRMA_SET_MARK", "I"),
        AttrCodec(Attr.SET_MARK_MASK, "XFRMA_SET_MARK_MASK", "I"),
        AttrCodec(Attr.IF_ID, "XFRMA_IF_ID", "I"),
    )
}
ATTRS_BY_KIND = {codec.kind: codec for codec in ATTRS.values()}
TEMPLATE = CompiledLayout(USER_TMPL)
POLICY_INFO = CompiledLayout(USERPOLICY_INFO)


class Message(dict[str, Any]):
    """One XFRM message body: the fixed struct's fields by name, plus `attrs`, a list of
    (XFRMA name, value) to send. A parsed message reads its attributes with get_attr()."""

    __slots__ = ("_attrs",)
    fields: ClassVar[Fields] = ()
    layout: ClassVar[CompiledLayout]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.layout = CompiledLayout(cls.fields)

    def __init__(self, values: Mapping[str, Any] | None = None):
        super().__init__(values or {})
        self._attrs: dict[str, Any] = {}

    def body(self) -> bytes:
        """The message without its netlink header (the channel stamps that)."""
        attrs: Iterable[tuple[str, Any]] = self.get("attrs") or ()
        fixed = self.layout.pack(self)
        return fixed + bytes(-len(fixed) % 4) + b"".join(ATTRS[name].pack(value) for name, value in attrs)

    @classmethod
    def parse(cls, data: bytes, operation: str) -> Message:
        """One whole netlink message (header included): every length checked, then read."""
        header(data, operation)
        size = cls.layout.size
        if len(data) < NLMSG_HDRLEN + size:
            raise XfrmParseError(operation, f"{cls.__name__} of {len(data)} bytes is truncated")
        message = cls(cls.layout.unpack(data, NLMSG_HDRLEN))
        for kind, first, last in iter_attrs(data, NLMSG_HDRLEN + align(size), len(data), operation):
            codec = ATTRS_BY_KIND.get(kind & 0x3FFF)
            if codec is not None and codec.name not in message._attrs:
                message._attrs[codec.name] = codec.unpack(data, first, last, operation)
        return message

    def get_attr(self, name: str, default: Any = None) -> Any:
        return self._attrs.get(name, default)


def _message(name: str, fields: Fields) -> type[Message]:
    return type(name, (Message,), {"__slots__": (), "fields": fields})


UserSaInfoMsg = _message("UserSaInfoMsg", USERSA_INFO)  # NEWSA, UPDSA, dump replies
UserSaIdMsg = _message("UserSaIdMsg", USERSA_ID)  # GETSA, DELSA
UserSpiInfoMsg = _message("UserSpiInfoMsg", USERSPI_INFO)  # ALLOCSPI
UserPolicyInfoMsg = _message("UserPolicyInfoMsg", USERPOLICY_INFO)  # NEWPOLICY, UPDPOLICY
UserPolicyIdMsg = _message("UserPolicyIdMsg", USERPOLICY_ID)  # GETPOLICY, DELPOLICY
UserAcquireMsg = _message("UserAcquireMsg", USER_ACQUIRE)
UserExpireMsg = _message("UserExpireMsg", USER_EXPIRE)
UserPolExpireMsg = _message("UserPolExpireMsg", USER_POLEXPIRE)
UserMappingMsg = _message("UserMappingMsg", USER_MAPPING)
EmptyMsg = _message("EmptyMsg", ())  # dump requests carry no body
