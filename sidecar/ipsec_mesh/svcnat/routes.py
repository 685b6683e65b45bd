"""A route per translated ClusterIP whose MTU leaves room for ESP (issue 11).

A socket that calls a ClusterIP takes its MTU (TCP's MSS, UDP's and SCTP's packet size) from
the ClusterIP's route; after the DNAT its packets go through an endpoint's SA and grow by the
ESP overhead. So the sidecar gives each translated ClusterIP its own host route (/32, /128) in
the main table, through the same gateway and device as the route the ClusterIP used before
(forwarding is unchanged), with an MTU that fits inside transport-mode ESP (mtu.esp_inner_mtu).

Our routes carry protocol `RT_PROTO`; only those are ever replaced or deleted. A ClusterIP that
someone else already routes with a host route of its own, or whose covering route is not a
plain unicast route (multipath, blackhole, none), gets no route and the reason in the status.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyroute2.netlink import NLM_F_CREATE, NLM_F_REPLACE, nlmsg

from ..xfrm import XfrmError
from ..xfrm.channel import NetlinkChannel

if TYPE_CHECKING:
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

NETLINK_ROUTE = 0
RTM_GETLINK, RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 18, 24, 25, 26
NLMSG_HDRLEN, RTMSG_LEN = 16, 12
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_METRICS, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 6, 8, 9, 15
RTAX_MTU = 2
ADDRESS_BYTES = {socket.AF_INET: 4, socket.AF_INET6: 16}
RT_PROTO = 229  # ours: not in iproute2's rt_protos; `ip route show proto 229`
MAIN_TABLE = 254
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
RTNH_F_ONLINK = 4
KEPT_FLAGS = RTNH_F_ONLINK  # a gateway that is on-link only by declaration stays so on our route

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class RouteError(Exception):
    """The kernel refused to list, add or delete a route (its errno and message included)."""


@dataclass(frozen=True)
class Route:
    """A host route for one ClusterIP, as we want it or as the kernel holds it."""

    destination: Address
    mtu: int
    oif: int
    gateway: Address | None = None
    flags: int = 0
    scope: int = RT_SCOPE_UNIVERSE

    @property
    def prefix(self) -> str:
        return f"{self.destination}/{self.destination.max_prefixlen}"

    def status(self, names: dict[int, str]) -> dict:
        return {"destination": self.prefix, "mtu": self.mtu, "via": str(self.gateway) if self.gateway else None,
                "dev": names.get(self.oif, str(self.oif))}


@dataclass(frozen=True)
class _KernelRoute:
    """One route of the main table, as much of it as a ClusterIP's route is derived from."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    proto: int
    kind: int
    priority: int
    oif: int | None
    gateway: Address | None
    flags: int
    scope: int
    mtu: int | None
    multipath: bool

    @property
    def ours(self) -> bool:
        return self.proto == RT_PROTO


class _ifinfmsg(nlmsg):
    """struct ifinfomsg (linux/rtnetlink.h) and the one attribute we read: the device's name."""

    prefix = "IFLA_"
    fields = (("family", "B"), ("__pad", "B"), ("ifi_type", "H"), ("index", "i"), ("flags", "I"), ("change", "I"))
    nla_map = ((3, "IFLA_IFNAME", "asciiz"),)


