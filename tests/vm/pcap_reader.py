"""A small pcap reader that tells ESP from plaintext between two addresses.

Enough of libpcap's file format and of IPv4/IPv6 to classify what tcpdump captured on a
veth: Ethernet, Linux cooked (v1, v2) and raw IP link types; IPv6 extension headers are
walked to the upper-layer protocol. Malformed input raises PcapError.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ESP, PROTO_AH, PROTO_ICMPV6 = 1, 6, 17, 50, 51, 58
NAT_T_PORT = 4500
PROTOCOL_NAMES = {
    PROTO_ICMP: "icmp", PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_ESP: "esp",
    PROTO_AH: "ah", PROTO_ICMPV6: "icmpv6",
}

_LINKTYPE_ETHERNET, _LINKTYPE_RAW, _LINKTYPE_SLL, _LINKTYPE_SLL2 = 1, 101, 113, 276
_LINKTYPE_IPV4, _LINKTYPE_IPV6 = 228, 229
_ETHERTYPE_IPV4, _ETHERTYPE_IPV6 = 0x0800, 0x86DD
_VLAN_ETHERTYPES = {0x8100, 0x88A8}
_IPV6_EXTENSIONS = {0, 43, 60}  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT = 44
_MAGICS = {  # magic number as read little-endian -> (byte order, nanosecond stamps)
    0xA1B2C3D4: ("<", False), 0xD4C3B2A1: (">", False),
    0xA1B23C4D: ("<", True), 0x4D3CB2A1: (">", True),
}


class PcapError(ValueError):
    """The capture file is not a pcap we can read, or a packet in it is cut short."""


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    protocol: int  # upper-layer protocol after any IPv6 extension headers
    sport: int | None = None
    dport: int | None = None
    spi: int | None = None  # ESP SPI, also for ESP in UDP (NAT-T)

    @property
    def is_esp(self) -> bool:
        return self.protocol == PROTO_ESP or self.spi is not None

    @property
    def protocol_name(self) -> str:
        return PROTOCOL_NAMES.get(self.protocol, str(self.protocol))


@dataclass
class TrafficCounts:
    """Packets between two peers (either direction): ESP, and plaintext by protocol."""

    esp: int = 0
    spis: set[int] = field(default_factory=set)
    plaintext: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.esp + sum(self.plaintext.values())


def read_pcap(source: Path | bytes) -> list[Packet]:
    """All IP packets in a pcap file (non-IP frames such as ARP are left out)."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if len(data) < 24:
        raise PcapError("file shorter than a pcap global header")
    (magic,) = struct.unpack_from("<I", data, 0)
    if magic not in _MAGICS:
        raise PcapError(f"not a pcap file (magic {magic:#010x})")
    order, _ = _MAGICS[magic]
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF
    packets = []
    offset = 24
    while offset < len(data):
        if offset + 16 > len(data):
            raise PcapError("record header cut short")
        caplen = struct.unpack_from(order + "I", data, offset + 8)[0]
        frame = data[offset + 16 : offset + 16 + caplen]
        if len(frame) != caplen:
            raise PcapError("record data cut short")
        offset += 16 + caplen
        ip = _ip_payload(frame, linktype)
        if ip is not None:
            packets.append(_parse_ip(ip))
    return packets


def count_traffic(packets: list[Packet], peer_a: str, peer_b: str) -> TrafficCounts:
    """Classify the packets exchanged between two addresses."""
    peers = {ipaddress.ip_address(peer_a), ipaddress.ip_address(peer_b)}
    counts = TrafficCounts()
    for packet in packets:
        ends = {ipaddress.ip_address(packet.src), ipaddress.ip_address(packet.dst)}
        if ends != peers:
            continue
        if packet.is_esp:
            counts.esp += 1
            if packet.spi is not None:
                counts.spis.add(packet.spi)
        else:
            counts.plaintext[packet.protocol_name] += 1
    return counts


