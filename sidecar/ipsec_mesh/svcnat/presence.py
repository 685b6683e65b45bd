"""Is any of the Service translation in the kernel? Asked without libnftables or the rest of svcnat.

A pod whose peer map lists no Service needs the translation only to clear what an earlier
instance left (its table, its ClusterIP routes; the SCTP offload record lives in the table).
Two netlink questions answer that: NFT_MSG_GETTABLE for our table, and a route dump looking
for our route protocol. When both say "nothing", the sidecar loads neither libnftables (ctypes
and the library's own heap) nor the translation's modules (docs/benchmarks.md, issue 14).
"""

from __future__ import annotations

import errno
import socket
import struct

from ..xfrm import XfrmError
from ..xfrm.channel import NetlinkChannel, NetnsRef
from ..xfrm.constants import NLMSG_HDRLEN
from ..xfrm.netlink import pack_attr

FAMILY = "inet"
TABLE = "ipsec_mesh_svc"
RT_PROTO = 229  # ours: not in iproute2's rt_protos; `ip route show proto 229`

NETLINK_NETFILTER = 12  # linux/netlink.h (Python does not export it)
NFPROTO_INET = 1  # linux/netfilter.h
NFNL_SUBSYS_NFTABLES = 10  # linux/netfilter/nfnetlink.h
NFT_MSG_GETTABLE = 1  # linux/netfilter/nf_tables.h
NFTA_TABLE_NAME = 1
NFGENMSG = struct.Struct("=BBH")  # family, version (NFNETLINK_V0), res_id (big endian, 0)
RTM_GETROUTE = 26  # linux/rtnetlink.h
RTMSG = struct.Struct("=BBBBBBBBI")  # struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTMSG_PROTOCOL = 5  # offset of rtm_protocol in struct rtmsg


def dump_request_body(family: int) -> bytes:
    """RTM_GETROUTE dump request for one address family."""
    return RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)


class PresenceError(Exception):
    """The kernel could not be asked, or answered what we cannot read: assume something is there."""


def _open(netns: NetnsRef, protocol: int, what: str) -> NetlinkChannel:
    try:
        return NetlinkChannel(netns, protocol=protocol)
    except XfrmError as exc:
        raise PresenceError(f"cannot open a {what} socket: {exc}") from None


def table_exists(netns: NetnsRef = None) -> bool:
    """True if the namespace has our nftables table (NFT_MSG_GETTABLE answers it, ENOENT: none)."""
    request = NFGENMSG.pack(NFPROTO_INET, 0, 0) + pack_attr(NFTA_TABLE_NAME, TABLE.encode() + b"\0")
    channel = _open(netns, NETLINK_NETFILTER, "netfilter")
    try:
        channel.query(request, NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE, "get table")
    except XfrmError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise PresenceError(f"cannot ask for table {FAMILY} {TABLE}: {exc}") from None
    finally:
        channel.close()
    return True


def routes_exist(netns: NetnsRef = None) -> bool:
    """True if the namespace holds a route of our protocol (a ClusterIP route), in any table."""
    channel = _open(netns, socket.NETLINK_ROUTE, "routing")
    try:
        for family in (socket.AF_INET, socket.AF_INET6):
            for reply in channel.dump(dump_request_body(family), RTM_GETROUTE, "list routes"):
                if len(reply.data) < NLMSG_HDRLEN + RTMSG.size:
                    raise PresenceError(f"route message of {len(reply.data)} bytes is truncated")
                if reply.data[NLMSG_HDRLEN + RTMSG_PROTOCOL] == RT_PROTO:
                    return True
    except XfrmError as exc:
        raise PresenceError(f"cannot list routes: {exc}") from None
    finally:
        channel.close()
    return False


def anything_installed(netns: NetnsRef = None) -> bool:
    """Our table or one of our routes is in the kernel, or the kernel could not tell (then: assume so)."""
    try:
        return table_exists(netns) or routes_exist(netns)
    except PresenceError:
        return True
