"""ClusterIP route requests encoded the way svcnat.routes did before its packed encoder: a pyroute2
`rtmsg` filled field by field and encoded by pyroute2. The reference that the packed bytes are
compared with (tests/unit/test_svcnat_routes_packed.py) and the "old path" of
bench/bench_service_routes.py."""

from __future__ import annotations

import socket

from pyroute2.netlink.rtnl.rtmsg import rtmsg

from ipsec_mesh.svcnat.routes import MAIN_TABLE, RT_PROTO, RTN_UNICAST, Route


def pyroute2_route_message(route: Route) -> rtmsg:
    """The unencoded request (the channel stamps its header)."""
    message = rtmsg()
    message["family"] = socket.AF_INET if route.destination.version == 4 else socket.AF_INET6
    message["dst_len"] = route.destination.max_prefixlen
    message["table"] = MAIN_TABLE
    message["proto"] = RT_PROTO
    message["scope"] = route.scope
    message["type"] = RTN_UNICAST
    message["flags"] = route.flags
    attrs = [("RTA_DST", str(route.destination)), ("RTA_TABLE", MAIN_TABLE), ("RTA_OIF", route.oif)]
    if route.gateway is not None:
        attrs.append(("RTA_GATEWAY", str(route.gateway)))
    attrs.append(("RTA_METRICS", {"attrs": [("RTAX_MTU", route.mtu)]}))
    message["attrs"] = attrs
    return message


def pyroute2_dump_request(family: int) -> rtmsg:
    message = rtmsg()
    message["family"] = family
    return message


def pyroute2_body(message: rtmsg, msg_type: int = 24) -> bytes:
    """The encoded message without its 16-byte netlink header."""
    message["header"] = {"type": msg_type, "flags": 0, "sequence_number": 0, "pid": 0}
    message.encode()
    return bytes(message.data)[16:]