def _ip_payload(frame: bytes, linktype: int) -> bytes | None:
    """The IP datagram inside a link-layer frame, or None for non-IP frames."""
    if linktype in (_LINKTYPE_RAW, _LINKTYPE_IPV4, _LINKTYPE_IPV6):
        return frame
    if linktype == _LINKTYPE_ETHERNET:
        offset, ethertype = 12, None
        while True:
            _need(frame, offset + 2, "Ethernet header")
            ethertype = struct.unpack_from("!H", frame, offset)[0]
            if ethertype not in _VLAN_ETHERTYPES:
                break
            offset += 4
        start = offset + 2
    elif linktype == _LINKTYPE_SLL:
        _need(frame, 16, "Linux cooked header")
        ethertype, start = struct.unpack_from("!H", frame, 14)[0], 16
    elif linktype == _LINKTYPE_SLL2:
        _need(frame, 20, "Linux cooked v2 header")
        ethertype, start = struct.unpack_from("!H", frame, 0)[0], 20
    else:
        raise PcapError(f"unsupported link type {linktype}")
    if ethertype not in (_ETHERTYPE_IPV4, _ETHERTYPE_IPV6):
        return None
    return frame[start:]


def _parse_ip(ip: bytes) -> Packet:
    _need(ip, 1, "IP header")
    version = ip[0] >> 4
    if version == 4:
        _need(ip, 20, "IPv4 header")
        header_len = (ip[0] & 0x0F) * 4
        _need(ip, header_len, "IPv4 options")
        first_fragment = struct.unpack_from("!H", ip, 6)[0] & 0x1FFF == 0
        src, dst = ipaddress.IPv4Address(ip[12:16]), ipaddress.IPv4Address(ip[16:20])
        return _transport(str(src), str(dst), ip[9], ip[header_len:] if first_fragment else b"")
    if version == 6:
        _need(ip, 40, "IPv6 header")
        src, dst = ipaddress.IPv6Address(ip[8:24]), ipaddress.IPv6Address(ip[24:40])
        protocol, payload = _skip_ipv6_extensions(ip[6], ip[40:])
        return _transport(str(src), str(dst), protocol, payload)
    raise PcapError(f"IP version {version}")


def _skip_ipv6_extensions(next_header: int, payload: bytes) -> tuple[int, bytes]:
    for _ in range(16):  # bounded: a real packet has a handful at most
        if next_header in _IPV6_EXTENSIONS:
            _need(payload, 2, "IPv6 extension header")
            length = (payload[1] + 1) * 8
        elif next_header == _IPV6_FRAGMENT:
            _need(payload, 8, "IPv6 fragment header")
            if struct.unpack_from("!H", payload, 2)[0] & 0xFFF8:
                return payload[0], b""  # not the first fragment: no upper-layer header
            length = 8
        elif next_header == PROTO_AH:
            _need(payload, 2, "AH header")
            length = (payload[1] + 2) * 4
        else:
            return next_header, payload
        _need(payload, length, "IPv6 extension header")
        next_header, payload = payload[0], payload[length:]
    raise PcapError("too many IPv6 extension headers")


def _transport(src: str, dst: str, protocol: int, payload: bytes) -> Packet:
    if protocol == PROTO_ESP:
        return Packet(src, dst, protocol, spi=_u32(payload))
    if protocol in (PROTO_TCP, PROTO_UDP) and len(payload) >= 4:
        sport, dport = struct.unpack_from("!HH", payload, 0)
        spi = None
        if protocol == PROTO_UDP and NAT_T_PORT in (sport, dport):
            # ESP in UDP (RFC 3948): a zero first word is the non-ESP marker (IKE), a
            # single 0xff byte is a NAT keepalive.
            candidate = _u32(payload[8:])
            spi = candidate if candidate else None
        return Packet(src, dst, protocol, sport, dport, spi)
    if protocol in (PROTO_ICMP, PROTO_ICMPV6) and len(payload) >= 2:
        # As XFRM selectors do: the ICMP type in sport, the code in dport.
        return Packet(src, dst, protocol, payload[0], payload[1])
    return Packet(src, dst, protocol)


def _u32(data: bytes) -> int | None:
    return struct.unpack_from("!I", data, 0)[0] if len(data) >= 4 else None


def _need(data: bytes, length: int, what: str) -> None:
    if len(data) < length:
        raise PcapError(f"{what} cut short ({len(data)} of {length} bytes)")
