"""The XFRM layer's own netlink codec against pyroute2's, both ways, on generated messages (no kernel).

For every message class and every XFRMA_* attribute the layer knows: random field values and a random
set of attributes (fixed seed, bounded count) are encoded by ours and by pyroute2 (the reference
classes of tests/support/xfrm_reference.py); the bytes must be equal, each side must decode the
other's bytes to the values it was given, and the model built from either decode must be the same.
Error acks are compared the same way. tests/host/test_xfrm_netlink_host.py does it on real dumps.
"""

from __future__ import annotations

import random
import struct

import pytest

from ipsec_mesh.xfrm import XfrmParseError, XfrmSpecError, codec, structs
from ipsec_mesh.xfrm.channel import Reply, error_of
from ipsec_mesh.xfrm.constants import NLM_F_ACK_TLVS, NLMSG_ERROR, MsgType
from ipsec_mesh.xfrm.netlink import (
    MAX_NESTING,
    NLA_F_NESTED,
    pack_attr,
    pack_message,
    pack_nested,
    parse_attrs,
)
from tests.support import xfrm_reference as reference

SEED = 20261201
PER_CLASS = 150
CLASSES = {
    structs.UserSaInfoMsg: MsgType.NEWSA,
    structs.UserSaIdMsg: MsgType.DELSA,
    structs.UserSpiInfoMsg: MsgType.ALLOCSPI,
    structs.UserPolicyInfoMsg: MsgType.NEWPOLICY,
    structs.UserPolicyIdMsg: MsgType.DELPOLICY,
    structs.UserAcquireMsg: MsgType.ACQUIRE,
    structs.UserExpireMsg: MsgType.EXPIRE,
    structs.UserPolExpireMsg: MsgType.POLEXPIRE,
    structs.UserMappingMsg: MsgType.MAPPING,
}
TEMPLATE_SIZE = structs.STRUCT_SIZES["xfrm_user_tmpl"]
INTEGER_BITS = {"B": 8, "H": 16, "I": 32, "Q": 64}


def random_fields(rng: random.Random, fields: structs.Fields) -> dict:
    values = {}
    for name, fmt in fields:
        if fmt.endswith("x"):
            continue
        if fmt.endswith("s"):
            values[name] = rng.randbytes(int(fmt[:-1] or 0))
        elif fmt == "i":
            values[name] = rng.randrange(-(1 << 31), 1 << 31)
        else:
            values[name] = rng.getrandbits(INTEGER_BITS[fmt.lstrip(">")])
    return values


def random_attr(rng: random.Random, attr: structs.AttrCodec):
    if attr.layout is not None:
        fields = {"XFRMA_ALG_AEAD": structs.ALGO_AEAD, "XFRMA_REPLAY_ESN_VAL": structs.REPLAY_ESN,
                  "XFRMA_ENCAP": structs.ENCAP_TMPL, "XFRMA_MARK": structs.MARK,
                  "XFRMA_POLICY_TYPE": structs.USERPOLICY_TYPE}[attr.name]
        value = random_fields(rng, fields)
        if attr.tail:  # never empty: pyroute2's decoder fails on an empty trailing field, the kernel sends none
            value[attr.tail] = rng.randbytes(4 * rng.randrange(1, 12))
        return value
    if attr.integer is not None:
        return rng.getrandbits(8 * attr.integer.size)
    if attr.name == "XFRMA_TMPL":
        return rng.randbytes(TEMPLATE_SIZE * rng.randrange(0, 4))
    return rng.randbytes(rng.randrange(0, 80))


def random_message(rng: random.Random, message_class: type[structs.Message]) -> dict:
    values = random_fields(rng, message_class.fields)
    names = rng.sample(sorted(structs.ATTRS), rng.randrange(0, len(structs.ATTRS) + 1))
    values["attrs"] = [(name, random_attr(rng, structs.ATTRS[name])) for name in names]
    return values


def cases():
    rng = random.Random(SEED)
    for message_class, msg_type in CLASSES.items():
        for index in range(PER_CLASS):
            yield pytest.param(message_class, msg_type, random_message(rng, message_class),
                               id=f"{message_class.__name__}-{index}")


def without_tail(name: str, value):
    attr = structs.ATTRS[name]
    if attr.layout is not None:
        return {field: value[field] for field in attr.layout.names}
    return value


def reference_attr(decoded, name: str):
    value = decoded.get_attr(name)
    if isinstance(value, dict):
        return {field: value[field] for field in structs.ATTRS[name].layout.names}
    return value


