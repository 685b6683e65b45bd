"""The XFRM messages as pyroute2 `nlmsg`/`nla` classes: the reference that the XFRM layer's own
netlink codec (ipsec_mesh.xfrm.netlink, structs) is compared with, both ways
(tests/unit/test_xfrm_netlink_differential.py, tests/host/test_xfrm_netlink_host.py).

The sidecar used these classes until issue 14 removed pyroute2 from it; they use pyroute2's own
generic field and attribute codec, so the comparison shares nothing with the code under test but
the field tables of structs.py (which tests/unit/test_xfrm_codec.py checks against hand layouts).
"""

from __future__ import annotations

from pyroute2.netlink import nla, nlmsg, nlmsg_base, nlmsg_decoder_generic, nlmsg_encoder_generic, nlmsgerr
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from ipsec_mesh.xfrm import structs


class xfrm_attrs:
    """The XFRMA_* attribute map shared by every XFRM message."""

    nla_map = (
        (1, "XFRMA_ALG_AUTH", "cdata"),
        (2, "XFRMA_ALG_CRYPT", "cdata"),
        (4, "XFRMA_ENCAP", "xfrm_encap_tmpl"),
        (5, "XFRMA_TMPL", "cdata"),
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
        fields = structs.ENCAP_TMPL

    class xfrm_userpolicy_type(nla):
        fields = structs.USERPOLICY_TYPE

    class xfrm_mark(nla):
        fields = structs.MARK

    class xfrm_replay_state_esn(nla):
        fields = structs.REPLAY_ESN + (("bmp", "s"),)

    class xfrm_algo_aead(nla):
        fields = structs.ALGO_AEAD + (("alg_key", "s"),)


class UserTmpl(nlmsg_base, nlmsg_encoder_generic, nlmsg_decoder_generic):
    """A bare xfrm_user_tmpl (no netlink header): an element of XFRMA_TMPL."""

    align = 0
    fields = structs.USER_TMPL


def _message(name: str, fields: structs.Fields) -> type[nlmsg]:
    return type(name, (xfrm_attrs, nlmsg), {"fields": fields})


CLASSES = {
    "UserSaInfoMsg": _message("UserSaInfoMsg", structs.USERSA_INFO),
    "UserSaIdMsg": _message("UserSaIdMsg", structs.USERSA_ID),
    "UserSpiInfoMsg": _message("UserSpiInfoMsg", structs.USERSPI_INFO),
    "UserPolicyInfoMsg": _message("UserPolicyInfoMsg", structs.USERPOLICY_INFO),
    "UserPolicyIdMsg": _message("UserPolicyIdMsg", structs.USERPOLICY_ID),
    "UserAcquireMsg": _message("UserAcquireMsg", structs.USER_ACQUIRE),
    "UserExpireMsg": _message("UserExpireMsg", structs.USER_EXPIRE),
    "UserPolExpireMsg": _message("UserPolExpireMsg", structs.USER_POLEXPIRE),
    "UserMappingMsg": _message("UserMappingMsg", structs.USER_MAPPING),
}


def reference_class(message_class: type[structs.Message]) -> type[nlmsg]:
    return CLASSES[message_class.__name__]


def encode(message_class: type[structs.Message], values: dict, msg_type: int, flags: int = 0, seq: int = 0) -> bytes:
    """A whole message encoded by pyroute2 from field values and `attrs` (as structs.Message takes them)."""
    message = reference_class(message_class)()
    for name, fmt in message_class.fields:
        if not fmt.endswith("x"):
            message[name] = values.get(name, b"" if fmt.endswith("s") else 0)
    message["attrs"] = list(values.get("attrs", ()))
    message["header"] = {"type": msg_type, "flags": flags, "sequence_number": seq, "pid": 0}
    message.encode()
    return bytes(message.data)


def decoded(pyroute2_class: type[nlmsg_base], data: bytes) -> nlmsg_base:
    """`data` decoded by pyroute2's class (nlmsgerr, rtmsg, ifinfmsg, or a class of CLASSES)."""
    message = pyroute2_class(data)
    message.decode()
    return message


def decode(message_class: type[structs.Message], data: bytes) -> nlmsg_base:
    return decoded(reference_class(message_class), data)


def known_attrs(message: nlmsg_base) -> dict:
    """The attributes structs.ATTRS knows, as structs.Message.get_attr gives them (structs without their
    variable tail: keys and replay bitmaps are never copied out by ours)."""
    values = {}
    for name, attr in structs.ATTRS.items():
        value = message.get_attr(name)
        if isinstance(value, dict):
            value = {field: value[field] for field in attr.layout.names}
        if value is not None:
            values[name] = value
    return values


def assert_decoded_alike(message_class: type[structs.Message], data: bytes) -> structs.Message:
    """`data` (one whole message) decoded by ours and by pyroute2 to the same fields and attributes."""
    ours, theirs = message_class.parse(data, "reference"), decode(message_class, data)
    assert dict(ours) == {name: theirs[name] for name in ours}, message_class.__name__
    mine = {name: ours.get_attr(name) for name in structs.ATTRS if ours.get_attr(name) is not None}
    assert mine == known_attrs(theirs), message_class.__name__
    return ours


__all__ = ["CLASSES", "UserTmpl", "assert_decoded_alike", "decode", "decoded", "encode", "ifinfmsg", "known_attrs",
           "nlmsgerr", "reference_class", "rtmsg"]
