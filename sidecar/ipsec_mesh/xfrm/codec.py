"""Model <-> kernel message conversion, on the message classes of `structs`.

Requests: `sa_message`, `sa_id_message`, ... return an unencoded `structs.Message`;
the channel stamps the header and packs its body. Policy requests, sent by the
thousand, are packed straight to bytes (packed.py).
Replies: `decode_message` takes the bytes of one netlink message and checks every
length against its parent before reading (netlink.py), then `sa_from`,
`policy_from` turn the fields into the model.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from . import structs
from .constants import (
    UDP_ENCAP_ESPINUDP,
    XFRM_STATE_ESN,
    Action,
    Direction,
    Level,
    Mode,
)
from .errors import XfrmParseError, XfrmSpecError
from .model import (
    Aead,
    IPAddress,
    Lifetime,
    LifetimeCurrent,
    Mark,
    PolicyInfo,
    SaInfo,
    SaSpec,
    Selector,
    Template,
    UdpEncap,
    family_of,
)
from .ownership import is_owned_policy_tag, is_owned_reqid

CLASSIC_REPLAY_MAX = 32  # the u8 replay_window field's bitmap is 32 bits wide

TMPL_SIZE = structs.STRUCT_SIZES["xfrm_user_tmpl"]
ALGORITHM_ATTRS = ("XFRMA_ALG_AEAD", "XFRMA_ALG_CRYPT", "XFRMA_ALG_AUTH", "XFRMA_ALG_AUTH_TRUNC")


# ---------------------------------------------------------------- addresses


def pack_address(address: IPAddress | None) -> bytes:
    return address.packed if address is not None else b""  # '16s' zero-pads


def unpack_address(raw: bytes, family: int) -> IPAddress:
    if family == socket.AF_INET6:
        return ipaddress.IPv6Address(raw[:16])
    return ipaddress.IPv4Address(raw[:4])


# ---------------------------------------------------------------- encode pieces


def put_selector(message: dict[str, Any], prefix: str, selector: Selector | None, user: int = 0) -> None:
    if selector is None:
        return  # stays zero: the wildcard selector of per-socket policies
    message[prefix + "daddr"] = pack_address(selector.dst.network_address)
    message[prefix + "saddr"] = pack_address(selector.src.network_address)
    message[prefix + "dport"] = selector.dport
    message[prefix + "dport_mask"] = 0xFFFF if selector.dport else 0
    message[prefix + "sport"] = selector.sport
    message[prefix + "sport_mask"] = 0xFFFF if selector.sport else 0
    message[prefix + "family"] = selector.family
    message[prefix + "prefixlen_d"] = selector.dst.prefixlen
    message[prefix + "prefixlen_s"] = selector.src.prefixlen
    message[prefix + "proto"] = selector.proto
    message[prefix + "ifindex"] = selector.ifindex
    message[prefix + "user"] = user


def put_lifetime(message: dict[str, Any], prefix: str, lifetime: Lifetime) -> None:
    message[prefix + "soft_byte_limit"] = lifetime.soft_bytes
    message[prefix + "hard_byte_limit"] = lifetime.hard_bytes
    message[prefix + "soft_packet_limit"] = lifetime.soft_packets
    message[prefix + "hard_packet_limit"] = lifetime.hard_packets
    message[prefix + "soft_add_expires_seconds"] = lifetime.soft_add_seconds
    message[prefix + "hard_add_expires_seconds"] = lifetime.hard_add_seconds
    message[prefix + "soft_use_expires_seconds"] = lifetime.soft_use_seconds
    message[prefix + "hard_use_expires_seconds"] = lifetime.hard_use_seconds


def mark_attrs(mark: Mark | None) -> list[tuple[str, dict[str, int]]]:
    return [] if mark is None else [("XFRMA_MARK", {"v": mark.value, "m": mark.mask})]


def aead_attr(aead: Aead) -> tuple[str, dict[str, Any]]:
    return (
        "XFRMA_ALG_AEAD",
        {
            "alg_name": aead.name.encode(),
            "alg_key_len": len(aead.key) * 8,
            "alg_icv_len": aead.icv_bits,
            "alg_key": aead.key,
        },
    )


def replay_esn_attr(window: int) -> tuple[str, dict[str, Any]]:
    words = (window + 31) // 32
    value = {"bmp_len": words, "replay_window": window, "bmp": bytes(4 * words)}
    value.update(oseq=0, seq=0, oseq_hi=0, seq_hi=0)
    return ("XFRMA_REPLAY_ESN_VAL", value)


# ---------------------------------------------------------------- requests


def sa_message(spec: SaSpec, operation: str) -> structs.Message:
    """XFRM_MSG_NEWSA / UPDSA body: xfrm_usersa_info + attributes."""
    if spec.esn and spec.replay_window == 0:
        raise XfrmSpecError(operation, "ESN needs a replay window >= 1 (kernels before 6.10)")
    message = structs.UserSaInfoMsg()
    put_selector(message, "sel_", spec.effective_selector())
    message["id_daddr"] = pack_address(spec.dst)
    message["id_spi"] = spec.spi
    message["id_proto"] = spec.proto
    message["saddr"] = pack_address(spec.src)
    put_lifetime(message, "lft_", spec.lifetime)
    message["reqid"] = spec.reqid
    message["seq"] = spec.acquire_seq
    message["family"] = spec.family
    message["mode"] = spec.mode
    message["flags"] = spec.flags | (XFRM_STATE_ESN if spec.esn else 0)
    attrs: list[tuple[str, Any]] = [aead_attr(spec.aead)]
    if spec.esn or spec.replay_window > CLASSIC_REPLAY_MAX:
        attrs.append(replay_esn_attr(spec.replay_window))  # then the u8 field must stay 0
    else:
        message["replay_window"] = spec.replay_window
    if spec.encap is not None:
        encap = {"encap_type": UDP_ENCAP_ESPINUDP, "encap_oa": b""}
        encap.update(encap_sport=spec.encap.sport, encap_dport=spec.encap.dport)
        attrs.append(("XFRMA_ENCAP", encap))
    attrs += mark_attrs(spec.mark)
    if spec.output_mark is not None:
        attrs.append(("XFRMA_SET_MARK", spec.output_mark.value))
        attrs.append(("XFRMA_SET_MARK_MASK", spec.output_mark.mask))
    if spec.tfc_pad:
        attrs.append(("XFRMA_TFCPAD", spec.tfc_pad))
    if spec.extra_flags:
        attrs.append(("XFRMA_SA_EXTRA_FLAGS", spec.extra_flags))
    message["attrs"] = attrs
    return message


def sa_id_message(dst: IPAddress, spi: int, proto: int, mark: Mark | None = None) -> structs.Message:
    """XFRM_MSG_GETSA / DELSA body: xfrm_usersa_id."""
    message = structs.UserSaIdMsg()
    message["daddr"] = pack_address(dst)
    message["spi"] = spi
    message["family"] = family_of(dst)
    message["proto"] = proto
    message["attrs"] = mark_attrs(mark)
    return message


def spi_message(src: IPAddress, dst: IPAddress, proto: int, reqid: int, low: int, high: int) -> structs.Message:
    """XFRM_MSG_ALLOCSPI body: xfrm_userspi_info (a larval SA plus the SPI range)."""
    if not 0 < low <= high <= 0xFFFFFFFF:
        raise XfrmSpecError("alloc_spi", f"bad SPI range {low:#x}..{high:#x}")
    message = structs.UserSpiInfoMsg()
    message["id_daddr"] = pack_address(dst)
    message["id_proto"] = proto
    message["saddr"] = pack_address(src)
    put_lifetime(message, "lft_", Lifetime())
    message["reqid"] = reqid
    message["family"] = family_of(dst)
    message["mode"] = Mode.TRANSPORT
    message["min"] = low
    message["max"] = high
    return message


def dump_request(message_class: type[structs.Message]) -> structs.Message:
    """Dumps carry a zeroed body of the reply's struct, as the kernel expects."""
    message = message_class()
    if "lft_soft_byte_limit" in dict(message_class.fields):
        put_lifetime(message, "lft_", Lifetime(0, 0, 0, 0))
    message["attrs"] = []
    return message


