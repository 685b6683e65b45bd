"""Whether a namespace's routes, links or addresses changed: rtnetlink notifications, read without blocking.

The MSS clamp needs the route MTU of every ClusterIP and endpoint of the map (svcnat.mtu); one
read costs a socket and two system calls, so the translation keeps what it read until the
kernel announces a change that could alter a route's MTU.
"""

from __future__ import annotations

import socket

# linux/rtnetlink.h multicast groups (the legacy bit masks bind() takes).
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x10, 0x40
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x100, 0x400
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE


class RouteWatch:
    """Subscribed in the calling thread's namespace; `changed()` says if anything came since the last call."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE)
        self._sock.bind((0, GROUPS))

    def changed(self) -> bool:
        changed = False
        while True:
            try:
                self._sock.recv(65536)
            except BlockingIOError:
                return changed
            except OSError:
                pass  # ENOBUFS: notifications were dropped, so something changed
            changed = True

    def close(self) -> None:
        self._sock.close()
