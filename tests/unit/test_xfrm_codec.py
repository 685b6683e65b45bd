"""XFRM message encoding and decoding against hand-derived kernel layouts (no kernel)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_mesh.xfrm import (
    Action,
    Aead,
    Direction,
    Level,
    Lifetime,
    Mark,
    Mode,
    PolicySpec,
    SaSpec,
    Selector,
    Template,
    UdpEncap,
    XfrmError,
    XfrmParseError,
    XfrmSpecError,
    codec,
    owned_reqid,
    packed,
    structs,
)
from ipsec_mesh.xfrm.channel import Reply, error_of, split_messages
from ipsec_mesh.xfrm.constants import MsgType
from ipsec_mesh.xfrm.events import Acquire, Expire, Mapping, PolExpire, decode_event
from ipsec_mesh.xfrm.netlink import pack_message
from ipsec_mesh.xfrm.ownership import LARVAL_REQID, POLICY_TAG, REQID_BASE
from tests.unit import xfrm_layouts as L

KEY = bytes(range(1, 21))  # AES-128 key || salt
REQID = owned_reqid(7)


def encoded(message, msg_type: int, flags: int = 0, seq: int = 0) -> bytes:
    return pack_message(msg_type, flags, seq, message.body())


def test_struct_sizes_match_the_uapi_header():
    assert structs.STRUCT_SIZES == {
        "xfrm_selector": 56,
        "xfrm_id": 24,
        "xfrm_lifetime_cfg": 64,
        "xfrm_lifetime_cur": 32,
        "xfrm_usersa_info": 224,
        "xfrm_usersa_id": 24,
        "xfrm_userspi_info": 232,
        "xfrm_userpolicy_info": 168,
        "xfrm_userpolicy_id": 64,
        "xfrm_user_tmpl": 64,
        "xfrm_encap_tmpl": 24,
        "xfrm_user_acquire": 280,
        "xfrm_user_expire": 232,
        "xfrm_user_polexpire": 176,
        "xfrm_user_mapping": 64,
        "xfrm_mark": 8,
        "xfrm_replay_state_esn": 24,
        "xfrm_algo_aead": 72,
        "xfrm_userpolicy_type": 6,
    }
    # and the hand layouts agree
    assert len(L.selector()) == 56
    assert len(L.usersa_info(L.selector(), None, 1, 50, None, L.lifetime_cfg(), 0, 2, 0, 0, 0)) == 224
    assert len(L.userpolicy_info(L.selector(), L.lifetime_cfg(), 0, 0, 0, 0)) == 168
    assert len(L.user_tmpl()) == 64


def test_newsa_bytes_match_hand_layout():
    spec = SaSpec(
        "10.1.0.1", "10.1.0.2", 0xC0FFEE01, REQID, Aead("rfc4106(gcm(aes))", KEY),
        replay_window=128, esn=True,
        lifetime=Lifetime(soft_bytes=1000, hard_bytes=2000, soft_add_seconds=30, hard_add_seconds=60),
        encap=UdpEncap(4500, 4501), mark=Mark(0x10, 0xF0), output_mark=Mark(0x20, 0xFF), tfc_pad=64,
        acquire_seq=33,
    )
    got = encoded(codec.sa_message(spec, "add_sa"), MsgType.NEWSA, flags=5, seq=9)

    sel = L.selector("10.1.0.2", "10.1.0.1", plen_d=32, plen_s=32)
    lft = L.lifetime_cfg((1000, 2000, L.INF, L.INF, 30, 60, 0, 0))
    body = L.usersa_info(sel, "10.1.0.2", 0xC0FFEE01, 50, "10.1.0.1", lft, REQID, 2, 0, 0, 128, seq=33)
    aead = b"rfc4106(gcm(aes))".ljust(64, b"\0") + struct.pack("=II", 160, 128) + KEY
    esn = struct.pack("=6I", 4, 0, 0, 0, 0, 128) + bytes(16)
    encap = struct.pack("=H", 2) + struct.pack(">HH", 4500, 4501) + bytes(2) + bytes(16)
    attrs = (
        L.nla(18, aead) + L.nla(23, esn) + L.nla(4, encap) + L.nla(21, struct.pack("=II", 0x10, 0xF0))
        + L.nla(29, struct.pack("=I", 0x20)) + L.nla(30, struct.pack("=I", 0xFF))
        + L.nla(22, struct.pack("=I", 64))
    )
    assert got == L.nlmsg(MsgType.NEWSA, body + attrs, flags=5, seq=9)


def test_small_non_esn_window_uses_the_classic_field():
    spec = SaSpec("10.1.0.1", "10.1.0.2", 0x1000, REQID, Aead("rfc7539esp(chacha20,poly1305)", bytes(36)),
                  replay_window=32, esn=False)
    got = encoded(codec.sa_message(spec, "add_sa"), MsgType.NEWSA)
    assert got[16 + 215] == 32 and got[16 + 216] == 0  # replay_window, flags
    attrs = got[16 + 224:]
    assert struct.unpack_from("=HH", attrs, 0) == (4 + 72 + 36, 18)
    assert attrs[4:4 + 64] == b"rfc7539esp(chacha20,poly1305)".ljust(64, b"\0")
    assert struct.unpack_from("=II", attrs, 4 + 64) == (288, 128)
    assert len(attrs) == 4 + 72 + 36  # no ESN attribute


def test_esn_sets_flag_and_zero_window_is_refused():
    spec = SaSpec("fd00::1", "fd00::2", 0x1000, REQID, Aead("rfc4106(gcm(aes))", bytes(36)))
    got = encoded(codec.sa_message(spec, "add_sa"), MsgType.NEWSA)
    assert got[16 + 216] == 128 and got[16 + 215] == 0
    assert struct.unpack_from("=H", got, 16 + 212)[0] == 10  # AF_INET6
    assert got[16 + 56:16 + 72] == ipaddress.ip_address("fd00::2").packed
    with pytest.raises(XfrmSpecError):
        codec.sa_message(SaSpec("fd00::1", "fd00::2", 1, REQID, Aead("rfc4106(gcm(aes))", bytes(36)),
                                replay_window=0), "add_sa")


def test_policy_bytes_match_hand_layout_with_tag_template_and_mark():
    spec = PolicySpec(
        Selector("10.1.0.0/24", "10.2.0.0/16", proto=17, dport=53), Direction.OUT,
        priority=1000, templates=(Template(REQID, level=Level.USE),), mark=Mark(1, 3),
    )
    got = L.nlmsg(MsgType.NEWPOLICY, packed.policy_body(spec))
    sel = L.selector("10.2.0.0", "10.1.0.0", dport=53, plen_d=16, plen_s=24, proto=17, user=POLICY_TAG)
    body = L.userpolicy_info(sel, L.lifetime_cfg(), 1000, 0, 1, 0)
    attrs = L.nla(5, L.user_tmpl(reqid=REQID, optional=1)) + L.nla(21, struct.pack("=II", 1, 3))
    assert got == L.nlmsg(MsgType.NEWPOLICY, body + attrs)


def test_tunnel_template_carries_endpoints():
    template = Template(REQID, mode=Mode.TUNNEL, src="fd00::1", dst="fd00::2")
    raw = packed.template_bytes(template, 10)
    assert raw == L.user_tmpl(daddr="fd00::2", saddr="fd00::1", family=10, reqid=REQID, mode=1)


def test_policy_id_sa_id_and_spi_messages():
    sel = Selector("10.1.0.1/32", "10.1.0.2/32")
    got = L.nlmsg(MsgType.DELPOLICY, packed.policy_id_body(sel, Direction.IN))
    tagged = L.selector("10.1.0.2", "10.1.0.1", plen_d=32, plen_s=32, user=POLICY_TAG)
    assert got == L.nlmsg(MsgType.DELPOLICY, tagged + struct.pack("=IB3x", 0, 0))

    got = encoded(codec.sa_id_message(ipaddress.ip_address("10.1.0.2"), 0xABCD, 50), MsgType.DELSA)
    assert got == L.nlmsg(MsgType.DELSA, L.addr("10.1.0.2") + struct.pack(">I", 0xABCD) + struct.pack("=HBx", 2, 50))

    got = encoded(codec.spi_message(ipaddress.ip_address("10.1.0.1"), ipaddress.ip_address("10.1.0.2"),
                                    50, LARVAL_REQID, 0x100, 0x200), MsgType.ALLOCSPI)
    info = L.usersa_info(L.selector(family=0), "10.1.0.2", 0, 50, "10.1.0.1", L.lifetime_cfg(),
                         LARVAL_REQID, 2, 0, 0, 0)
    assert got == L.nlmsg(MsgType.ALLOCSPI, info + struct.pack("=II", 0x100, 0x200))


def test_socket_policy_is_an_allow_with_wildcard_selector():
    raw = codec.socket_policy_bytes(Direction.OUT, 10)
    assert raw == L.userpolicy_info(L.selector(family=10), L.lifetime_cfg(), 0, 0, 1, 0)


# ---------------------------------------------------------------- decoding


def sa_reply(attrs: bytes = b"", reqid=REQID, msg_type=MsgType.NEWSA) -> bytes:
    sel = L.selector("10.1.0.2", "10.1.0.1", plen_d=32, plen_s=32)
    body = L.usersa_info(sel, "10.1.0.2", 0x1234, 50, "10.1.0.1", L.lifetime_cfg(), reqid, 2, 0, 0,
                         128, cur=(100, 2, 1700000000, 0))
    return L.nlmsg(msg_type, body + attrs)


def test_decode_sa_reply_keeps_no_key():
    aead = b"rfc4106(gcm(aes))".ljust(64, b"\0") + struct.pack("=II", 160, 128) + KEY
    esn = struct.pack("=6I", 4, 5, 6, 0, 0, 128) + bytes(16)
    encap = struct.pack("=H", 2) + struct.pack(">HH", 4500, 4500) + bytes(18)
    raw = sa_reply(L.nla(18, aead) + L.nla(23, esn) + L.nla(4, encap) + L.nla(22, struct.pack("=I", 9)))
    message = codec.decode_message(structs.UserSaInfoMsg, raw, "test")
    info = codec.sa_from(message)
    assert (str(info.src), str(info.dst), info.spi, info.reqid) == ("10.1.0.1", "10.1.0.2", 0x1234, REQID)
    assert info.esn and info.replay_window == 128 and info.aead_name == "rfc4106(gcm(aes))"
    assert info.icv_bits == 128 and info.encap == UdpEncap(4500, 4500) and info.tfc_pad == 9
    assert info.current.bytes == 100 and info.current.packets == 2
    assert info.owned and not info.larval
    assert "alg_key" not in message.get_attr("XFRMA_ALG_AEAD")
    assert KEY.hex() not in repr(info) and repr(KEY) not in repr(info)


def test_decode_larval_and_foreign_sa():
    info = codec.sa_from(codec.decode_message(structs.UserSaInfoMsg, sa_reply(reqid=1), "test"))
    assert info.larval and not info.owned


def test_aead_and_spec_repr_hide_the_key():
    spec = SaSpec("10.1.0.1", "10.1.0.2", 1, REQID, Aead("rfc4106(gcm(aes))", KEY))
    assert "hidden" in repr(spec) and KEY.hex() not in repr(spec) and repr(KEY) not in repr(spec)
    with pytest.raises(XfrmSpecError):
        Aead("rfc4106(gcm(aes))", bytes(16))  # salt missing
    with pytest.raises(XfrmSpecError):
        Aead("cbc(aes)", bytes(20))


def policy_body(user=POLICY_TAG, direction=1, action=0):
    sel = L.selector("10.2.0.0", "10.1.0.0", plen_d=16, plen_s=24, proto=17, dport=53, user=user)
    return L.userpolicy_info(sel, L.lifetime_cfg(), 7, 0x21 | direction, direction, action)


def test_decode_policy_reply_and_ownership():
    attrs = L.nla(5, L.user_tmpl(reqid=REQID, optional=1)) + L.nla(21, struct.pack("=II", 5, 0xF))
    raw = L.nlmsg(MsgType.NEWPOLICY, policy_body() + attrs)
    info = codec.policy_from(codec.decode_message(structs.UserPolicyInfoMsg, raw, "test"))
    assert info.mark == Mark(5, 0xF)
    assert info.owned and info.direction == Direction.OUT and info.action == Action.ALLOW
    assert info.selector == Selector("10.1.0.0/24", "10.2.0.0/16", proto=17, dport=53)
    assert info.templates == (Template(REQID, level=Level.USE),)
    foreign = L.nlmsg(MsgType.NEWPOLICY, policy_body(user=0, action=1))
    info = codec.policy_from(codec.decode_message(structs.UserPolicyInfoMsg, foreign, "test"))
    assert not info.owned and info.action == Action.BLOCK and info.templates == () and info.mark is None


def test_decode_acquire_event():
    xfrm_id = L.addr("10.2.0.9") + struct.pack(">I", 0) + struct.pack("=B3x", 50)
    sel = L.selector("10.2.0.9", "10.1.0.5", dport=53, plen_d=32, plen_s=32, proto=17)
    body = xfrm_id + L.addr("10.1.0.5") + sel + policy_body() + struct.pack("=4I", 0, 0, 0, 77)
    raw = L.nlmsg(MsgType.ACQUIRE, body + L.nla(5, L.user_tmpl(reqid=REQID)))
    event = decode_event(MsgType.ACQUIRE, raw)
    assert isinstance(event, Acquire) and event.owned
    assert (str(event.src), str(event.dst), event.proto, event.seq) == ("10.1.0.5", "10.2.0.9", 50, 77)
    assert event.template == Template(REQID) and event.selector.dport == 53


def test_decode_expire_polexpire_mapping():
    expire = sa_reply()[16:] + struct.pack("=B7x", 1)
    event = decode_event(MsgType.EXPIRE, L.nlmsg(MsgType.EXPIRE, expire))
    assert isinstance(event, Expire) and event.hard and event.sa.spi == 0x1234 and event.owned

    event = decode_event(MsgType.POLEXPIRE, L.nlmsg(MsgType.POLEXPIRE, policy_body() + struct.pack("=B7x", 0)))
    assert isinstance(event, PolExpire) and not event.hard and event.owned

    said = L.addr("10.1.0.1") + struct.pack(">I", 0x55) + struct.pack("=HBx", 2, 50)
    body = said + struct.pack("=I", REQID) + L.addr("192.0.2.1") + L.addr("192.0.2.7") + struct.pack(">HH", 4500, 31000)
    event = decode_event(MsgType.MAPPING, L.nlmsg(MsgType.MAPPING, body))
    assert isinstance(event, Mapping) and event.owned
    assert (str(event.old_src), event.old_sport, str(event.new_src), event.new_sport) == (
        "192.0.2.1", 4500, "192.0.2.7", 31000)

    assert decode_event(MsgType.NEWSA, sa_reply()) is None  # not an event we follow


# ---------------------------------------------------------------- bounds checks


@pytest.mark.parametrize(
    "raw",
    [
        sa_reply()[:100],  # body shorter than xfrm_usersa_info
        sa_reply(L.nla(21, b"\0\0\0\0")),  # XFRMA_MARK shorter than xfrm_mark
        sa_reply(struct.pack("=HH", 200, 21) + bytes(8)),  # attribute length overruns
        sa_reply(struct.pack("=HH", 2, 21) + bytes(8)),  # attribute length below its header
        sa_reply(L.nla(5, bytes(65))),  # XFRMA_TMPL not a whole number of templates
        sa_reply(L.nla(18, bytes(40))),  # AEAD shorter than xfrm_algo_aead
        sa_reply()[:-4] + b"",  # netlink length says more than we have
    ],
)
def test_malformed_replies_raise_parse_error(raw):
    with pytest.raises(XfrmParseError):
        codec.decode_message(structs.UserSaInfoMsg, raw, "test")


def test_bad_family_and_prefix_raise_parse_error():
    bad_family = L.nlmsg(MsgType.NEWPOLICY, L.userpolicy_info(L.selector(family=99), L.lifetime_cfg(), 0, 0, 0, 0))
    with pytest.raises(XfrmParseError):
        codec.policy_from(codec.decode_message(structs.UserPolicyInfoMsg, bad_family, "test"))
    bad_prefix = L.nlmsg(MsgType.NEWPOLICY, L.userpolicy_info(L.selector(plen_d=33), L.lifetime_cfg(), 0, 0, 0, 0))
    with pytest.raises(XfrmParseError):
        codec.policy_from(codec.decode_message(structs.UserPolicyInfoMsg, bad_prefix, "test"))


def test_split_messages_checks_lengths():
    two = L.nlmsg(3, b"") + L.nlmsg(2, struct.pack("=i", 0) + bytes(16))
    assert [reply.msg_type for reply in split_messages(two, "t")] == [3, 2]
    with pytest.raises(XfrmParseError):
        list(split_messages(two[:-1], "t"))
    with pytest.raises(XfrmParseError):
        list(split_messages(struct.pack("=IHHII", 8, 3, 0, 0, 0), "t"))


def test_error_ack_maps_to_typed_error_with_kernel_text():
    text = b"Requested type not found\0"
    body = struct.pack("=i", -93) + L.nlmsg(0x10, b"") + L.nla(1, text)
    reply = Reply(2, 0x200, 1, L.nlmsg(2, body, flags=0x200))
    error = error_of(reply, "add_sa")
    assert isinstance(error, XfrmError) and error.errno == 93 and error.operation == "add_sa"
    assert "Requested type not found" in str(error) and "EPROTONOSUPPORT" in str(error)
    assert error_of(Reply(2, 0, 1, L.nlmsg(2, struct.pack("=i", 0) + bytes(16))), "x") is None


def test_owned_reqid_band():
    assert owned_reqid(1) == REQID_BASE | 1
    for bad in (0, 1 << 16, -1):
        with pytest.raises(XfrmSpecError):
            owned_reqid(bad)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(MsgType)), st.binary(max_size=600))
def test_garbage_only_raises_typed_errors(msg_type, payload):
    raw = L.nlmsg(msg_type, payload)
    try:
        for reply in split_messages(raw, "fuzz"):
            decode_event(reply.msg_type, reply.data)
            codec.sa_from(codec.decode_message(structs.UserSaInfoMsg, reply.data, "fuzz"))
    except XfrmError:
        pass


def test_priorities_prefer_specific_selectors_and_bypasses():
    from ipsec_mesh.xfrm import BYPASS_PRIORITY, neighbor_discovery_bypass, peer_priority

    host = peer_priority(Selector("10.0.0.1/32", "10.0.0.2/32"))
    port = peer_priority(Selector("10.0.0.1/32", "10.0.0.2/32", proto=17, dport=53))
    cidr = peer_priority(Selector("10.0.0.1/32", "10.2.0.0/16"))
    assert BYPASS_PRIORITY < port < host < cidr
    bypass = neighbor_discovery_bypass()
    assert {(p.selector.sport, p.direction) for p in bypass} == {
        (135, Direction.IN), (135, Direction.OUT), (136, Direction.IN), (136, Direction.OUT)}
    assert all(p.action == Action.ALLOW and p.selector.proto == 58 and not p.templates for p in bypass)
