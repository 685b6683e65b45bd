"""Self-tests of the interop harness: charon against charon in network namespaces."""
from __future__ import annotations

import socket
import time

import pytest

from .harness import netns
from .harness.capture import NOTIFY_COOKIE, PAYLOAD_SKF
from .harness.charon import Charon
from .harness.half_open import send_half_open
from .harness.peers import Side
from .harness.pki import CertificateAuthority
from .harness.swanctl import Child, IkeSa

pytestmark = pytest.mark.interop

IKE_PROPOSAL = "aes256gcm16-prfsha256-x25519"


def sides(pair, family: str = "ipv4") -> tuple[Side, Side]:
    return (Side(pair.left, pair.left.addrs[family], "left.test"),
            Side(pair.right, pair.right.addrs[family], "right.test"))


def only_sa(charon: Charon, name: str = "conn") -> IkeSa:
    sas = [sa for sa in charon.list_sas() if sa.name == name]
    assert len(sas) == 1, sas
    return sas[0]


def assert_mirrored(left: IkeSa, right: IkeSa) -> None:
    """Both ends describe the same IKE_SA from opposite sides."""
    assert (left.spi_i, left.spi_r) == (right.spi_i, right.spi_r)
    assert left.initiator and not right.initiator
    assert (left.local_id, left.remote_id) == (right.remote_id, right.local_id)
    assert (left.local_host, left.remote_host) == (right.remote_host, right.local_host)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_psk_ike_only(topology, charons, family):
    left, right = charons.pair(*sides(topology.pair(ipv6=True), family),
                               proposals=IKE_PROPOSAL, childless="force")
    left.initiate(ike="conn")
    on_right = right.wait_established("conn")
    on_left = only_sa(left)
    assert_mirrored(on_left, on_right)
    assert on_left.state == "ESTABLISHED" and on_left.children == []
    assert (on_left.encr_alg, on_left.encr_keysize) == ("AES_GCM_16", "256")
    assert (on_left.prf_alg, on_left.dh_group) == ("PRF_HMAC_SHA2_256", "CURVE_25519")
    assert on_left.local_id == "left.test" and on_left.remote_id == "right.test"


@pytest.mark.parametrize("key_type", ["ecdsa", "ed25519", "rsa"])
def test_certificate_auth(topology, charons, key_type):
    ca = CertificateAuthority(key_type="ecdsa")
    left, right = charons.pair(*sides(topology.pair()), ca=ca, key_type=key_type,
                               proposals=IKE_PROPOSAL, childless="force")
    left.initiate(ike="conn")
    on_right = right.wait_established("conn")
    assert_mirrored(only_sa(left), on_right)
    assert "with pre-shared key" not in right.log
    assert "authentication of 'left.test' with" in right.log


@pytest.mark.parametrize("ike_proposal,esp_proposal,encr", [
    ("aes256gcm16-prfsha256-x25519", "aes256gcm16-x25519", "AES_GCM_16"),
    ("chacha20poly1305-prfsha256-modp2048", "chacha20poly1305-modp2048", "CHACHA20_POLY1305"),
])
def test_fake_esp_transport_child(topology, charons, shim_path, ike_proposal, esp_proposal,
                                  encr):
    pair = topology.pair()
    child = Child(mode="transport", esp_proposals=esp_proposal)
    left, right = charons.pair(*sides(pair), fake_esp=True, shim_path=shim_path,
                               proposals=ike_proposal, children={"child": child})
    left.initiate(child="child", ike="conn")
    on_right = right.wait_established("conn", ("child",)).child("child")
    on_left = left.wait_established("conn", ("child",)).child("child")
    assert on_left.mode == on_right.mode == "TRANSPORT"
    assert on_left.encr_alg == on_right.encr_alg == encr
    assert (on_left.spi_in, on_left.spi_out) == (on_right.spi_out, on_right.spi_in)
    assert on_left.local_ts == ["10.0.0.1/32"] and on_left.remote_ts == ["10.0.0.2/32"]
    # The shim faked the SAs, the kernel still holds charon's policies.
    for charon, ns in ((left, pair.left), (right, pair.right)):
        rewrites = charon.shim_log_path.read_text()
        assert "NEWSA->noop" in rewrites and "UPDSA->DELSA" in rewrites
        assert ns.run(["ip", "xfrm", "state"]).stdout.strip() == ""
        policies = ns.run(["ip", "xfrm", "policy"]).stdout
        assert "mode transport" in policies and "dir out" in policies
    assert f"spi 0x{on_left.spi_out}" in pair.left.run(["ip", "xfrm", "policy"]).stdout


