"""Hand-derived C layouts of include/uapi/linux/xfrm.h structs (x86-64), for the tests.

Written from the header with explicit padding, independently of
ipsec_mesh.xfrm.structs, so the two can be checked against each other.
"""

from __future__ import annotations

import ipaddress
import struct

NLMSG_HDR = "=IHHII"


def addr(text: str | None) -> bytes:
    return ipaddress.ip_address(text).packed.ljust(16, b"\0") if text else bytes(16)


def selector(dst="0.0.0.0", src="0.0.0.0", dport=0, sport=0, family=2, plen_d=0, plen_s=0,
             proto=0, ifindex=0, user=0) -> bytes:
    # daddr, saddr, dport, dport_mask, sport, sport_mask (be16), family u16, 3 x u8,
    # 3 bytes padding so that int ifindex is 4-aligned, then user: 56 bytes
    return (
        addr(dst) + addr(src)
        + struct.pack(">HHHH", dport, 0xFFFF if dport else 0, sport, 0xFFFF if sport else 0)
        + struct.pack("=HBBB3xiI", family, plen_d, plen_s, proto, ifindex, user)
    )


INF = 0xFFFFFFFFFFFFFFFF


def lifetime_cfg(values=(INF, INF, INF, INF, 0, 0, 0, 0)) -> bytes:
    return struct.pack("=8Q", *values)


def usersa_info(sel: bytes, daddr, spi, proto, saddr, lft: bytes, reqid, family, mode,
                replay_window, flags, cur=(0, 0, 0, 0), seq=0) -> bytes:
    xfrm_id = addr(daddr) + struct.pack(">I", spi) + struct.pack("=B3x", proto)  # 24
    tail = struct.pack("=IIHBBB7x", seq, reqid, family, mode, replay_window, flags)
    return sel + xfrm_id + addr(saddr) + lft + struct.pack("=4Q", *cur) + bytes(12) + tail


def userpolicy_info(sel: bytes, lft: bytes, priority, index, direction, action, flags=0,
                    cur=(0, 0, 0, 0)) -> bytes:
    return sel + lft + struct.pack("=4Q", *cur) + struct.pack(
        "=IIBBBB4x", priority, index, direction, action, flags, 0
    )


def user_tmpl(daddr=None, spi=0, proto=50, family=2, saddr=None, reqid=0, mode=0, optional=0,
              algos=0xFFFFFFFF) -> bytes:
    return (
        addr(daddr) + struct.pack(">I", spi) + struct.pack("=B3x", proto)
        + struct.pack("=H2x", family) + addr(saddr)
        + struct.pack("=IBBBxIII", reqid, mode, 0, optional, algos, algos, algos)
    )


def nla(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + bytes(-len(raw) % 4)


def nlmsg(msg_type: int, body: bytes, flags=0, seq=0, pid=0) -> bytes:
    return struct.pack(NLMSG_HDR, 16 + len(body), msg_type, flags, seq, pid) + body
