"""The pcap reader used to prove 'only ESP on the wire', on hand-built captures."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from tests.vm.pcap_reader import PcapError, count_traffic, read_pcap

MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def pcap(frames: list[bytes], linktype: int = 1, byteorder: str = "<") -> bytes:
    header = struct.pack(byteorder + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    records = b"".join(
        struct.pack(byteorder + "IIII", 1, 0, len(frame), len(frame)) + frame for frame in frames
    )
    return header + records


def ethernet(payload: bytes, ethertype: int) -> bytes:
    return MAC_B + MAC_A + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, protocol: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(payload), 1, 0, 64, protocol, 0)
    return header + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes) -> bytes:
    header = struct.pack("!IHBB", 0x60000000, len(payload), next_header, 64)
    return header + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload


def esp(spi: int) -> bytes:
    return struct.pack("!II", spi, 1) + b"\x00" * 32


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, 0x02, 1024, 0, 0)


def test_esp_and_plaintext_between_the_peers_are_told_apart():
    hop_by_hop = bytes([6, 0]) + b"\x00" * 6  # next header TCP, 8 bytes long
    frames = [
        ethernet(ipv4("10.0.0.1", "10.0.0.2", 50, esp(0x1000)), 0x0800),
        ethernet(ipv4("10.0.0.2", "10.0.0.1", 50, esp(0x2000)), 0x0800),
        ethernet(ipv4("10.0.0.1", "10.0.0.2", 1, b"\x08\x00" + b"\x00" * 6), 0x0800),
        ethernet(ipv6("fd00::1", "fd00::2", 0, hop_by_hop + tcp(4000, 80)), 0x86DD),
        ethernet(ipv4("10.0.0.1", "10.0.0.9", 1, b"\x08\x00" + b"\x00" * 6), 0x0800),  # other host
        ethernet(b"\x00" * 28, 0x0806),  # ARP: not IP, left out
    ]
    packets = read_pcap(pcap(frames))

    assert len(packets) == 5
    v4 = count_traffic(packets, "10.0.0.2", "10.0.0.1")
    assert (v4.esp, v4.spis, dict(v4.plaintext)) == (2, {0x1000, 0x2000}, {"icmp": 1})
    v6 = count_traffic(packets, "fd00:0::2", "fd00::1")
    assert (v6.esp, dict(v6.plaintext), v6.total) == (0, {"tcp": 1}, 1)
    assert packets[3].dport == 80


def test_esp_in_udp_is_esp_but_ike_and_keepalives_are_not():
    frames = [
        ipv4("10.0.0.1", "10.0.0.2", 17, udp(4500, 4500, esp(0xABCD))),
        ipv4("10.0.0.1", "10.0.0.2", 17, udp(4500, 4500, b"\x00\x00\x00\x00" + b"ike")),
        ipv4("10.0.0.1", "10.0.0.2", 17, udp(4500, 4500, b"\xff")),
    ]
    counts = count_traffic(read_pcap(pcap(frames, linktype=101)), "10.0.0.1", "10.0.0.2")
    assert (counts.esp, counts.spis, dict(counts.plaintext)) == (1, {0xABCD}, {"udp": 2})


@pytest.mark.parametrize("linktype, wrap", [
    (113, lambda ip: b"\x00\x00\x00\x01\x00\x06" + MAC_A + b"\x00\x00" + b"\x08\x00" + ip),
    (276, lambda ip: b"\x08\x00" + b"\x00" * 18 + ip),
    (1, lambda ip: MAC_B + MAC_A + b"\x81\x00\x00\x05" + b"\x08\x00" + ip),  # VLAN tag
])
def test_link_layers(linktype, wrap):
    frame = wrap(ipv4("10.0.0.1", "10.0.0.2", 50, esp(7)))
    for byteorder in "<>":
        (packet,) = read_pcap(pcap([frame], linktype, byteorder))
        assert (packet.src, packet.dst, packet.spi) == ("10.0.0.1", "10.0.0.2", 7)


@pytest.mark.parametrize("data, message", [
    (b"", "shorter than a pcap global header"),
    (b"\x00" * 24, "not a pcap file"),
    (pcap([b"\x00" * 14])[:-3], "record data cut short"),
    (pcap([b"\x00" * 14]) + b"\x01", "record header cut short"),
    (pcap([ethernet(b"\x45\x00", 0x0800)]), "IPv4 header cut short"),
    (pcap([ethernet(b"\x70" + b"\x00" * 40, 0x0800)]), "IP version 7"),
    (pcap([ethernet(ipv6("fd00::1", "fd00::2", 0, b"\x00"), 0x86DD)]), "IPv6 extension header"),
    (pcap([b"\x00" * 20], linktype=147), "unsupported link type 147"),
])
def test_malformed_captures_raise_pcap_error(data, message):
    with pytest.raises(PcapError, match=message):
        read_pcap(data)


def test_extension_header_loop_is_bounded():
    chain = bytes([0, 0]) + b"\x00" * 6  # hop-by-hop pointing at another hop-by-hop
    frame = ethernet(ipv6("fd00::1", "fd00::2", 0, chain * 20), 0x86DD)
    with pytest.raises(PcapError, match="too many IPv6 extension headers"):
        read_pcap(pcap([frame]))