def test_forced_fragmentation_in_capture(topology, charons, capture_factory):
    pair = topology.pair()
    small = {"fragment_size": 100}   # IKE_AUTH with PSK is ~150 bytes
    left_side, right_side = sides(pair)
    left_side.settings, right_side.settings = small, small
    left, right = charons.pair(left_side, right_side, proposals=IKE_PROPOSAL,
                               childless="force", fragmentation="force")
    capture = capture_factory(pair.left)
    left.initiate(ike="conn")
    right.wait_established("conn")
    capture.stop()
    auth = [m for m in capture.ike_messages() if m.exchange == "IKE_AUTH"]
    fragments = [m for m in auth if m.payloads == [PAYLOAD_SKF]]
    assert fragments and len(fragments) == len(auth)
    requests = sorted(m.fragment for m in fragments if not m.response)
    total = requests[0][1]
    assert total > 1 and requests == [(n, total) for n in range(1, total + 1)]


@pytest.mark.parametrize("family,router_outside", [("ipv4", "203.0.113.1"),
                                                   ("ipv6", "fd02::1")])
def test_forced_encap_through_nat(topology, charons, capture_factory, shim_path, family,
                                  router_outside):
    nat = topology.nat(ipv6=family == "ipv6")
    left_side = Side(nat.left, nat.left.addrs[family], "left.test")
    right_side = Side(nat.right, nat.right.addrs[family], "right.test")
    left, right = charons.pair(left_side, right_side, fake_esp=True, shim_path=shim_path,
                               proposals=IKE_PROPOSAL, encap=True,
                               children={"child": Child(mode="transport")})
    capture = capture_factory(nat.right)
    left.initiate(child="child", ike="conn")
    on_right = right.wait_established("conn", ("child",))
    on_left = left.wait_established("conn", ("child",))
    capture.stop()
    assert on_left.nat_local and on_right.nat_remote
    assert on_right.remote_host == router_outside and on_right.remote_port != 500
    assert on_left.remote_port == 4500 and on_left.child("child").encap
    assert on_right.child("child").encap
    messages = capture.ike_messages()
    init = [m for m in messages if m.exchange == "IKE_SA_INIT"]
    later = [m for m in messages if m.exchange != "IKE_SA_INIT"]
    assert init and all(m.dport == 500 or m.sport == 500 for m in init)
    assert later and all(m.non_esp_marker for m in later)
    assert {m.src for m in messages if not m.response} == {router_outside}


def test_forced_encap_without_nat(topology, charons):
    left, right = charons.pair(*sides(topology.pair()), proposals=IKE_PROPOSAL,
                               childless="force", encap=True)
    left.initiate(ike="conn")
    on_right = right.wait_established("conn")
    on_left = only_sa(left)
    assert on_left.remote_port == on_right.remote_port == 4500
    # encap=yes fakes the NAT-D hash, so each end believes the other is behind a NAT.
    for sa in (on_left, on_right):
        assert sa.nat_remote and sa.nat_any and not sa.nat_local


def test_rekey_ike_and_child(topology, charons, shim_path):
    left, right = charons.pair(*sides(topology.pair()), fake_esp=True, shim_path=shim_path,
                               proposals=IKE_PROPOSAL,
                               children={"child": Child(mode="transport",
                                                        esp_proposals="aes256gcm16-x25519")})
    left.initiate(child="child", ike="conn", wait=False)
    before = right.wait_established("conn", ("child",))
    old_spis = {before.child("child").spi_in, before.child("child").spi_out}

    right.rekey(child="child")   # the responder may rekey too
    def child_rekeyed(sas):
        # The old CHILD_SA lingers (REKEYED/DELETED) for charon.delete_rekeyed_delay.
        return [sa for sa in sas if sa.name == "conn" and
                [bool(old_spis & {c.spi_in, c.spi_out})
                 for c in sa.children if c.state == "INSTALLED"] == [False]]
    after_child = left.wait_for(child_rekeyed, what="CHILD_SA rekeyed")[0].child("child")
    assert right.wait_for(child_rekeyed, what="old CHILD_SA gone on right")
    assert after_child.dh_group == "CURVE_25519"   # PFS from esp_proposals

    left.rekey(ike="conn")
    def ike_rekeyed(sas):
        return [sa for sa in sas if sa.state == "ESTABLISHED" and sa.spi_i != before.spi_i]
    new_ike = right.wait_for(ike_rekeyed, what="IKE_SA rekeyed")[0]
    right.wait_for(lambda sas: len(sas) == 1, what="old IKE_SA deleted")
    assert_mirrored(left.wait_for(ike_rekeyed, what="IKE_SA rekeyed on left")[0], new_ike)
    # The CHILD_SA moved to the new IKE_SA unchanged.
    assert new_ike.child("child").spi_in == after_child.spi_out


