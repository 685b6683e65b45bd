"""The XFRM layer with real ESP: run inside the VM tier (a kernel with esp4/esp6).

Two namespaces on a veth; both ends programmed only through ipsec_mesh.xfrm;
traffic with ping; tcpdump on the wire must show ESP and no plaintext.
Outside a kernel with ESP every test skips and says so.
"""

from __future__ import annotations

import errno
import os
import re
import select
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from ipsec_mesh.xfrm import (  # noqa: E402
    Aead,
    Direction,
    Expire,
    Group,
    Lifetime,
    Mark,
    PolicySpec,
    SaSpec,
    Selector,
    Template,
    UdpEncap,
    Xfrm,
    XfrmError,
    codec,
    neighbor_discovery_bypass,
    owned_reqid,
    peer_priority,
    structs,
)
from ipsec_mesh.xfrm.channel import NetlinkChannel  # noqa: E402
from ipsec_mesh.xfrm.constants import MsgType  # noqa: E402
from ipsec_mesh_operator.netns import socket_in  # noqa: E402
from tests.support import xfrm_reference as reference  # noqa: E402
from tests.support.netns import A4, A6, B4, B6, NetnsPair, make_pair, missing_prerequisite  # noqa: E402

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(missing_prerequisite() is not None, reason=str(missing_prerequisite())),
]

GCM = "rfc4106(gcm(aes))"
CHACHA = "rfc7539esp(chacha20,poly1305)"
NO_ESP = (errno.EPROTONOSUPPORT, errno.ENOSYS, errno.ENOENT)


@dataclass
class Peers:
    pair: NetnsPair
    a: Xfrm
    b: Xfrm


@pytest.fixture
def esp_peers():
    pair = make_pair("xfv")
    a, b = Xfrm(pair.a), Xfrm(pair.b)
    try:
        probe = SaSpec(A4, B4, 0x100, owned_reqid(1), Aead(GCM, os.urandom(20)))
        try:
            a.add_sa(probe)
        except XfrmError as error:
            if error.errno in NO_ESP:
                pytest.skip(f"this kernel has no ESP/AEAD ({error}); run in the VM tier")
            raise
        assert a.delete_sa(B4, 0x100)
        yield Peers(pair, a, b)
    finally:
        a.close()
        b.close()
        pair.close()


@dataclass(frozen=True)
class Generation:
    """One pair of SAs (a->b and b->a) with their SPIs."""

    spi_ab: int
    spi_ba: int


def install_sas(esp_peers: Peers, local: str, remote: str, generation: Generation, reqid: int,
                aead: str = GCM, key_len: int = 20, outbound: bool = True, **extra) -> None:
    """Inbound SAs on both ends first; outbound ones only when `outbound`."""
    key_ab, key_ba = os.urandom(key_len), os.urandom(key_len)
    ab = SaSpec(local, remote, generation.spi_ab, reqid, Aead(aead, key_ab), **extra)
    ba = SaSpec(remote, local, generation.spi_ba, reqid, Aead(aead, key_ba), **extra)
    esp_peers.b.add_sa(ab)  # inbound at b
    esp_peers.a.add_sa(ba)  # inbound at a
    if outbound:
        install_outbound(esp_peers, ab, ba)


def install_outbound(esp_peers: Peers, ab: SaSpec, ba: SaSpec) -> None:
    esp_peers.a.add_sa(ab)
    esp_peers.b.add_sa(ba)


def install_policies(esp_peers: Peers, local: str, remote: str, reqid: int) -> None:
    """Both ends: out and in policies for the host pair, ESP required."""
    template = (Template(reqid),)
    for handle, mine, theirs in ((esp_peers.a, local, remote), (esp_peers.b, remote, local)):
        if ":" in mine:
            handle.add_policies(neighbor_discovery_bypass())
        for selector, direction in (
            (Selector.host_pair(mine, theirs), Direction.OUT),
            (Selector.host_pair(theirs, mine), Direction.IN),
        ):
            priority = peer_priority(selector)
            handle.add_policy(PolicySpec(selector, direction, priority=priority, templates=template))


def ping(netns: str, address: str, count: int = 3, interval: float = 0.2) -> subprocess.CompletedProcess:
    command = ["ip", "netns", "exec", netns, "ping", "-c", str(count), "-i", str(interval), "-W", "2", address]
    return subprocess.run(command, capture_output=True, text=True, timeout=60 + count * interval * 2)


@contextmanager
def capture(netns: str, device: str, local: str, remote: str, packets: int = 6):
    """tcpdump of traffic between two hosts on `device`; yields a list of lines filled on exit.

    tcpdump stops by itself after `packets` packets; if the emulated capture
    missed some, it is interrupted after a grace period.
    """
    lines: list[str] = []
    command = ["ip", "netns", "exec", netns, "tcpdump", "-n", "-l", "-i", device, "-c", str(packets),
               f"(ip or ip6) and host {local} and host {remote}"]
    dump = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    try:
        wait_until_listening(dump)
        yield lines
        try:
            output, _ = dump.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            dump.send_signal(signal.SIGINT)
            output, _ = dump.communicate(timeout=10)
        lines.extend(line for line in output.decode(errors="replace").splitlines() if line.strip())
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait()


