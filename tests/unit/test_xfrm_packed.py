"""Policy requests packed by `xfrm.packed` equal pyroute2's encoding, byte for byte (no kernel).

The reference below builds the same request the way the XFRM layer did before
packed.py existed: pyroute2 message classes (tests/support/xfrm_reference.py) filled
field by field and encoded by pyroute2, NLA chain included.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_mesh.xfrm import (
    Action,
    Direction,
    Level,
    Lifetime,
    Mark,
    Mode,
    PolicySpec,
    Selector,
    Template,
    XfrmSpecError,
    codec,
    owned_reqid,
    packed,
    structs,
)
from ipsec_mesh.xfrm.constants import MsgType
from ipsec_mesh.xfrm.model import family_of
from ipsec_mesh.xfrm.netlink import pack_message
from ipsec_mesh.xfrm.ownership import POLICY_TAG
from tests.support import xfrm_reference as reference
from tests.support.xfrm_reference import UserTmpl


def reference_template(template: Template, family: int) -> bytes:
    element = UserTmpl()
    element["id_daddr"] = codec.pack_address(template.dst)
    element["id_spi"] = template.spi
    element["id_proto"] = template.proto
    element["family"] = family_of(template.dst) if template.dst is not None else family
    element["saddr"] = codec.pack_address(template.src)
    element["reqid"] = template.reqid
    element["mode"] = template.mode
    element["optional"] = int(template.level == Level.USE)
    element["aalgos"] = element["ealgos"] = element["calgos"] = 0xFFFFFFFF
    element.encode()
    return bytes(element.data)


def mark_attrs(mark: Mark | None) -> list:
    return [] if mark is None else [("XFRMA_MARK", {"v": mark.value, "m": mark.mask})]


def reference_policy(spec: PolicySpec, msg_type: int) -> bytes:
    message = {}
    codec.put_selector(message, "sel_", spec.selector, user=POLICY_TAG)
    codec.put_lifetime(message, "lft_", spec.lifetime)
    message["priority"] = spec.priority
    message["index"] = spec.index
    message["dir"] = spec.direction
    message["action"] = spec.action
    message["flags"] = spec.flags
    attrs = []
    if spec.templates:
        family = spec.selector.family
        attrs.append(("XFRMA_TMPL", b"".join(reference_template(t, family) for t in spec.templates)))
    message["attrs"] = attrs + mark_attrs(spec.mark)
    return reference.encode(structs.UserPolicyInfoMsg, message, msg_type)


def reference_policy_id(selector, direction, mark, index) -> bytes:
    message = {}
    if selector is not None:
        codec.put_selector(message, "sel_", selector, user=POLICY_TAG)
    message["index"] = index
    message["dir"] = direction
    message["attrs"] = mark_attrs(mark)
    return reference.encode(structs.UserPolicyIdMsg, message, MsgType.DELPOLICY)


def with_header(msg_type: int, body: bytes) -> bytes:
    return pack_message(msg_type, 0, 0, body)


u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
ports = st.integers(0, 0xFFFF)


@st.composite
def selectors(draw) -> Selector:
    version = draw(st.sampled_from((4, 6)))
    bits = 32 if version == 4 else 128
    network = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network

    def prefix():
        return network((draw(st.integers(0, 2**bits - 1)), draw(st.integers(0, bits))), strict=False)

    return Selector(prefix(), prefix(), proto=draw(st.integers(0, 255)), sport=draw(ports),
                    dport=draw(ports), ifindex=draw(st.integers(-(2**31), 2**31 - 1)))


@st.composite
def templates(draw, family_version: int) -> Template:
    mode = draw(st.sampled_from((Mode.TRANSPORT, Mode.TUNNEL)))
    ends = {}
    if mode == Mode.TUNNEL:
        make = ipaddress.IPv4Address if draw(st.booleans()) else ipaddress.IPv6Address
        bits = 32 if make is ipaddress.IPv4Address else 128
        ends = {"src": make(draw(st.integers(0, 2**bits - 1))), "dst": make(draw(st.integers(0, 2**bits - 1)))}
    return Template(owned_reqid(draw(st.integers(1, 0xFFFF))), proto=draw(st.sampled_from((50, 51))),
                    mode=mode, level=draw(st.sampled_from(tuple(Level))), spi=draw(u32), **ends)


@st.composite
def policies(draw) -> PolicySpec:
    selector = draw(selectors())
    direction = draw(st.sampled_from(tuple(Direction)))
    index = draw(st.one_of(st.just(0), st.integers(1, 0x1FFFFFFF).map(lambda n: (n << 3) | direction)))
    return PolicySpec(
        selector, direction, action=draw(st.sampled_from(tuple(Action))), priority=draw(u32),
        templates=tuple(draw(st.lists(templates(selector.src.version), max_size=3))),
        mark=draw(st.one_of(st.none(), st.builds(Mark, u32, u32))), index=index,
        lifetime=Lifetime(*(draw(u64) for _ in range(8))), flags=draw(st.integers(0, 255)),
    )


@settings(max_examples=400, deadline=None)
@given(policies(), st.sampled_from((MsgType.NEWPOLICY, MsgType.UPDPOLICY)))
def test_policy_body_equals_pyroute2_encoding(spec, msg_type):
    assert with_header(msg_type, packed.policy_body(spec)) == reference_policy(spec, msg_type)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), selectors()), st.sampled_from(tuple(Direction)),
       st.one_of(st.none(), st.builds(Mark, u32, u32)), u32)
def test_policy_id_body_equals_pyroute2_encoding(selector, direction, mark, index):
    body = packed.policy_id_body(selector, direction, mark, index)
    assert with_header(MsgType.DELPOLICY, body) == reference_policy_id(selector, direction, mark, index)


def test_the_usual_peer_policy_is_one_nla_after_the_fixed_part():
    spec = PolicySpec(Selector.host_pair("10.0.0.1", "10.64.0.1"), Direction.OUT, priority=2000,
                      templates=(Template(owned_reqid(1)),))
    body = packed.policy_body(spec)
    assert len(body) == structs.STRUCT_SIZES["xfrm_userpolicy_info"] + 4 + structs.STRUCT_SIZES["xfrm_user_tmpl"]
    assert struct.unpack_from("=HH", body, 168) == (68, 5)  # XFRMA_TMPL


@pytest.mark.parametrize("bad", [
    {"priority_template_reqid": 1 << 32},
    {"lifetime": Lifetime(soft_bytes=1 << 64)},
    {"mark": Mark(1 << 32)},
    {"flags": 256},
])
def test_a_value_outside_its_field_is_a_typed_error(bad):
    reqid = bad.pop("priority_template_reqid", owned_reqid(1))
    spec = PolicySpec(Selector.host_pair("10.0.0.1", "10.0.0.2"), Direction.IN,
                      templates=(Template(reqid),), **bad)
    with pytest.raises(XfrmSpecError):
        packed.policy_body(spec)
    with pytest.raises(XfrmSpecError):
        packed.policy_id_body(None, Direction.IN, Mark(-1))