def test_terminate_reaches_peer(topology, charons):
    left, right = charons.pair(*sides(topology.pair()), proposals=IKE_PROPOSAL,
                               childless="force")
    left.initiate(ike="conn")
    established = right.wait_established("conn")
    with right.vici() as session:
        session.subscribe("ike-updown")
        left.terminate(ike="conn")
        assert left.list_sas() == []
        event = next(session.events(timeout=5), None)
    right.wait_gone("conn", timeout=5)
    assert event is not None and event[0] == "ike-updown"
    assert "up" not in event[1]   # vici marks only "up" events with up=yes
    assert event[1]["conn"]["responder-spi"] == established.spi_r
    assert "received DELETE for IKE_SA" in right.log


def test_cookie_forced(topology, charons, capture_factory):
    """charon demands a COOKIE once ``cookie_threshold`` half-open IKE_SAs exist;
    a hand-made IKE_SA_INIT that is never followed by IKE_AUTH provides one."""
    pair = topology.pair()
    left_side, right_side = sides(pair)
    right_side.settings = {"cookie_threshold": 1}
    left, right = charons.pair(left_side, right_side, proposals=IKE_PROPOSAL,
                               childless="force")
    capture = capture_factory(pair.left)
    held = pair.left.call(send_half_open, right_side.addr)
    assert NOTIFY_COOKIE not in held.notifies and held.spi_r != bytes(8)
    right.wait_for(lambda sas: any(sa.state == "CONNECTING" for sa in sas),
                   what="the half-open IKE_SA")
    left.initiate(ike="conn")
    right.wait_established("conn")
    capture.stop()
    assert capture.cookie_exchange()
    init = [m for m in capture.ike_messages() if m.exchange == "IKE_SA_INIT"]
    with_cookie = [m.response for m in init if NOTIFY_COOKIE in m.notifies]
    # The responder asks first; retransmits may repeat the request with the cookie.
    assert with_cookie[:2] == [True, False] and with_cookie.count(True) == 1, init


def test_dpd_keeps_sa_alive(topology, charons, capture_factory):
    pair = topology.pair()
    left, right = charons.pair(*sides(pair), proposals=IKE_PROPOSAL, childless="force",
                               dpd_delay="1s")
    left.initiate(ike="conn")
    right.wait_established("conn")
    capture = capture_factory(pair.left)
    time.sleep(2.5)
    capture.stop()
    informational = [m for m in capture.ike_messages() if m.exchange == "INFORMATIONAL"]
    assert any(not m.response for m in informational)
    assert any(m.response for m in informational)
    assert only_sa(left).state == "ESTABLISHED"


def test_trap_policy_acquire_starts_child(topology, charons, shim_path):
    pair = topology.pair()
    trapped = Child(mode="transport", start_action="trap")
    left, right = charons.pair(*sides(pair), fake_esp=True, shim_path=shim_path,
                               proposals=IKE_PROPOSAL, children={"child": trapped})
    assert "dir out" in pair.left.run(["ip", "xfrm", "policy"]).stdout

    def send_datagram() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"trigger", ("10.0.0.2", 9))   # kernel ACQUIRE -> charon initiates
    pair.left.call(send_datagram)
    right.wait_established("conn", ("child",))
    assert "acquire" in left.log.lower()


def _udp_echo_once(addr: str, port: int) -> str:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind((addr, port))
        _, peer = sock.recvfrom(64)
        return peer[0]


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_namespace_subprocess_and_callable(topology, family):
    pair = topology.pair(ipv6=True)
    right_addr, left_addr = pair.right.addrs[family], pair.left.addrs[family]
    script = ("import socket, sys\n"
              f"s = socket.socket(socket.{'AF_INET6' if family == 'ipv6' else 'AF_INET'},"
              " socket.SOCK_DGRAM)\n"
              "for _ in range(50):\n"
              f"    s.sendto(b'x', ({right_addr!r}, 9999))\n"
              "    __import__('time').sleep(0.05)\n")
    sender = pair.left.popen(pair.left.python_argv("-c", script))
    try:
        assert pair.right.call(_udp_echo_once, right_addr, 9999) == left_addr
    finally:
        sender.kill()
    imported = pair.left.run(pair.left.python_argv(
        "-c", "import tests.interop.harness.netns as m; print(m.__file__)")).stdout.strip()
    assert imported == netns.__file__   # the subprocess runs the code under test
    links = pair.left.run(["ip", "-br", "link"]).stdout
    assert "eth0" in links and len(links.splitlines()) == 2   # lo and eth0 only
