"""The kernel's extended-ack text is read from an error ack, and a malformed chain costs only the text."""

import struct

from ipsec_mesh.xfrm.channel import Reply, extended_ack_text
from ipsec_mesh.xfrm.constants import NLM_F_ACK_TLVS, NLMSG_ERROR, NLMSGERR_ATTR_MSG

HEADER = struct.Struct("=IHHII")


def _attr(kind: int, payload: bytes) -> bytes:
    body = struct.pack("=HH", 4 + len(payload), kind) + payload
    return body + bytes(-len(body) % 4)


def _ack(attrs: bytes, flags: int = NLM_F_ACK_TLVS) -> Reply:
    echoed = HEADER.pack(16, 16, 0, 1, 0)  # the request's header (payload capped)
    body = struct.pack("=i", -22) + echoed + attrs
    return Reply(NLMSG_ERROR, flags, 1, HEADER.pack(16 + len(body), NLMSG_ERROR, flags, 1, 0) + body)


def test_the_message_attribute_is_found_after_others():
    attrs = _attr(3, b"\x01\x02\x03") + _attr(NLMSGERR_ATTR_MSG, b"Invalid SA\0")
    assert extended_ack_text(_ack(attrs)) == "Invalid SA"


def test_no_tlv_flag_or_a_malformed_chain_gives_no_text():
    good = _attr(NLMSGERR_ATTR_MSG, b"Invalid SA\0")
    assert extended_ack_text(_ack(good, flags=0)) == ""
    assert extended_ack_text(_ack(struct.pack("=HH", 200, NLMSGERR_ATTR_MSG) + b"abcd")) == ""  # overruns
    assert extended_ack_text(_ack(struct.pack("=HH", 2, 3) + good)) == ""  # length below the header
    assert extended_ack_text(_ack(b"")) == ""
