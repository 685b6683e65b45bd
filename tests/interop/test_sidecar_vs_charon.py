"""Our sidecar against strongSwan's charon (Debian 5.9.8), in network namespaces.

Our sidecar runs with the `none` data plane (the host kernel has no ESP); charon runs
with the fake-ESP shim so its CHILD_SAs reach INSTALLED. Assertions are made on
charon's own view (`list-sas` over vici) and on ours (the sidecar's status endpoint).
"""
from __future__ import annotations

import time

import pytest

from tests.support.pki import MeshPki

from .harness.sidecar import Sidecar
from .harness.swanctl import Child, Connection

pytestmark = pytest.mark.interop

PSK = "interop-test-psk-0123456789abcdef"
OURS = "ours.default.pod.mesh.test"
THEIRS = "charon.default.pod.mesh.test"


def charon_for(charons, ns, shim_path, *, peer_addr, local_addr, ike="aes256gcm16-prfsha256-x25519",
               esp="aes256gcm16-esn", cert=None, ca_pem=None, child_options=None, settings=None, **conn):
    charon = charons.new(ns, fake_esp=True, shim_path=shim_path, settings=settings or {})
    child_fields = {"mode": "transport", "esp_proposals": esp, "local_ts": f"{local_addr}/32",
                    "remote_ts": f"{peer_addr}/32", **(child_options or {})}
    child = Child(**child_fields)
    connection = Connection(local_addrs=local_addr, remote_addrs=peer_addr, local_id=THEIRS, remote_id=OURS,
                            proposals=ike, children={"child": child}, **conn)
    if cert is None:
        charon.add_psk(PSK, THEIRS, OURS)
    else:
        connection.auth = "pubkey"
        connection.local_certs = charon.add_identity("charon", cert.cert_pem(), cert.key_pem(), (ca_pem,))
    charon.add_connection("conn", connection)
    return charon.start()


def our_sidecar(ns, tmp_path, *, address, peer, initiate, psk=PSK, **kwargs):
    return Sidecar(ns, tmp_path, address=address, identity=OURS, peer_address=f"{peer}/32",
                   peer_identity=THEIRS, psk=psk, initiate=initiate, **kwargs).start()


def assert_same_child(ours_sa: dict, theirs) -> None:
    child = theirs.child("child")
    assert child is not None and child.state == "INSTALLED" and child.mode == "TRANSPORT"
    mine = [c for c in ours_sa["children"] if c["state"] == "installed"][0]
    # Our inbound SPI is charon's outbound, and the other way round.
    assert int(mine["inbound_spi"], 16) == int(child.spi_out, 16)
    assert int(mine["outbound_spi"], 16) == int(child.spi_in, 16)


@pytest.fixture
def pair(topology):
    return topology.pair(ipv6=False)


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-initiates", "charon-initiates"])
def test_psk_ike_and_child(pair, charons, shim_path, tmp_path, we_initiate):
    charon = charon_for(charons, pair.right, shim_path, peer_addr="10.0.0.1", local_addr="10.0.0.2")
    ours = our_sidecar(pair.left, tmp_path, address="10.0.0.1", peer="10.0.0.2", initiate=we_initiate)
    if not we_initiate:
        charon.initiate(child="child", ike="conn")
    theirs = charon.wait_established("conn", ("child",))
    sa = ours.established()
    assert theirs.initiator != we_initiate
    assert theirs.remote_id == OURS and sa["remote_id"] == f"fqdn:{THEIRS}"
    assert theirs.encr_alg == "AES_GCM_16" and theirs.dh_group == "CURVE_25519"
    assert_same_child(sa, theirs)


ALGORITHMS = [
    ("aes256gcm16-prfsha256-x25519", "aes256gcm16-esn", "AES_GCM_16", "CURVE_25519"),
    ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305-esn", "CHACHA20_POLY1305", "CURVE_25519"),
    ("aes128gcm16-prfsha384-modp2048", "aes128gcm16-esn", "AES_GCM_16", "MODP_2048"),
    ("chacha20poly1305-prfsha512-ecp256", "chacha20poly1305-noesn", "CHACHA20_POLY1305", "ECP_256"),
]