def _attributes(data: bytes, offset: int, operation: str) -> dict[int, bytes]:
    """rtattrs from `offset` to the end of `data` (type -> payload), each length checked."""
    attrs = {}
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("HH", data, offset)
        if length < 4 or offset + length > len(data):
            raise RouteError(f"{operation}: attribute length {length} overruns the message")
        attrs[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return attrs


def _u32(attrs: dict[int, bytes], kind: int) -> int | None:
    value = attrs.get(kind)
    if value is None:
        return None
    if len(value) != 4:
        raise RouteError(f"route attribute {kind} of {len(value)} bytes")
    return struct.unpack("I", value)[0]


def _parse(data: bytes) -> _KernelRoute | None:
    """One RTM_NEWROUTE message of a dump (struct-level: pyroute2's decoder costs ~0.2 ms a route)."""
    if len(data) < NLMSG_HDRLEN + RTMSG_LEN:
        raise RouteError("truncated route message")
    family, dst_len, _src_len, _tos, table, proto, scope, kind, flags = struct.unpack_from(
        "BBBBBBBBI", data, NLMSG_HDRLEN)
    attrs = _attributes(data, NLMSG_HDRLEN + RTMSG_LEN, "list routes")
    if (_u32(attrs, RTA_TABLE) or table) != MAIN_TABLE or family not in ADDRESS_BYTES:
        return None
    size = ADDRESS_BYTES[family]
    destination, gateway = attrs.get(RTA_DST, bytes(size)), attrs.get(RTA_GATEWAY)
    if len(destination) != size or (gateway is not None and len(gateway) != size) or dst_len > size * 8:
        raise RouteError("route address of the wrong length")
    metrics = _attributes(attrs[RTA_METRICS], 0, "route metrics") if RTA_METRICS in attrs else {}
    return _KernelRoute(
        network=ipaddress.ip_network((ipaddress.ip_address(destination), dst_len), strict=False), proto=proto,
        kind=kind, priority=_u32(attrs, RTA_PRIORITY) or 0, oif=_u32(attrs, RTA_OIF),
        gateway=ipaddress.ip_address(gateway) if gateway else None, flags=flags, scope=scope,
        mtu=_u32(metrics, RTAX_MTU) or None, multipath=RTA_MULTIPATH in attrs)


def _rtmsg() -> rtmsg:
    # Imported on first use: a pod whose map lists no Service never loads pyroute2's rtnetlink
    # messages (each module at start-up costs every pod memory).
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    return rtmsg()


def _message(route: Route) -> rtmsg:
    message = _rtmsg()
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


def _best(destination: Address, table: list[_KernelRoute]) -> _KernelRoute | None:
    """The route of `table` the kernel picks for `destination` (longest prefix, then lowest metric)."""
    covering = [r for r in table if r.network.version == destination.version and destination in r.network]
    return min(covering, key=lambda r: (-r.network.prefixlen, r.priority)) if covering else None


def device_of(destination: Address, table: list[_KernelRoute]) -> int | None:
    """The device index packets to `destination` leave by (ours included), None if no single one."""
    best = _best(destination, table)
    return best.oif if best is not None and not best.multipath else None


def derive(destination: Address, mtu: int, table: list[_KernelRoute]) -> Route | str:
    """The route `destination` gets (through what covers it now, not counting ours), or why none."""
    for route in table:
        if not route.ours and route.network.prefixlen == route.network.max_prefixlen \
                and destination in route.network:
            return f"the main table has a host route for {destination} already (proto {route.proto})"
    best = _best(destination, [r for r in table if not r.ours])
    if best is None:
        return f"no route to {destination}"
    if best.kind != RTN_UNICAST or best.multipath or best.oif is None:
        return f"the route to {destination} ({best.network}) is not a single-path unicast route"
    if best.mtu is not None:
        mtu = min(mtu, best.mtu)
    return Route(destination, mtu, best.oif, best.gateway, best.flags & KEPT_FLAGS, best.scope)


class ServiceRoutes:
    """The ClusterIP routes of one network namespace, over NETLINK_ROUTE."""

    def __init__(self, netns: str | None = None, *, channel_factory=None):
        self.netns = netns
        self._channel_factory = channel_factory or (lambda ns: NetlinkChannel(ns, protocol=NETLINK_ROUTE))
        self._channel: NetlinkChannel | None = None

    def _open(self) -> NetlinkChannel:
        if self._channel is None:
            try:
                self._channel = self._channel_factory(self.netns)
            except XfrmError as exc:
                raise RouteError(f"cannot open a routing socket: {exc}") from None
        return self._channel

    def table(self) -> list[_KernelRoute]:
        """The main table's IPv4 and IPv6 unicast routes now."""
        channel = self._open()
        routes: list[_KernelRoute] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            request = _rtmsg()
            request["family"] = family
            try:
                replies = channel.dump(request, RTM_GETROUTE, "list routes")
            except XfrmError as exc:
                raise RouteError(f"cannot list routes: {exc}") from None
            routes += [r for r in (_parse(reply.data) for reply in replies) if r is not None]
        return routes

    def link_names(self) -> dict[int, str]:
        """Device index -> name in the routes' namespace (not the caller's: tests drive another one)."""
        request = _ifinfmsg()
        request["family"] = socket.AF_UNSPEC
        try:
            replies = self._open().dump(request, RTM_GETLINK, "list links")
        except XfrmError as exc:
            raise RouteError(f"cannot list links: {exc}") from None
        names = {}
        for reply in replies:
            link = _ifinfmsg(reply.data)
            link.decode()
            names[link["index"]] = link.get_attr("IFLA_IFNAME") or str(link["index"])
        return names

    def installed(self, table: list[_KernelRoute] | None = None) -> dict[Address, Route]:
        """Our routes in the kernel, by ClusterIP."""
        result = {}
        for route in self.table() if table is None else table:
            if route.ours and route.network.prefixlen == route.network.max_prefixlen and route.oif is not None:
                result[route.network.network_address] = Route(route.network.network_address, route.mtu or 0,
                                                              route.oif, route.gateway, route.flags & KEPT_FLAGS,
                                                              route.scope)
        return result

    def put(self, routes: list[Route]) -> None:
        """Add or replace (in place: no moment without a route) each of `routes`."""
        self._batch([(_message(r), RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE) for r in routes], "add routes")

    def delete(self, routes: list[Route]) -> None:
        """Delete our routes (a route already gone is no error)."""
        self._batch([(_message(r), RTM_DELROUTE, 0) for r in routes], "delete routes", tolerate=errno.ESRCH)

    def _batch(self, requests: list, operation: str, tolerate: int | None = None) -> None:
        if not requests:
            return
        try:
            errors = self._open().batch(requests, operation)
        except XfrmError as exc:
            raise RouteError(f"cannot {operation}: {exc}") from None
        refused = [e for e in errors if e is not None and e.errno != tolerate]
        if refused:
            raise RouteError(f"cannot {operation}: {refused[0]}")

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