def wait_until_listening(dump: subprocess.Popen, seconds: float = 20.0) -> None:
    """Read tcpdump's stderr (unbuffered, so select() sees all of it) until it listens."""
    end = time.monotonic() + seconds
    said = b""
    while b"listening" not in said and time.monotonic() < end:
        ready, _, _ = select.select([dump.stderr], [], [], max(0.0, end - time.monotonic()))
        chunk = os.read(dump.stderr.fileno(), 4096) if ready else b""
        if not chunk:
            raise AssertionError(f"tcpdump did not start listening: {said!r}")
        said += chunk
    if b"listening" not in said:
        raise AssertionError(f"tcpdump did not start listening: {said!r}")


def assert_esp_only(lines: list[str], local: str, remote: str, minimum: int = 3) -> None:
    """Between the two hosts only ESP, apart from the ND that the bypass policies exempt.

    Software-emulated captures may miss a packet, so `minimum` is the ping count,
    not twice it.
    """
    hosts = "|".join(re.escape(address) for address in (local, remote))
    unicast = re.compile(rf"IP6? ({hosts})(\.\d+)? > ({hosts})(\.\d+)?: ")
    exempt = ("neighbor solicitation", "neighbor advertisement")  # neighbor_discovery_bypass()
    between = [line for line in lines if unicast.search(line) and not any(e in line for e in exempt)]
    esp = [line for line in between if "ESP(" in line]
    assert len(esp) >= minimum, lines
    assert [line for line in between if "ESP(" not in line] == [], between


def test_gcm_transport_ipv4_carries_ping_as_esp_only(esp_peers):
    reqid = owned_reqid(10)
    install_sas(esp_peers, A4, B4, Generation(0x1001, 0x1002), reqid)
    install_policies(esp_peers, A4, B4, reqid)
    with capture(esp_peers.pair.b, esp_peers.pair.veth_b, A4, B4) as lines:
        result = ping(esp_peers.pair.a, B4)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_esp_only(lines, A4, B4)
    outbound = esp_peers.a.get_sa(B4, 0x1001)
    assert outbound.current.packets >= 3
    assert outbound.aead_name == GCM and outbound.esn and outbound.owned and not outbound.larval


def test_chacha_transport_ipv6(esp_peers):
    reqid = owned_reqid(11)
    install_sas(esp_peers, A6, B6, Generation(0x2001, 0x2002), reqid, aead=CHACHA, key_len=36)
    install_policies(esp_peers, A6, B6, reqid)
    with capture(esp_peers.pair.b, esp_peers.pair.veth_b, A6, B6) as lines:
        result = ping(esp_peers.pair.a, B6)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_esp_only(lines, A6, B6)
    assert {sa.aead_name for sa in esp_peers.b.dump_sas()} == {CHACHA}


def test_udp_encapsulated_esp(esp_peers):
    reqid = owned_reqid(12)
    sockets = []
    for netns, address in ((esp_peers.pair.a, A4), (esp_peers.pair.b, B4)):
        natt = socket_in(netns, socket.AF_INET)
        natt.bind((address, 4500))
        Xfrm.socket_bypass(natt)
        Xfrm.set_udp_encap(natt)
        sockets.append(natt)
    try:
        install_sas(esp_peers, A4, B4, Generation(0x3001, 0x3002), reqid, encap=UdpEncap(4500, 4500))
        install_policies(esp_peers, A4, B4, reqid)
        with capture(esp_peers.pair.b, esp_peers.pair.veth_b, A4, B4) as lines:
            result = ping(esp_peers.pair.a, B4)
        assert result.returncode == 0, result.stdout + result.stderr
        assert_esp_only(lines, A4, B4)
        assert any("4500" in line and "UDP-encap" in line for line in lines), lines
        assert esp_peers.a.get_sa(B4, 0x3001).encap == UdpEncap(4500, 4500)
    finally:
        for natt in sockets:
            natt.close()


def test_rekey_make_before_break_loses_nothing(esp_peers):
    reqid = owned_reqid(13)
    old, new = Generation(0x4001, 0x4002), Generation(0x4101, 0x4102)
    install_sas(esp_peers, A4, B4, old, reqid)
    install_policies(esp_peers, A4, B4, reqid)
    command = ["ip", "netns", "exec", esp_peers.pair.a, "ping", "-c", "40", "-i", "0.05", "-W", "2", B4]
    pinger = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.5)
        key_ab, key_ba = os.urandom(20), os.urandom(20)
        ab = SaSpec(A4, B4, new.spi_ab, reqid, Aead(GCM, key_ab))
        ba = SaSpec(B4, A4, new.spi_ba, reqid, Aead(GCM, key_ba))
        esp_peers.b.add_sa(ab)  # 1. new inbound SAs on both ends
        esp_peers.a.add_sa(ba)
        install_outbound(esp_peers, ab, ba)  # 2. new outbound SAs (newest wins)
        time.sleep(0.3)
        assert esp_peers.a.delete_sa(B4, old.spi_ab)  # 3. old outbound, then old inbound
        assert esp_peers.b.delete_sa(A4, old.spi_ba)
        time.sleep(0.3)
        assert esp_peers.b.delete_sa(B4, old.spi_ab)
        assert esp_peers.a.delete_sa(A4, old.spi_ba)
        output, _ = pinger.communicate(timeout=60)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
    assert " 0% packet loss" in output, output
    assert esp_peers.a.get_sa(B4, new.spi_ab).current.packets > 0