@pytest.mark.parametrize("ike,esp,encr,group", ALGORITHMS)
def test_algorithms(pair, charons, shim_path, tmp_path, ike, esp, encr, group):
    charon = charon_for(charons, pair.right, shim_path, peer_addr="10.0.0.1", local_addr="10.0.0.2",
                        ike=ike, esp=esp)
    ours = our_sidecar(pair.left, tmp_path, address="10.0.0.1", peer="10.0.0.2", initiate=True, ike=ike, esp=esp)
    theirs = charon.wait_established("conn", ("child",))
    assert theirs.encr_alg == encr and theirs.dh_group == group
    assert theirs.child("child").encr_alg == encr
    assert_same_child(ours.established(), theirs)


def test_default_hybrid_proposal_falls_back_to_classic_with_charon_5(pair, charons, shim_path, tmp_path):
    """Our default offers X25519+ML-KEM-768 first; charon 5.9 has no RFC 9370 and picks our classic proposal."""
    charon = charon_for(charons, pair.right, shim_path, peer_addr="10.0.0.1", local_addr="10.0.0.2")
    ours = our_sidecar(pair.left, tmp_path, address="10.0.0.1", peer="10.0.0.2", initiate=True,
                       ike="aes256gcm16-prfsha256-x25519-ke1_mlkem768")
    deadline = time.monotonic() + 10
    while "NO_PROPOSAL_CHOSEN" not in ours.log and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "NO_PROPOSAL_CHOSEN" in ours.log, "a hybrid-only proposal cannot agree with charon 5.9"
    # The default proposals (hybrid first, classic second) do agree:
    ours.stop()
    ours = Sidecar(pair.left, tmp_path, address="10.0.0.1", identity=OURS, peer_address="10.0.0.2/32",
                   peer_identity=THEIRS, psk=PSK, initiate=True, name="default").start()
    theirs = charon.wait_established("conn", ("child",))
    assert theirs.dh_group == "CURVE_25519"
    assert_same_child(ours.established(), theirs)


@pytest.mark.parametrize("key_type", ["p256", "ed25519"])
@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-initiates", "charon-initiates"])
def test_certificates(pair, charons, shim_path, tmp_path, key_type, we_initiate):
    pki = MeshPki()
    theirs_cert = pki.issue("charon", key_type=key_type, dns=[THEIRS])
    ours_cert = pki.issue("ours", key_type=key_type, dns=[OURS])
    charon = charon_for(charons, pair.right, shim_path, peer_addr="10.0.0.1", local_addr="10.0.0.2",
                        cert=theirs_cert, ca_pem=pki.root.cert_pem())
    ours = Sidecar(pair.left, tmp_path, address="10.0.0.1", identity=OURS, peer_address="10.0.0.2/32",
                   peer_identity=THEIRS, cert_pem=ours_cert.cert_pem(), key_pem=ours_cert.key_pem(),
                   ca_pem=pki.root.cert_pem(), initiate=we_initiate).start()
    if not we_initiate:
        charon.initiate(child="child", ike="conn")
    theirs = charon.wait_established("conn", ("child",))
    assert_same_child(ours.established(), theirs)


def test_charon_forced_fragmentation(pair, charons, shim_path, tmp_path, capture_factory):
    capture = capture_factory(pair.right)
    charon = charon_for(charons, pair.right, shim_path, peer_addr="10.0.0.1", local_addr="10.0.0.2",
                        fragmentation="force", settings={"fragment_size": 100})
    ours = our_sidecar(pair.left, tmp_path, address="10.0.0.1", peer="10.0.0.2", initiate=False)
    charon.initiate(child="child", ike="conn")
    theirs = charon.wait_established("conn", ("child",))
    assert_same_child(ours.established(), theirs)
    capture.stop()
    fragments = [m for m in capture.ike_messages() if m.fragment]
    assert len(fragments) >= 4, "charon's IKE_AUTH went out in fragments that we reassembled"


