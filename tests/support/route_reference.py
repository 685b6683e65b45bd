"""ClusterIP routes the way svcnat.routes handled them before (issue 11): requests encoded by pyroute2
(an `rtmsg` filled field by field), and the route a ClusterIP gets found by a scan of the whole table
per ClusterIP. The references that the packed bytes and the indexed table are compared with
(tests/unit/test_svcnat_routes_packed.py, test_svcnat_routes.py) and the "before" of
bench/bench_service_routes.py."""

from __future__ import annotations

import socket

from pyroute2.netlink.rtnl.rtmsg import rtmsg

from ipsec_mesh.svcnat.routes import KEPT_FLAGS, MAIN_TABLE, RT_PROTO, RTN_UNICAST, Route


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


def reference_best(destination, table):
    """The kernel's choice as a scan of the whole table (longest prefix, then lowest metric, first listed)."""
    covering = [r for r in table if r.network.version == destination.version and destination in r.network]
    return min(covering, key=lambda r: (-r.network.prefixlen, r.priority)) if covering else None


def reference_derive(destination, mtu, table):
    for route in table:
        if not route.ours and route.network.prefixlen == route.network.max_prefixlen and destination in route.network:
            return f"the main table has a host route for {destination} already (proto {route.proto})"
    best = reference_best(destination, [r for r in table if not r.ours])
    if best is None:
        return f"no route to {destination}"
    if best.kind != RTN_UNICAST or best.multipath or best.oif is None:
        return f"the route to {destination} ({best.network}) is not a single-path unicast route"
    return Route(destination, min(mtu, best.mtu) if best.mtu is not None else mtu, best.oif, best.gateway,
                 best.flags & KEPT_FLAGS, best.scope)
