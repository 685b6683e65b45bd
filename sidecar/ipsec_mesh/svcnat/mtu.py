"""How much of a path's MTU is left for a translated connection once ESP is added.

A socket that calls a ClusterIP keeps the ClusterIP's route, which has no XFRM policy and so
no ESP overhead in its MTU; the DNAT then sends its packets through a peer's SA. Its full-size
packets no longer fit, fragmentation fails (DF) and the kernel tells the SA's route, not the
socket. So each translated ClusterIP gets a route whose MTU is what fits inside transport-mode
ESP (routes.py), and TCP's MSS is also clamped on SYN-ACKs (ruleset: chain filter_input) for a
ClusterIP that gets no route.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Iterable

from ..ike.constants import EncrId
from ..ike.proposals import ENCR_NAMES
from ..xfrm import XfrmError, socket_bypass

# Per ESP cipher the mesh can negotiate (ike.proposals.ENCR_NAMES): IV bytes, ICV bytes and the
# cipher's block size, which the kernel rounds up to 4 (esp4/esp6: ALIGN(crypto_aead_blocksize, 4)).
#   AES-GCM-16, 128 or 256-bit key (RFC 4106 §3.1, §6): 8-byte IV, 16-byte ICV, block 1 (counter mode).
#   ChaCha20-Poly1305 (RFC 7634 §2, §3): 8-byte IV, 16-byte ICV, block 1.
ESP_CIPHERS: dict[EncrId, tuple[int, int, int]] = {
    EncrId.AES_GCM_16: (8, 16, 1),
    EncrId.CHACHA20_POLY1305: (8, 16, 1),
}
NEGOTIABLE = frozenset(encr for encr, _bits in ENCR_NAMES.values())
ESP_HEADER, ESP_TRAILER, ESP_MIN_ALIGN = 8, 2, 4  # SPI + sequence number; pad length + next header
UDP_ENCAP = 8  # NAT-T (RFC 3948): counted always, so the figure holds whether or not a NAT is found
IP_HEADER = {4: 20, 6: 40}
TCP_HEADER = 20
MIN_PATH_MTU = {4: 576, 6: 1280}  # below these (RFC 791, RFC 8200) nothing is derived from a route
IP_MTU, IPV6_MTU = 14, 24  # linux/in.h, linux/in6.h (Python's socket module lacks them)


def _inner_mtu(path_mtu: int, version: int, iv: int, icv: int, block: int) -> int:
    align = max(ESP_MIN_ALIGN, -(-block // 4) * 4)
    ip_header = IP_HEADER[version]
    room = path_mtu - ip_header - UDP_ENCAP - ESP_HEADER - iv - icv
    return room - room % align + ip_header - ESP_TRAILER


def esp_inner_mtu(path_mtu: int, version: int) -> int:
    """The largest IP packet that fits `path_mtu` in transport-mode ESP, whichever cipher is negotiated.

    The kernel's own figure for an SA's route (xfrm_state_mtu, formerly esp4_get_mtu/esp6_get_mtu),
    taken for every cipher of the proposal set, the smallest wins. For a 1500-byte IPv4 path:
    1500 - 20 (IP) - 8 (UDP encapsulation) - 8 (ESP header) - 8 (IV) - 16 (ICV) = 1440, rounded down
    to the 4-byte padding boundary = 1440, + 20 (the IP header is not encrypted) - 2 (pad length and
    next header) = 1458, so at most 1430 bytes of UDP payload; IPv6: 1420 -> 1458, 1410 bytes of UDP.
    """
    return min(_inner_mtu(path_mtu, version, *ESP_CIPHERS[encr]) for encr in NEGOTIABLE)


def mss_clamp(path_mtu: int, version: int) -> int:
    """The TCP MSS whose segments fit `path_mtu` once ESP is added."""
    return esp_inner_mtu(path_mtu, version) - IP_HEADER[version] - TCP_HEADER


def route_mtus(addresses: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> dict:
    """address -> the MTU of the route the calling thread's namespace uses for it (None: no route).

    A connected UDP socket reads it (IP_MTU); no packet is sent. The socket bypasses IPsec so a
    peer's address gives the route under its SA, not the SA's (already reduced) one. One socket
    per family is connected to address after address (a socket each cost ten times as much);
    after a refused connect the next address gets a fresh socket, so no earlier route lingers.
    """
    mtus: dict = {}
    sockets: dict[int, socket.socket] = {}
    try:
        for address in addresses:
            v = address.version
            if v not in sockets:
                sockets[v] = socket.socket(socket.AF_INET if v == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
                try:
                    socket_bypass(sockets[v])
                except XfrmError:
                    pass  # a kernel without XFRM has no SA route to avoid either
            level, option = (socket.IPPROTO_IP, IP_MTU) if v == 4 else (socket.IPPROTO_IPV6, IPV6_MTU)
            try:
                sockets[v].connect((str(address), 9))
                mtus[address] = sockets[v].getsockopt(level, option)
            except OSError:
                mtus[address] = None
                sockets.pop(v).close()
    finally:
        for sock in sockets.values():
            sock.close()
    return mtus


def route_mtu(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int | None:
    """The MTU of the route to one address (None: no route); see route_mtus."""
    return route_mtus((address,))[address]
