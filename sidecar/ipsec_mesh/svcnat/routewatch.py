"""Whether a namespace's routes, links or addresses changed: rtnetlink notifications, read without blocking.

The ClusterIP routes and the MSS clamp need the path MTU of every endpoint of the map (svcnat.mtu); one
read costs a socket and two system calls, so the translation keeps what it read until the
kernel announces a change that could alter a route's MTU.
"""

from __future__ import annotations

import socket
import struct

from ..xfrm.channel import SO_RCVBUFFORCE
from .routes import NLMSG_HDRLEN, RTM_DELROUTE, RTM_NEWROUTE

# linux/rtnetlink.h multicast groups (the legacy bit masks bind() takes).
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x10, 0x40
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x100, 0x400
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
_NLMSG_LEN_TYPE = struct.Struct("=IH")  # the start of struct nlmsghdr
_RTM_PROTOCOL = NLMSG_HDRLEN + 5  # struct rtmsg: family, dst_len, src_len, tos, table, protocol, ...
#: Room for the notifications of our own route batches between two updates: the default (rmem_default,
#: ~200 KiB) overflowed at a few hundred routes, and an overflow counts as a change, so every update after
#: a large one read every endpoint's MTU again. 12,000 routes' notifications fit (kernel 6.18); only what
#: is queued uses memory. A larger batch still overflows: the cache is then dropped, never trusted.
WATCH_BUFFER = 8 << 20


def only_routes_of(datagram: bytes, protocol: int) -> bool:
    """True if every message in `datagram` is a route notification for routes of `protocol`
    (a malformed or truncated datagram is not: it counts as a change)."""
    offset, seen = 0, False
    while offset + NLMSG_HDRLEN <= len(datagram):
        length, kind = _NLMSG_LEN_TYPE.unpack_from(datagram, offset)
        if length < NLMSG_HDRLEN or offset + length > len(datagram):
            return False
        if kind not in (RTM_NEWROUTE, RTM_DELROUTE) or length <= _RTM_PROTOCOL:
            return False
        if datagram[offset + _RTM_PROTOCOL] != protocol:
            return False
        seen = True
        offset += (length + 3) & ~3
    return seen and offset >= len(datagram)


class RouteWatch:
    """Subscribed in the calling thread's namespace; `changed()` says if anything came since the last call.

    Notifications about routes of `ignore_protocol` (the translation's own ClusterIP routes, which
    change no endpoint's path) are not a change.
    """

    def __init__(self, ignore_protocol: int | None = None) -> None:
        self._ignore = ignore_protocol
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE)
        try:  # CAP_NET_ADMIN (the sidecar has it) goes past net.core.rmem_max
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, WATCH_BUFFER)
        except PermissionError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, WATCH_BUFFER)
        self._sock.bind((0, GROUPS))

    def changed(self) -> bool:
        changed = False
        while True:
            try:
                datagram = self._sock.recv(65536)
            except BlockingIOError:
                return changed
            except OSError:
                changed = True  # ENOBUFS: notifications were dropped, so something changed
                continue
            if self._ignore is None or not only_routes_of(datagram, self._ignore):
                changed = True

    def close(self) -> None:
        self._sock.close()
