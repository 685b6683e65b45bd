"""A route per translated ClusterIP whose MTU leaves room for ESP (issue 11).

A socket that calls a ClusterIP takes its MTU (TCP's MSS, UDP's and SCTP's packet size) from
the ClusterIP's route; after the DNAT its packets go through an endpoint's SA and grow by the
ESP overhead. So the sidecar gives each translated ClusterIP its own host route (/32, /128) in
the main table, through the same gateway and device as the route the ClusterIP used before
(forwarding is unchanged), with an MTU that fits inside transport-mode ESP (mtu.esp_inner_mtu).

Our routes carry protocol `RT_PROTO`; only those are ever replaced or deleted. A ClusterIP that
someone else already routes with a host route of its own, or whose covering route is not a
plain unicast route (multipath, blackhole, none), gets no route and the reason in the status.

Requests are packed with precompiled `struct` layouts (route_body), not pyroute2's `rtmsg`:
pyroute2's generic encoder cost ~0.4 ms a route, most of a 500-Service update. The bytes equal
pyroute2's (tests/unit/test_svcnat_routes_packed.py); the netlink header, the batching (many
requests per datagram, one ack per datagram) and the per-request results are NetlinkChannel's,
the same framing as the XFRM policies (xfrm/packed.py).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

from ..records import record
from ..xfrm import XfrmError
from ..xfrm.channel import NetlinkChannel
from ..xfrm.constants import NLM_F_CREATE, NLM_F_REPLACE
from ..xfrm.netlink import parse_attrs
from .presence import RT_PROTO, RTM_GETROUTE, RTMSG, dump_request_body

NETLINK_ROUTE = 0
RTM_GETLINK, RTM_NEWROUTE, RTM_DELROUTE = 18, 24, 25
NLMSG_HDRLEN, RTMSG_LEN = 16, 12
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_METRICS, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 6, 8, 9, 15
RTAX_MTU = 2
ADDRESS_BYTES = {socket.AF_INET: 4, socket.AF_INET6: 16}
#: Per family, the classes a dump's packed addresses become: straight from bytes (ip_network of an address
#: object formats it as text and parses that again, 50 us for an IPv6 address: most of a 2,000-route dump).
_CLASSES = {socket.AF_INET: (ipaddress.IPv4Address, ipaddress.IPv4Network),
            socket.AF_INET6: (ipaddress.IPv6Address, ipaddress.IPv6Network)}
MAIN_TABLE = 254
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
RTNH_F_ONLINK = 4
KEPT_FLAGS = RTNH_F_ONLINK  # a gateway that is on-link only by declaration stays so on our route

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class RouteError(Exception):
    """The kernel refused to list, add or delete a route (its errno and message included)."""


class RoutesRefused(RouteError):
    """The kernel refused some routes of a batch and applied the others: `refused` pairs each
    refused route with the kernel's error for it, in request order."""

    SHOWN = 5  # routes named in the message; `refused` has them all

    def __init__(self, operation: str, refused: list[tuple[Route, XfrmError]]):
        self.refused = refused
        named = "; ".join(f"{route.prefix}: {refusal(error)}" for route, error in refused[: self.SHOWN])
        more = f" and {len(refused) - self.SHOWN} more" if len(refused) > self.SHOWN else ""
        super().__init__(f"cannot {operation}: {len(refused)} refused: {named}{more}")


def refusal(error: XfrmError) -> str:
    """The kernel's reason for refusing one route: its errno's text and extended ack."""
    return os.strerror(error.errno) + (f" ({error.detail})" if error.detail else "")


@record(frozen=True)
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


@record(frozen=True)
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


IFINFOMSG = struct.Struct("=BxHiII")  # struct ifinfomsg: family, pad, type, index, flags, change
IFLA_IFNAME = 3


def _link_name(data: bytes) -> tuple[int, str]:
    """Device index and name from one RTM_NEWLINK message of a dump."""
    if len(data) < NLMSG_HDRLEN + IFINFOMSG.size:
        raise RouteError("truncated link message")
    index = IFINFOMSG.unpack_from(data, NLMSG_HDRLEN)[2]
    name = _attributes(data, NLMSG_HDRLEN + IFINFOMSG.size, "list links").get(IFLA_IFNAME, b"")
    return index, name.split(b"\0", 1)[0].decode(errors="replace") or str(index)


def _attributes(data: bytes, offset: int, operation: str) -> dict[int, bytes]:
    """rtattrs from `offset` to the end of `data` (type -> payload), through the XFRM layer's
    checked attribute parser (lengths, padding, stray bytes), its errors as RouteError."""
    try:
        attrs = parse_attrs(data, offset, len(data), operation)
    except XfrmError as exc:
        raise RouteError(str(exc)) from None
    # No type is asked to be parsed as nested, so every payload is bytes.
    return {kind: value for kind, value in attrs.items() if isinstance(value, bytes)}


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
        network=_CLASSES[family][1]((destination, dst_len), strict=False), proto=proto,
        kind=kind, priority=_u32(attrs, RTA_PRIORITY) or 0, oif=_u32(attrs, RTA_OIF),
        gateway=_CLASSES[family][0](gateway) if gateway else None, flags=flags, scope=scope,
        mtu=_u32(metrics, RTAX_MTU) or None, multipath=RTA_MULTIPATH in attrs)




