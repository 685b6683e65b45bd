"""Socket options for the IKE sockets: per-socket XFRM bypass and ESP-in-UDP.

A per-socket policy takes precedence over every SPD policy, so IKE datagrams
on a bypassed socket are never caught by our own (or anyone's) block or
template policies. It must be set for both directions.
"""

from __future__ import annotations

import errno
import socket

from .codec import socket_policy_bytes
from .constants import IP_XFRM_POLICY, IPV6_XFRM_POLICY, SOL_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP, Direction
from .errors import XfrmError, XfrmSpecError


def socket_bypass(sock: socket.socket) -> None:
    """Exempt `sock` from IPsec in both directions (XFRM_POLICY_ALLOW, no templates)."""
    if sock.family == socket.AF_INET:
        level, option = socket.IPPROTO_IP, IP_XFRM_POLICY
    elif sock.family == socket.AF_INET6:
        level, option = socket.IPPROTO_IPV6, IPV6_XFRM_POLICY
    else:
        raise XfrmSpecError("socket_bypass", f"socket family {sock.family} is not IP")
    for direction in (Direction.IN, Direction.OUT):
        try:
            sock.setsockopt(level, option, socket_policy_bytes(direction, sock.family))
        except OSError as exc:
            raise XfrmError("socket_bypass", exc.errno or errno.EINVAL, str(exc)) from exc


def set_udp_encap(sock: socket.socket) -> None:
    """Make the kernel decapsulate ESP-in-UDP arriving on `sock` (the port 4500 socket).

    Non-ESP datagrams (IKE, with the 4-byte zero marker) still reach the socket.
    """
    if sock.type != socket.SOCK_DGRAM:
        raise XfrmSpecError("set_udp_encap", "UDP encapsulation needs a UDP socket")
    try:
        sock.setsockopt(SOL_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)
    except OSError as exc:
        raise XfrmError("set_udp_encap", exc.errno or errno.EINVAL, str(exc)) from exc
