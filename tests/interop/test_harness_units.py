"""In-memory tests of the harness pieces that need neither root nor charon."""
from __future__ import annotations

import ctypes
import shutil
import struct

import pytest

from .harness.capture import NOTIFY_COOKIE, summarize
from .harness.charon import merge
from .harness.half_open import FLAG_RESPONSE, HalfOpenError, build_ike_sa_init, parse_response
from .harness.shim import build_shim
from .harness.swanctl import Child, Connection, IkeSa, render
from .harness.vici import KEY_VALUE, LIST_ITEM, SECTION_END, SECTION_START, ViciError, decode, encode


def test_vici_round_trip_nested_sections_and_lists():
    message = {"ike": "conn", "timeout": "1000",
               "conn": {"local-ts": ["10.0.0.1/32", "fd00::1/128"], "child-sas": {}}}
    assert decode(encode(message)) == message


def test_vici_encodes_booleans_and_numbers_as_text():
    assert decode(encode({"force": True, "reauth": False, "timeout": -1})) == {
        "force": "yes", "reauth": "no", "timeout": "-1"}


@pytest.mark.parametrize("data", [
    bytes([KEY_VALUE, 3]) + b"ke",                           # name runs past the end
    bytes([KEY_VALUE, 1]) + b"k" + struct.pack("!H", 9) + b"v",  # value runs past the end
    bytes([SECTION_START, 1]) + b"s",                        # section never closed
    bytes([SECTION_END]),                                    # close without open
    bytes([LIST_ITEM]) + struct.pack("!H", 0),               # item outside a list
    bytes([99]),                                             # unknown element type
])
def test_vici_decode_rejects_malformed(data):
    with pytest.raises(ViciError):
        decode(data)


def test_render_quotes_values_and_skips_none():
    text = render({"connections": {"c": {"local": {"id": 'CN=a "b"', "certs": None},
                                         "encap": True, "local_addrs": ["10.0.0.1", "fd00::1"]}}})
    assert 'id = "CN=a \\"b\\""' in text
    assert "certs" not in text
    assert 'encap = yes' in text and 'local_addrs = "10.0.0.1,fd00::1"' in text


def test_connection_tree_mirrors_fields_and_options():
    conn = Connection(local_addrs="10.0.0.1", remote_addrs="10.0.0.2", local_id="a",
                      remote_id="b", auth="pubkey", local_certs="a.pem", encap=True,
                      childless="force", options={"unique": "never"},
                      children={"c": Child(mode="transport", start_action="trap",
                                           options={"updown": "/bin/true"})})
    tree = conn.to_tree()
    assert tree["local"] == {"auth": "pubkey", "id": "a", "certs": "a.pem"}
    assert tree["remote"] == {"auth": "pubkey", "id": "b"}
    assert (tree["encap"], tree["childless"], tree["unique"]) == ("yes", "force", "never")
    assert tree["children"]["c"]["mode"] == "transport"
    assert tree["children"]["c"]["updown"] == "/bin/true"


def test_merge_keeps_nested_defaults():
    base = {"plugins": {"vici": {"socket": "s"}}, "port": 500}
    merged = merge(base, {"plugins": {"kernel-netlink": {"mtu": 1400}}, "port": 501})
    assert merged == {"plugins": {"vici": {"socket": "s"}, "kernel-netlink": {"mtu": 1400}},
                      "port": 501}
    assert base["port"] == 500


def test_ike_sa_from_vici_list_sa_event():
    raw = {"uniqueid": "3", "state": "ESTABLISHED", "initiator": "yes",
           "local-host": "10.0.0.1", "local-port": "4500", "remote-host": "10.0.0.2",
           "remote-port": "4500", "local-id": "a", "remote-id": "b",
           "initiator-spi": "01", "responder-spi": "02", "nat-remote": "yes",
           "nat-any": "yes", "encr-alg": "AES_GCM_16",
           "child-sas": {"c-1": {"name": "c", "uniqueid": "1", "state": "REKEYED",
                                 "spi-in": "aa"},
                         "c-2": {"name": "c", "uniqueid": "2", "state": "INSTALLED",
                                 "mode": "TRANSPORT", "encap": "yes", "spi-in": "bb",
                                 "local-ts": ["10.0.0.1/32"]}}}
    sa = IkeSa.from_vici("conn", raw)
    assert (sa.initiator, sa.local_port, sa.nat_remote, sa.nat_local) == (True, 4500, True,
                                                                          False)
    child = sa.child("c")
    assert (child.uniqueid, child.encap, child.mode, child.local_ts) == (
        "2", True, "TRANSPORT", ["10.0.0.1/32"])
    assert sa.child("other") is None


def test_summarize_tshark_layers():
    layers = {
        "frame": {"frame.number": "7"},
        "ip": {"ip.src": "10.0.0.2", "ip.dst": "10.0.0.1"},
        "udp": {"udp.srcport": "500", "udp.dstport": "500"},
        "isakmp": {"isakmp.ispi": "aa:bb", "isakmp.rspi": "00:00",
                   "isakmp.exchangetype": "34", "isakmp.messageid": "0x00000000",
                   "isakmp.flags_tree": {"isakmp.flag_i": "0", "isakmp.flag_r": "1"},
                   "isakmp.typepayload": "41",
                   "isakmp.typepayload_tree": {"isakmp.notify.msgtype": str(NOTIFY_COOKIE)}},
    }
    message = summarize(layers)
    assert message.exchange == "IKE_SA_INIT" and message.response and not message.initiator
    assert (message.frame, message.spi_i, message.payloads) == (7, "aabb", [41])
    assert message.notifies == [NOTIFY_COOKIE] and not message.non_esp_marker
    assert summarize({"frame": {}}) is None


def _as_response(message: bytes) -> bytes:
    return message[:19] + bytes([FLAG_RESPONSE]) + message[20:]


def test_half_open_init_is_well_formed():
    spi = bytes(range(8))
    message = build_ike_sa_init(spi)
    assert struct.unpack_from("!I", message, 24)[0] == len(message)
    parsed = parse_response(_as_response(message), spi)
    assert parsed.payloads == [33, 34, 40] and parsed.notifies == []


@pytest.mark.parametrize("mangle", [
    lambda m: m[:20],                                   # shorter than a header
    lambda m: bytes(8) + m[8:],                         # someone else's SPI
    lambda m: m[:28] + b"\x22\x00\x00\x02" + m[32:],    # payload length below 4
    lambda m: m[:28] + b"\x22\x00\xff\xff" + m[32:],    # payload past the end
])
def test_half_open_rejects_bad_responses(mangle):
    spi = bytes(range(8))
    with pytest.raises(HalfOpenError):
        parse_response(mangle(_as_response(build_ike_sa_init(spi))), spi)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_shim_builds_once_and_exports_the_wrappers(tmp_path):
    first = build_shim(tmp_path)
    built_at = first.stat().st_mtime_ns
    assert build_shim(tmp_path) == first and first.stat().st_mtime_ns == built_at
    library = ctypes.CDLL(str(first))   # its own wrappers, not glibc's
    for name in ("sendto", "sendmsg", "send", "write"):
        assert ctypes.cast(getattr(library, name), ctypes.c_void_p).value != ctypes.cast(
            getattr(ctypes.CDLL(None), name), ctypes.c_void_p).value
    assert [p.name for p in tmp_path.iterdir()] == ["xfrm_shim.so"]