def model(message_class, message):
    """What the XFRM layer builds from a decoded message, or the typed error it raises."""
    try:
        if message_class in (structs.UserSaInfoMsg, structs.UserExpireMsg):
            return codec.sa_from(message)
        if message_class in (structs.UserPolicyInfoMsg, structs.UserPolExpireMsg):
            return codec.policy_from(message)
        if message_class is structs.UserAcquireMsg:
            return codec.policy_from(message, "pol_"), codec.get_selector(message, "sel_", 0)
        return None
    except XfrmParseError as exc:
        return ("XfrmParseError", exc.detail)


@pytest.mark.parametrize(("message_class", "msg_type", "values"), list(cases()))
def test_ours_and_pyroute2_agree_both_ways(message_class, msg_type, values):
    seq = values.get("seq", 0) & 0xFFFFFFFF
    ours = pack_message(msg_type, 0x5, seq, message_class(values).body())
    theirs = reference.encode(message_class, values, msg_type, flags=0x5, seq=seq)
    assert ours == theirs

    decoded = codec.decode_message(message_class, theirs, "differential")  # ours reads pyroute2's bytes
    by_reference = reference.decode(message_class, ours)  # pyroute2 reads ours
    for name, fmt in message_class.fields:
        if not fmt.endswith("x"):
            assert decoded[name] == values[name] == by_reference[name], name
    for name, value in values["attrs"]:
        assert decoded.get_attr(name) == without_tail(name, value) == reference_attr(by_reference, name), name
    assert "alg_key" not in (decoded.get_attr("XFRMA_ALG_AEAD") or {})  # keys are never copied out
    assert model(message_class, decoded) == model(message_class, by_reference)


def test_every_message_class_and_attribute_was_generated():
    generated = [param.values for param in cases()]
    assert {values[0] for values in generated} == set(CLASSES)
    seen = {name for _, _, values in generated for name, _ in values["attrs"]}
    assert seen == set(structs.ATTRS)


def error_ack(code: int, text: bytes | None) -> bytes:
    request_header = struct.pack("=IHHII", 16, MsgType.NEWSA, 5, 77, 0)  # capped: NETLINK_CAP_ACK
    attrs = pack_attr(1, text + b"\0") if text is not None else b""
    flags = NLM_F_ACK_TLVS if text is not None else 0
    return pack_message(NLMSG_ERROR, flags, 77, struct.pack("=i", code) + request_header + attrs)


def test_error_acks_agree_with_pyroute2():
    rng = random.Random(SEED)
    for _ in range(300):
        code = -rng.randrange(0, 134)
        text = rng.choice([None, b"", bytes(rng.choices(range(32, 127), k=rng.randrange(1, 60)))])
        data = error_ack(code, text)
        error = error_of(Reply(NLMSG_ERROR, NLM_F_ACK_TLVS if text is not None else 0, 77, data), "differential")
        theirs = reference.decoded(reference.nlmsgerr, data)
        if code == 0:
            assert error is None and theirs["error"] == 0
            continue
        assert error is not None and error.errno == -theirs["error"]
        assert error.detail == (theirs.get_attr("NLMSGERR_ATTR_MSG") or "")


def test_nested_attributes_are_parsed_and_bounded():
    inner = pack_attr(2, struct.pack("=I", 1400)) + pack_attr(7, b"xy")
    data = pack_attr(1, b"a") + pack_nested(8, inner)
    assert parse_attrs(data, 0, len(data), "t", nested={8}) == {1: b"a", 8: {2: struct.pack("=I", 1400), 7: b"xy"}}
    assert parse_attrs(data, 0, len(data), "t")[8] == inner  # not asked to nest: the raw chain
    deep = b""
    for _ in range(MAX_NESTING + 2):
        deep = pack_attr(3 | NLA_F_NESTED, deep)
    with pytest.raises(XfrmParseError):
        parse_attrs(deep, 0, len(deep), "t", nested={3})


@pytest.mark.parametrize("data", [
    struct.pack("=HH", 3, 1) + bytes(4),  # below the header
    struct.pack("=HH", 12, 1) + bytes(4),  # past its parent
    pack_attr(1, b"abcd") + b"\0\0",  # stray bytes after the last attribute
    pack_nested(8, struct.pack("=HH", 9, 2) + bytes(4)),  # a nested child past the nest
])
def test_malformed_attribute_chains_raise_the_typed_error(data):
    with pytest.raises(XfrmParseError):
        parse_attrs(data, 0, len(data), "t", nested={8})


@pytest.mark.parametrize("values", [{"id_spi": 1 << 32}, {"id_spi": -1}, {"sel_dport": 1 << 16}, {"family": "x"}])
def test_values_outside_their_kernel_field_are_a_spec_error(values):
    with pytest.raises(XfrmSpecError):
        structs.UserSaInfoMsg(values).body()
    with pytest.raises(XfrmSpecError):
        pack_attr(1, bytes(0x10000))