def test_soft_expire_event_on_packet_limit(esp_peers):
    reqid = owned_reqid(14)
    esp_peers.a.subscribe([Group.EXPIRE])
    install_sas(esp_peers, A4, B4, Generation(0x5001, 0x5002), reqid, lifetime=Lifetime(soft_packets=3))
    install_policies(esp_peers, A4, B4, reqid)
    assert ping(esp_peers.pair.a, B4, count=5).returncode == 0
    expiries = [event for event in esp_peers.a.iter_events(timeout=3) if isinstance(event, Expire)]
    assert any(e.sa.spi == 0x5001 and not e.hard and e.owned for e in expiries), expiries


def test_allocated_spi_is_completed_by_update_sa(esp_peers):
    reqid = owned_reqid(15)
    spi_ab = esp_peers.b.alloc_spi(A4, B4)  # b reserves its inbound SPI, as a responder would
    assert esp_peers.b.get_sa(B4, spi_ab).larval
    key_ab, key_ba = os.urandom(20), os.urandom(20)
    esp_peers.b.update_sa(SaSpec(A4, B4, spi_ab, reqid, Aead(GCM, key_ab)))
    esp_peers.a.add_sa(SaSpec(B4, A4, 0x6002, reqid, Aead(GCM, key_ba)))
    install_outbound(esp_peers, SaSpec(A4, B4, spi_ab, reqid, Aead(GCM, key_ab)),
                     SaSpec(B4, A4, 0x6002, reqid, Aead(GCM, key_ba)))
    install_policies(esp_peers, A4, B4, reqid)
    assert not esp_peers.b.get_sa(B4, spi_ab).larval
    assert ping(esp_peers.pair.a, B4).returncode == 0
    result = esp_peers.a.flush_owned()
    assert (result.policies, result.sas) == (2, 2)


def test_real_sa_dumps_and_expires_decode_as_pyroute2_decodes_them(esp_peers):
    """Full SAs exist only here (the host kernel has no ESP): the kernel's SA dump (keys included)
    and an EXPIRE decoded by the XFRM layer's own codec and by pyroute2 (tests/support/xfrm_reference.py)
    to the same fields, attributes and model; ours never keeps the key."""
    reqid = owned_reqid(16)
    events = NetlinkChannel(esp_peers.pair.a, groups=[Group.EXPIRE])
    try:
        install_sas(esp_peers, A4, B4, Generation(0x7001, 0x7002), reqid, lifetime=Lifetime(soft_packets=2))
        install_policies(esp_peers, A4, B4, reqid)
        unused = (  # the attributes the layer sends (but TFC padding: tunnel mode only), on SAs no policy uses
            SaSpec(B6, A6, 0x7101, reqid, Aead(CHACHA, os.urandom(36)), esn=True, replay_window=256,
                   mark=Mark(3, 0xFF), output_mark=Mark(5, 0xFF)),
            SaSpec(B4, A4, 0x7102, reqid, Aead(GCM, os.urandom(36)), replay_window=32, encap=UdpEncap(4500, 4501)),
        )
        for spec in unused:
            esp_peers.a.add_sa(spec)
        assert ping(esp_peers.pair.a, B4, count=4).returncode == 0
        channel = NetlinkChannel(esp_peers.pair.a)
        try:
            replies = channel.dump(codec.dump_request(structs.UserSaInfoMsg), MsgType.GETSA, "vm")
        finally:
            channel.close()
        assert events.wait_readable(5.0)
        expires = [r for r in events.read_pending()[0] if r.msg_type == MsgType.EXPIRE]
    finally:
        events.close()
    assert len(replies) == 4 and expires
    for reply in replies:
        ours = reference.assert_decoded_alike(structs.UserSaInfoMsg, reply.data)
        theirs = reference.decode(structs.UserSaInfoMsg, reply.data)
        assert codec.sa_from(ours) == codec.sa_from(theirs) and not codec.sa_from(ours).larval
        assert theirs.get_attr("XFRMA_ALG_AEAD")["alg_key"] and "alg_key" not in ours.get_attr("XFRMA_ALG_AEAD")
    decoded = {codec.sa_from(reference.assert_decoded_alike(structs.UserSaInfoMsg, r.data)).spi: r for r in replies}
    assert set(decoded) == {0x7002, 0x7001, 0x7101, 0x7102}
    for reply in expires:
        ours = reference.assert_decoded_alike(structs.UserExpireMsg, reply.data)
        assert codec.sa_from(ours) == codec.sa_from(reference.decode(structs.UserExpireMsg, reply.data))