def test_our_fragmentation_with_large_certificates(pair, charons, shim_path, tmp_path, capture_factory):
    pki = MeshPki()
    theirs_cert = pki.issue("charon", key_type="rsa", dns=[THEIRS])
    ours_cert = pki.issue("ours", key_type="rsa", dns=[OURS])
    capture = capture_factory(pair.right)
    charon = charon_for(charons, pair.right, shim_path, peer_addr="10.0.0.1", local_addr="10.0.0.2",
                        cert=theirs_cert, ca_pem=pki.root.cert_pem(), fragmentation="yes")
    ours = Sidecar(pair.left, tmp_path, address="10.0.0.1", identity=OURS, peer_address="10.0.0.2/32",
                   peer_identity=THEIRS, cert_pem=ours_cert.cert_pem(), key_pem=ours_cert.key_pem(),
                   ca_pem=pki.root.cert_pem(), initiate=True, ike_settings={"fragmentSize": 600}).start()
    theirs = charon.wait_established("conn", ("child",))
    assert_same_child(ours.established(), theirs)
    capture.stop()
    ours_fragments = [m for m in capture.ike_messages() if m.fragment and m.src == "10.0.0.1"]
    assert len(ours_fragments) >= 2


@pytest.mark.parametrize("who", ["charon", "ours"])
def test_forced_udp_encapsulation(pair, charons, shim_path, tmp_path, who):
    charon = charon_for(charons, pair.right, shim_path, peer_addr="10.0.0.1", local_addr="10.0.0.2",
                        encap=(who == "charon"))
    ours = our_sidecar(pair.left, tmp_path, address="10.0.0.1", peer="10.0.0.2", initiate=True,
                       ike_settings={"forceEncap": who == "ours"})
    theirs = charon.wait_established("conn", ("child",))
    assert theirs.remote_port == 4500 and theirs.child("child").encap
    sa = ours.established()
    assert sa["children"][0]["encap"] and sa["remote"].endswith("[4500]")


def test_real_nat(topology, charons, shim_path, tmp_path):
    nat = topology.nat()
    charon = charon_for(charons, nat.right, shim_path, peer_addr="%any", local_addr="203.0.113.2",
                        child_options={"remote_ts": "dynamic"})
    ours = Sidecar(nat.left, tmp_path, address="192.168.1.2", identity=OURS, peer_address="203.0.113.2/32",
                   peer_identity=THEIRS, psk=PSK, initiate=True).start()
    theirs = charon.wait_established("conn", ("child",))
    assert theirs.nat_remote and theirs.remote_host == "203.0.113.1" and theirs.child("child").encap
    sa = ours.established()
    assert sa["nat_local"] and sa["children"][0]["encap"]


def test_cookies_from_our_side(pair, charons, shim_path, tmp_path, capture_factory):
    capture = capture_factory(pair.left)
    charon = charon_for(charons, pair.right, shim_path, peer_addr="10.0.0.1", local_addr="10.0.0.2")
    ours = our_sidecar(pair.left, tmp_path, address="10.0.0.1", peer="10.0.0.2", initiate=False,
                       ike_settings={"cookieThreshold": 0})
    charon.initiate(child="child", ike="conn")
    theirs = charon.wait_established("conn", ("child",))
    assert_same_child(ours.established(), theirs)
    assert ours.status()["counters"].get("cookies_sent") == 1
    capture.stop()
    assert capture.cookie_exchange()


def test_cookies_from_charon(pair, charons, shim_path, tmp_path, capture_factory):
    """charon demands a COOKIE once `cookie_threshold` IKE_SAs are half-open; a hand-made
    IKE_SA_INIT never followed by IKE_AUTH holds one open. We must answer with the cookie."""
    from .harness.half_open import send_half_open

    capture = capture_factory(pair.left)
    charon = charon_for(charons, pair.right, shim_path, peer_addr="10.0.0.1", local_addr="10.0.0.2",
                        settings={"cookie_threshold": 1})
    pair.left.call(send_half_open, "10.0.0.2")
    charon.wait_for(lambda sas: any(sa.state == "CONNECTING" for sa in sas), what="the half-open IKE_SA")
    ours = our_sidecar(pair.left, tmp_path, address="10.0.0.1", peer="10.0.0.2", initiate=True)
    theirs = charon.wait_established("conn", ("child",), timeout=60)  # includes our start; a bound, not a timing claim
    assert_same_child(ours.established(), theirs)
    capture.stop()
    assert capture.cookie_exchange(), "charon asked for a cookie and we sent it back"


