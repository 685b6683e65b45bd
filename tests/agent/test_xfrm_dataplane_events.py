"""XfrmDataPlane against a recording stand-in for the kernel: NAT mappings and encap updates."""

from __future__ import annotations

import ipaddress

import pytest

from ipsec_mesh.agent.dataplane import NatMapping
from ipsec_mesh.agent.xfrm_dataplane import XfrmDataPlane
from ipsec_mesh.ike import ChildSaInfo, ChildSaKeys, EncrId, UdpEncap
from ipsec_mesh.xfrm import Mapping, owned_reqid

LOCAL, PEER = "10.0.0.2", "192.0.2.7"


class RecordingXfrm:
    def __init__(self):
        self.calls: list[tuple[str, object]] = []

    def add_sa(self, spec):
        self.calls.append(("add_sa", spec))

    def update_sa(self, spec):
        self.calls.append(("update_sa", spec))

    def delete_sa(self, dst, spi, proto):
        self.calls.append(("delete_sa", spi))

    def close(self):
        pass


class Events:
    def __init__(self):
        self.pending: list = []

    def read_events(self):
        out, self.pending = self.pending, []
        return out

    def close(self):
        pass


@pytest.fixture
def plane():
    p = XfrmDataPlane(xfrm=RecordingXfrm())  # no netlink socket: the kernel is the recorder
    p.events_channel = Events()
    return p


def child(remote_port: int = 14500) -> ChildSaInfo:
    return ChildSaInfo(ike_sa="x", name="mesh", mode="transport", inbound_spi=0xC0000001, outbound_spi=0xD0000002,
                       encr=EncrId.AES_GCM_16, key_bits=256, esn=True,
                       keys=ChildSaKeys(inbound=b"i" * 36, outbound=b"o" * 36), local_addr=LOCAL,
                       remote_addr=PEER, local_ts=(), remote_ts=(), encap=UdpEncap(4500, remote_port),
                       rekey_time=3600, life_time=3960)


def mapping(spi: int, port: int, reqid: int = owned_reqid(0xFFFF)) -> Mapping:
    ip = ipaddress.ip_address
    return Mapping(dst=ip(LOCAL), spi=spi, proto=50, reqid=reqid, old_src=ip(PEER), old_sport=14500,
                   new_src=ip(PEER), new_sport=port)


def test_a_mapping_is_passed_on_once_per_new_source_and_only_for_our_inbound_sas(plane):
    info = child()
    plane.install_inbound(info)
    plane.install_outbound(info)
    plane.events_channel.pending = [mapping(info.inbound_spi, 34500), mapping(info.inbound_spi, 34500),
                                    mapping(0x1234, 34500),  # not one of our inbound SAs
                                    mapping(info.inbound_spi, 34500, reqid=7)]  # another program's SA
    assert plane.read_events() == [NatMapping(info.inbound_spi, PEER, 34500)]
    plane.events_channel.pending = [mapping(info.inbound_spi, 44500)]
    assert plane.read_events() == [NatMapping(info.inbound_spi, PEER, 44500)]


def test_update_encap_rewrites_both_halves_with_mirrored_ports(plane):
    info = child()
    plane.install_inbound(info)
    plane.install_outbound(info)
    plane.xfrm.calls.clear()
    plane.update_encap(child(remote_port=34500))
    updates = {spec.spi: spec for kind, spec in plane.xfrm.calls if kind == "update_sa"}
    assert set(updates) == {info.inbound_spi, info.outbound_spi}
    inbound, outbound = updates[info.inbound_spi], updates[info.outbound_spi]
    assert (inbound.encap.sport, inbound.encap.dport) == (34500, 4500)  # from the peer's new port to ours
    assert (outbound.encap.sport, outbound.encap.dport) == (4500, 34500)
    # Nothing else about the SAs changed (keys, addresses, SPIs).
    assert inbound.aead == plane.inbound[info.inbound_spi].aead and str(inbound.src) == PEER
    assert plane.outbound[info.outbound_spi].encap.dport == 34500
