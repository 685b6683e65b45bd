"""How much of a path's MTU is left for a translated connection once ESP is added.

A socket that calls a ClusterIP keeps the ClusterIP's route, which has no XFRM policy and so
no ESP overhead in its MTU; the DNAT then sends its packets through a peer's SA. Its full-size
segments no longer fit, fragmentation fails (DF) and the kernel tells the SA's route, not the
socket: the upload stalls. The translation therefore clamps the MSS that the socket learns from
the SYN-ACK (ruleset: chain filter_input) to what fits inside transport-mode ESP.
"""

from __future__ import annotations

import ipaddress
import socket

from ..xfrm import XfrmError, socket_bypass

# The AEADs the sidecar installs (agent.xfrm_dataplane.kernel_aead): AES-GCM-16 (RFC 4106) and
# ChaCha20-Poly1305 (RFC 7634) both carry an 8-byte IV and a 16-byte ICV and pad to 4 bytes.
ESP_HEADER, ESP_IV, ESP_ICV, ESP_ALIGN, ESP_TRAILER = 8, 8, 16, 4, 2
UDP_ENCAP = 8  # NAT-T (RFC 3948): counted always, so the clamp holds whether or not a NAT is found
IP_HEADER = {4: 20, 6: 40}
TCP_HEADER = 20
MIN_PATH_MTU = {4: 576, 6: 1280}  # below these (RFC 791, RFC 8200) no clamp is derived from a route
IP_MTU, IPV6_MTU = 14, 24  # linux/in.h, linux/in6.h (Python's socket module lacks them)


def esp_inner_mtu(path_mtu: int, version: int) -> int:
    """The largest IP packet that still fits `path_mtu` in transport-mode ESP.

    The kernel's own figure for the SA's route (esp4_get_mtu/esp6_get_mtu).
    """
    ip_header = IP_HEADER[version]
    room = path_mtu - ESP_HEADER - ESP_IV - UDP_ENCAP - ESP_ICV - ip_header
    return (room & ~(ESP_ALIGN - 1)) + ip_header - ESP_TRAILER


def mss_clamp(path_mtu: int, version: int) -> int:
    """The TCP MSS whose segments fit `path_mtu` once ESP is added."""
    return esp_inner_mtu(path_mtu, version) - IP_HEADER[version] - TCP_HEADER


def route_mtu(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int | None:
    """The MTU of the route the calling thread's namespace uses for `address` (None: no route).

    A connected UDP socket reads it (IP_MTU); no packet is sent. The socket bypasses IPsec so a
    peer's address gives the route under its SA, not the SA's (already reduced) one.
    """
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    level, option = (socket.IPPROTO_IP, IP_MTU) if address.version == 4 else (socket.IPPROTO_IPV6, IPV6_MTU)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            socket_bypass(sock)
        except XfrmError:
            pass  # a kernel without XFRM has no SA route to avoid either
        try:
            sock.connect((str(address), 9))
            return sock.getsockopt(level, option)
        except OSError:
            return None
