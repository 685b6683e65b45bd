"""XFRM kernel structs as pyroute2 `nlmsg`/`nla` classes.

pyroute2 packs `fields` one after another with no implicit alignment, so the C
padding of include/uapi/linux/xfrm.h is spelled out as `x` pad fields. Nested
structs are flattened with a name prefix (`sel_daddr`, `lft_soft_byte_limit`).
`STRUCT_SIZES` is checked against the sizes the header implies (x86-64) by the
unit tests: xfrm_usersa_info 224, xfrm_userpolicy_info 168, ...

Byte order: ports and SPIs are big-endian (`>H`, `>I`), all else host order.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pyroute2.netlink import nla, nlmsg, nlmsg_base, nlmsg_decoder_generic, nlmsg_encoder_generic

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
MARK: Fields = (("v", "I"), ("m", "I"))  # kernel names; pyroute2 treats a "value" field specially
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


def _swap16(value: int) -> int:
    return ((value & 0xFF) << 8) | (value >> 8)


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
        self.defaults = [b"" if fmt.endswith("s") else 0 for name, fmt in fields if not fmt.endswith("x")]


if TYPE_CHECKING:  # to the type checker the mixin is what it mixes into: a dict of fields
    _FieldDict = dict[str, Any]
else:
    _FieldDict = object


class CompiledFields(_FieldDict):
    """Mixin replacing pyroute2's per-field codec for fixed-layout structs.

    pyroute2 packs field by field through its generic `get()`, about 0.5 ms
    for an xfrm_userpolicy_info; one `Struct.pack_into` is ~50x faster, which
    matters for thousands of peers. Header and NLA handling stay pyroute2's.
    """

    __slots__ = ()
    _layouts: dict[type, CompiledLayout] = {}
    if TYPE_CHECKING:  # provided by the pyroute2 message class this is mixed into
        fields: ClassVar[Fields]
        align: ClassVar[int]
        nla_map: ClassVar[tuple[tuple[int, str, str], ...]]
        data: bytearray

        def __init__(self, data: bytes | None = None, offset: int = 0, length: int | None = None) -> None: ...
        def decode(self) -> None: ...
        def decode_nlas(self, offset: int) -> None: ...

    @classmethod
    def layout(cls) -> CompiledLayout:
        compiled = CompiledFields._layouts.get(cls)
        if compiled is None:
            compiled = CompiledFields._layouts[cls] = CompiledLayout(cls.fields)
        return compiled

    def __getitem__(self, key: str) -> Any:
        try:  # decoded fields are plain dict entries: skip pyroute2's lookup logic
            return dict.__getitem__(self, key)
        except KeyError:
            return super().__getitem__(key)

    def ft_encode(self, offset: int) -> tuple[int, int]:
        layout = self.layout()
        values: list[Any] = []
        for name, swap, default in zip(layout.names, layout.swaps, layout.defaults, strict=True):
            value: Any = dict.get(self, name)
            value = default if value is None else value
            values.append(swap(value) if swap else value)
        self.data.extend(bytes(layout.struct.size))
        layout.struct.pack_into(self.data, offset, *values)
        offset += layout.struct.size
        diff = -offset % self.align if self.align else 0
        self.data.extend(bytes(diff))
        return offset + diff, diff

    def ft_decode(self, offset: int) -> None:
        layout = self.layout()
        values = layout.struct.unpack_from(self.data, offset)
        for name, swap, value in zip(layout.names, layout.swaps, values, strict=True):
            dict.__setitem__(self, name, swap(value) if swap else value)
        if self.nla_map:
            self.decode_nlas((offset + layout.struct.size + 3) & ~3)
        else:
            dict.pop(self, "attrs", None)


class XfrmStruct(CompiledFields, nlmsg_base, nlmsg_encoder_generic, nlmsg_decoder_generic):
    """A bare struct (no netlink header): an element of XFRMA_TMPL, or the
    xfrm_userpolicy_info passed to setsockopt(IP_XFRM_POLICY)."""

    __slots__ = ()
    align = 0


class UserTmpl(XfrmStruct):
    __slots__ = ()
    fields = USER_TMPL


class UserPolicyInfo(XfrmStruct):
    __slots__ = ()
    fields = USERPOLICY_INFO


class xfrm_attrs:
    """Mixin: the XFRMA_* attribute map shared by every XFRM message."""

    __slots__ = ()
    nla_map = (
        (1, "XFRMA_ALG_AUTH", "cdata"),
        (2, "XFRMA_ALG_CRYPT", "cdata"),
        (4, "XFRMA_ENCAP", "xfrm_encap_tmpl"),
        (5, "XFRMA_TMPL", "cdata"),  # an array of xfrm_user_tmpl, decoded by UserTmpl
        (8, "XFRMA_SEC_CTX", "cdata"),
        (13, "XFRMA_SRCADDR", "cdata"),
        (15, "XFRMA_LASTUSED", "uint64"),
        (16, "XFRMA_POLICY_TYPE", "xfrm_userpolicy_type"),
        (18, "XFRMA_ALG_AEAD", "xfrm_algo_aead"),
        (20, "XFRMA_ALG_AUTH_TRUNC", "cdata"),
        (21, "XFRMA_MARK", "xfrm_mark"),
        (22, "XFRMA_TFCPAD", "uint32"),
        (23, "XFRMA_REPLAY_ESN_VAL", "xfrm_replay_state_esn"),
        (24, "XFRMA_SA_EXTRA_FLAGS", "uint32"),
        (29, "XFRMA_SET_MARK", "uint32"),
        (30, "XFRMA_SET_MARK_MASK", "uint32"),
        (31, "XFRMA_IF_ID", "uint32"),
    )

    class xfrm_encap_tmpl(nla):
        __slots__ = ()
        fields = ENCAP_TMPL

    class xfrm_userpolicy_type(nla):
        __slots__ = ()
        fields = USERPOLICY_TYPE

    class xfrm_mark(nla):
        __slots__ = ()
        fields = MARK

    class xfrm_replay_state_esn(nla):
        """Followed by bmp_len 32-bit words of bitmap (zero when we send it)."""

        __slots__ = ()
        fields = REPLAY_ESN + (("bmp", "s"),)

        def decode(self) -> None:
            nla.decode(self)
            self.pop("bmp", None)  # the bitmap is kernel bookkeeping we never read

    class xfrm_algo_aead(nla):
        """Followed by the key; on decode the key is dropped, never kept."""

        __slots__ = ()
        fields = ALGO_AEAD + (("alg_key", "s"),)

        def decode(self) -> None:
            nla.decode(self)
            self.pop("alg_key", None)


def _message(name: str, fields: Fields) -> type[nlmsg]:
    return type(name, (CompiledFields, xfrm_attrs, nlmsg), {"__slots__": (), "fields": fields})


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