def socket_policy_bytes(direction: Direction, family: int) -> bytes:
    """The xfrm_userpolicy_info for setsockopt(IP_XFRM_POLICY): allow everything."""
    policy = {"sel_family": family, "dir": direction, "action": Action.ALLOW}
    put_lifetime(policy, "lft_", Lifetime())
    return structs.POLICY_INFO.pack(policy)


# ---------------------------------------------------------------- replies


def decode_message(message_class: type[structs.Message], data: bytes, operation: str) -> structs.Message:
    """Bounds-check one netlink message of `message_class`, then decode it (XfrmParseError if malformed)."""
    message = message_class.parse(data, operation)
    raw = message.get_attr("XFRMA_TMPL")
    if raw is not None and len(raw) % TMPL_SIZE:
        raise XfrmParseError(operation, f"XFRMA_TMPL of {len(raw)} bytes is not whole templates")
    return message


# ---------------------------------------------------------------- decode pieces


def get_selector(message: structs.Message, prefix: str, fallback_family: int) -> tuple[Selector, int]:
    """The selector and its `user` field (our ownership tag when it is ours)."""
    family = message[prefix + "family"] or fallback_family
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise XfrmParseError("decode", f"selector family {family} is neither IPv4 nor IPv6")
    bits = 32 if family == socket.AF_INET else 128
    lengths = (message[prefix + "prefixlen_s"], message[prefix + "prefixlen_d"])
    if max(lengths) > bits:
        raise XfrmParseError("decode", f"selector prefix length {max(lengths)} > {bits}")
    src = unpack_address(message[prefix + "saddr"], family)
    dst = unpack_address(message[prefix + "daddr"], family)
    network = ipaddress.IPv4Network if family == socket.AF_INET else ipaddress.IPv6Network
    selector = Selector(
        network((int(src), lengths[0]), strict=False),  # an int address is not re-parsed
        network((int(dst), lengths[1]), strict=False),
        proto=message[prefix + "proto"],
        sport=message[prefix + "sport"] & message[prefix + "sport_mask"],
        dport=message[prefix + "dport"] & message[prefix + "dport_mask"],
        ifindex=message[prefix + "ifindex"],
    )
    return selector, message[prefix + "user"]