@pytest.mark.parametrize("who", ["charon", "ours"])
def test_dpd(pair, charons, shim_path, tmp_path, capture_factory, who):
    """Liveness checks from either side are answered (each side checks only when it heard nothing)."""
    capture = capture_factory(pair.left)
    charon = charon_for(charons, pair.right, shim_path, peer_addr="10.0.0.1", local_addr="10.0.0.2",
                        dpd_delay="1s" if who == "charon" else None)
    ours = our_sidecar(pair.left, tmp_path, address="10.0.0.1", peer="10.0.0.2", initiate=True,
                       ike_settings={"dpd": 1 if who == "ours" else 0})
    charon.wait_established("conn", ("child",))
    ours.established()
    time.sleep(4)
    assert charon.list_sas()[0].state == "ESTABLISHED"
    assert ours.established()["state"] == "established"
    capture.stop()
    checker = "10.0.0.1" if who == "ours" else "10.0.0.2"
    informational = [m for m in capture.ike_messages() if m.exchange == "INFORMATIONAL"]
    requests = [m for m in informational if m.src == checker and not m.response]
    answers = [m for m in informational if m.src != checker and m.response]
    assert len(requests) >= 2 and len(answers) >= len(requests) - 1


def test_child_and_ike_rekey_started_by_charon(pair, charons, shim_path, tmp_path):
    charon = charon_for(charons, pair.right, shim_path, peer_addr="10.0.0.1", local_addr="10.0.0.2")
    ours = our_sidecar(pair.left, tmp_path, address="10.0.0.1", peer="10.0.0.2", initiate=True)
    before = charon.wait_established("conn", ("child",))
    old_child = before.child("child").spi_in
    charon.rekey(child="child")
    charon.wait_for(lambda sas: sas and sas[0].child("child") and sas[0].child("child").spi_in != old_child
                    and sas[0].child("child").state == "INSTALLED" and len(sas[0].children) == 1)
    theirs = charon.list_sas()[0]
    ours.wait_for(lambda s: len(s["ike_sas"][0]["children"]) == 1, what="old child gone")
    assert_same_child(ours.established(), theirs)
    old_ike = (before.spi_i, before.spi_r)
    charon.rekey(ike="conn")
    charon.wait_for(lambda sas: len(sas) == 1 and (sas[0].spi_i, sas[0].spi_r) != old_ike
                    and sas[0].state == "ESTABLISHED")
    ours.wait_for(lambda s: len(s["ike_sas"]) == 1 and s["ike_sas"][0]["ike_sa"].split("_")[0]
                  != old_ike[0].replace(":", ""), what="new IKE SA")
    theirs = charon.list_sas()[0]
    assert_same_child(ours.established(), theirs)


def test_child_and_ike_rekey_started_by_us(pair, charons, shim_path, tmp_path):
    charon = charon_for(charons, pair.right, shim_path, peer_addr="10.0.0.1", local_addr="10.0.0.2",
                        rekey_time="0", child_options={"rekey_time": "0"})
    # Lifetimes of 10 s: we rekey the CHILD_SA and the IKE SA at 8-9 s.
    ours = our_sidecar(pair.left, tmp_path, address="10.0.0.1", peer="10.0.0.2", initiate=True,
                       lifetimes={"ike": "10s", "child": "10s"})
    before = charon.wait_established("conn", ("child",))
    charon.wait_for(lambda sas: len(sas) == 1 and sas[0].spi_i != before.spi_i and sas[0].child("child")
                    and sas[0].child("child").spi_in != before.child("child").spi_in, timeout=25)
    theirs = charon.wait_established("conn", ("child",))
    assert theirs.initiator is False
    assert_same_child(ours.established(), theirs)