def _request_layout(address_bytes: int, gateway: bool) -> struct.Struct:
    """rtmsg, RTA_DST, RTA_TABLE, RTA_OIF, [RTA_GATEWAY], RTA_METRICS holding RTAX_MTU: each attribute an
    rtattr header (length, type) and its value; addresses of 4 or 16 bytes and u32s need no padding."""
    address = f"HH{address_bytes}s"
    return struct.Struct("=" + RTMSG.format.lstrip("=") + address + "HHI" + "HHI" + (address if gateway else "")
                         + "HH" + "HHI")


_LAYOUTS = {(size, gateway): _request_layout(size, gateway) for size in (4, 16) for gateway in (False, True)}


def route_body(route: Route) -> bytes:
    """RTM_NEWROUTE / RTM_DELROUTE body for `route` in the main table, protocol RT_PROTO (no netlink header)."""
    destination = route.destination.packed
    size = len(destination)
    family = socket.AF_INET if size == 4 else socket.AF_INET6
    head = (family, size * 8, 0, 0, MAIN_TABLE, RT_PROTO, route.scope, RTN_UNICAST, route.flags,
            4 + size, RTA_DST, destination, 8, RTA_TABLE, MAIN_TABLE, 8, RTA_OIF, route.oif)
    gateway = () if route.gateway is None else (4 + size, RTA_GATEWAY, route.gateway.packed)
    try:
        return _LAYOUTS[size, route.gateway is not None].pack(*head, *gateway, 12, RTA_METRICS, 8, RTAX_MTU, route.mtu)
    except (struct.error, OverflowError) as exc:  # a value outside its kernel field
        raise RouteError(f"route {route.prefix}: field out of range: {exc}") from None


class RouteIndex:
    """The main table indexed for a lookup per ClusterIP: host routes by address, the others (a pod has a
    handful: default, link, a few more) scanned in table order. A scan of the whole table per ClusterIP
    cost 170 ms for 500 ClusterIPs once our 500 routes were in it (every update after the first)."""

    def __init__(self, table: list[_KernelRoute]):
        self.hosts: dict[Address, list[_KernelRoute]] = {}
        self.others: list[_KernelRoute] = []
        for route in table:
            if route.network.prefixlen == route.network.max_prefixlen:
                self.hosts.setdefault(route.network.network_address, []).append(route)
            else:
                self.others.append(route)

    def best(self, destination: Address, *, ours: bool = True) -> _KernelRoute | None:
        """The route the kernel picks for `destination` (longest prefix, then lowest metric), ours left out if told."""
        covering = [r for r in self.hosts.get(destination, ()) if ours or not r.ours] or [
            r for r in self.others
            if (ours or not r.ours) and r.network.version == destination.version and destination in r.network]
        return min(covering, key=lambda r: (-r.network.prefixlen, r.priority)) if covering else None


def device_of(destination: Address, index: RouteIndex) -> int | None:
    """The device index packets to `destination` leave by (ours included), None if no single one."""
    best = index.best(destination)
    return best.oif if best is not None and not best.multipath else None


def derive(destination: Address, mtu: int, index: RouteIndex) -> Route | str:
    """The route `destination` gets (through what covers it now, not counting ours), or why none."""
    for route in index.hosts.get(destination, ()):
        if not route.ours:
            return f"the main table has a host route for {destination} already (proto {route.proto})"
    best = index.best(destination, ours=False)
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
            try:
                replies = channel.dump(dump_request_body(family), RTM_GETROUTE, "list routes")
            except XfrmError as exc:
                raise RouteError(f"cannot list routes: {exc}") from None
            routes += [r for r in (_parse(reply.data) for reply in replies) if r is not None]
        return routes

    def link_names(self) -> dict[int, str]:
        """Device index -> name in the routes' namespace (not the caller's: tests drive another one)."""
        request = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        try:
            replies = self._open().dump(request, RTM_GETLINK, "list links")
        except XfrmError as exc:
            raise RouteError(f"cannot list links: {exc}") from None
        return dict(_link_name(reply.data) for reply in replies)

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
        """Add or replace (in place: no moment without a route) each of `routes`; RoutesRefused names
        the ones the kernel refused (the others are in place)."""
        self._batch(routes, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, "add routes")

    def delete(self, routes: list[Route]) -> None:
        """Delete our routes (a route already gone is no error); RoutesRefused names the ones that stay."""
        self._batch(routes, RTM_DELROUTE, 0, "delete routes", tolerate=errno.ESRCH)

    def _batch(self, routes: list[Route], msg_type: int, flags: int, operation: str,
               tolerate: int | None = None) -> None:
        if not routes:
            return
        requests = [(route_body(route), msg_type, flags) for route in routes]
        try:
            errors = self._open().batch(requests, operation)
        except XfrmError as exc:  # the socket failed: what the kernel did with the batch is unknown
            raise RouteError(f"cannot {operation}: {exc}") from None
        refused = [(route, error) for route, error in zip(routes, errors, strict=True)
                   if error is not None and error.errno != tolerate]
        if refused:
            raise RoutesRefused(operation, refused)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