def get_lifetimes(message: structs.Message, prefix: str, current_prefix: str) -> tuple[Lifetime, LifetimeCurrent]:
    lifetime = Lifetime(*(message[prefix + name] for name, _ in structs.LIFETIME_CFG))
    current = LifetimeCurrent(
        *(message[current_prefix + name] for name, _ in structs.LIFETIME_CUR)
    )
    return lifetime, current


def get_mark(message: structs.Message) -> Mark | None:
    mark = message.get_attr("XFRMA_MARK")
    return None if mark is None else Mark(mark["v"], mark["m"])


def get_templates(message: structs.Message, family: int) -> tuple[Template, ...]:
    raw: bytes = message.get_attr("XFRMA_TMPL") or b""
    templates = []
    for offset in range(0, len(raw), TMPL_SIZE):
        element = structs.TEMPLATE.unpack(raw, offset)
        mode = element["mode"]
        tunnel = mode == Mode.TUNNEL
        tmpl_family = element["family"] or family
        templates.append(
            Template(
                reqid=element["reqid"],
                proto=element["id_proto"],
                mode=Mode(mode) if mode in Mode._value2member_map_ else mode,
                level=Level.USE if element["optional"] else Level.REQUIRED,
                src=unpack_address(element["saddr"], tmpl_family) if tunnel else None,
                dst=unpack_address(element["id_daddr"], tmpl_family) if tunnel else None,
                spi=element["id_spi"],
            )
        )
    return tuple(templates)


def policy_from(message: structs.Message, prefix: str = "") -> PolicyInfo:
    """A PolicyInfo from an xfrm_userpolicy_info (optionally nested under `prefix`)."""
    selector, user = get_selector(message, prefix + "sel_", 0)
    lifetime, current = get_lifetimes(message, prefix + "lft_", prefix + "cur_")
    direction, action = message[prefix + "dir"], message[prefix + "action"]
    if direction not in Direction._value2member_map_ or action not in Action._value2member_map_:
        raise XfrmParseError("decode", f"policy dir {direction} / action {action} unknown")
    return PolicyInfo(
        selector=selector,
        direction=Direction(direction),
        action=Action(action),
        priority=message[prefix + "priority"],
        index=message[prefix + "index"],
        templates=get_templates(message, selector.family),
        mark=get_mark(message),
        lifetime=lifetime,
        current=current,
        flags=message[prefix + "flags"],
        owned=is_owned_policy_tag(user),
    )


def sa_from(message: structs.Message) -> SaInfo:
    """An SaInfo from an xfrm_usersa_info message. The key is never copied out."""
    family = message["family"]
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise XfrmParseError("decode", f"SA family {family} is neither IPv4 nor IPv6")
    selector, _ = get_selector(message, "sel_", family)
    lifetime, current = get_lifetimes(message, "lft_", "cur_")
    aead = message.get_attr("XFRMA_ALG_AEAD")
    esn = message.get_attr("XFRMA_REPLAY_ESN_VAL")
    encap = message.get_attr("XFRMA_ENCAP")
    set_mark = message.get_attr("XFRMA_SET_MARK")
    mode = message["mode"]
    return SaInfo(
        src=unpack_address(message["saddr"], family),
        dst=unpack_address(message["id_daddr"], family),
        spi=message["id_spi"],
        proto=message["id_proto"],
        mode=Mode(mode) if mode in Mode._value2member_map_ else mode,
        reqid=message["reqid"],
        selector=selector,
        replay_window=esn["replay_window"] if esn else message["replay_window"],
        flags=message["flags"],
        esn=bool(message["flags"] & XFRM_STATE_ESN),
        aead_name=aead["alg_name"].rstrip(b"\0").decode(errors="replace") if aead else None,
        icv_bits=aead["alg_icv_len"] if aead else None,
        lifetime=lifetime,
        current=current,
        encap=UdpEncap(encap["encap_sport"], encap["encap_dport"]) if encap else None,
        mark=get_mark(message),
        output_mark=None
        if set_mark is None
        else Mark(set_mark, message.get_attr("XFRMA_SET_MARK_MASK", 0xFFFFFFFF)),
        tfc_pad=message.get_attr("XFRMA_TFCPAD", 0),
        larval=not any(message.get_attr(name) is not None for name in ALGORITHM_ATTRS),
        owned=is_owned_reqid(message["reqid"]),
    )