@pytest.mark.parametrize("who", ["charon", "ours"])
def test_delete_started_by_either_side(pair, charons, shim_path, tmp_path, who):
    charon = charon_for(charons, pair.right, shim_path, peer_addr="10.0.0.1", local_addr="10.0.0.2")
    ours = our_sidecar(pair.left, tmp_path, address="10.0.0.1", peer="10.0.0.2", initiate=True)
    charon.wait_established("conn", ("child",))
    ours.established()
    if who == "charon":
        charon.terminate(ike="conn")
        ours.wait_for(lambda s: not s["ike_sas"], what="our SA gone after charon's delete")
    else:
        ours.stop()
        assert charon.wait_gone("conn")
        assert "deleting IKE_SA" in charon.log or "received DELETE for IKE_SA" in charon.log


def test_wrong_psk(pair, charons, shim_path, tmp_path):
    charon = charon_for(charons, pair.right, shim_path, peer_addr="10.0.0.1", local_addr="10.0.0.2")
    ours = our_sidecar(pair.left, tmp_path, address="10.0.0.1", peer="10.0.0.2", initiate=True,
                       psk="a-completely-different-psk-0123456789")
    deadline = time.monotonic() + 10
    while "AUTHENTICATION_FAILED" not in ours.log and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "AUTHENTICATION_FAILED" in ours.log
    assert "tried 1 shared key" in charon.log or "MAC mismatched" in charon.log or "verification of AUTH" in charon.log
    assert not charon.list_sas()


def test_untrusted_certificate(pair, charons, shim_path, tmp_path):
    pki, rogue = MeshPki(), MeshPki(trust_domain="rogue.test")
    theirs_cert = pki.issue("charon", dns=[THEIRS])
    ours_cert = rogue.issue("ours", dns=[OURS])
    charon = charon_for(charons, pair.right, shim_path, peer_addr="10.0.0.1", local_addr="10.0.0.2",
                        cert=theirs_cert, ca_pem=pki.root.cert_pem())
    ours = Sidecar(pair.left, tmp_path, address="10.0.0.1", identity=OURS, peer_address="10.0.0.2/32",
                   peer_identity=THEIRS, cert_pem=ours_cert.cert_pem(), key_pem=ours_cert.key_pem(),
                   ca_pem=pki.root.cert_pem(), initiate=True).start()
    deadline = time.monotonic() + 10
    while "AUTHENTICATION_FAILED" not in ours.log and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "AUTHENTICATION_FAILED" in ours.log
    assert "no trusted" in charon.log.lower() or "constraint" in charon.log.lower() or "no issuer" in charon.log.lower()


def test_wrong_identity(pair, charons, shim_path, tmp_path):
    charon = charon_for(charons, pair.right, shim_path, peer_addr="10.0.0.1", local_addr="10.0.0.2")
    ours = Sidecar(pair.left, tmp_path, address="10.0.0.1", identity="mallory.default.pod.mesh.test",
                   peer_address="10.0.0.2/32", peer_identity=THEIRS, psk=PSK, initiate=True).start()
    deadline = time.monotonic() + 10
    while "AUTHENTICATION_FAILED" not in ours.log and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "AUTHENTICATION_FAILED" in ours.log
    assert "mallory" in charon.log


def test_no_common_proposal(pair, charons, shim_path, tmp_path):
    charon = charon_for(charons, pair.right, shim_path, peer_addr="10.0.0.1", local_addr="10.0.0.2",
                        ike="aes256gcm16-prfsha256-x25519")
    ours = our_sidecar(pair.left, tmp_path, address="10.0.0.1", peer="10.0.0.2", initiate=True,
                       ike="chacha20poly1305-prfsha512-ecp384")
    deadline = time.monotonic() + 10
    while "NO_PROPOSAL_CHOSEN" not in ours.log and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "NO_PROPOSAL_CHOSEN" in ours.log
    assert "received proposals unacceptable" in charon.log and "N(NO_PROP)" in charon.log
