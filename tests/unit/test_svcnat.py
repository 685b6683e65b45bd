"""The Service translation's rule set and its bookkeeping, without a kernel."""

import ipaddress
import re
import sys

import pytest

from ipsec_mesh.agent.status_server import readiness
from ipsec_mesh.meshapi import ServiceEndpoint, ServiceEntry, ServicePort, ServiceProtocol, SessionAffinity
from ipsec_mesh.svcnat import Nft, NftError, Objects, ServiceTranslation, render, usable_endpoints

ip = ipaddress.ip_address


def ep(address, port=8080, **conditions):
    return ServiceEndpoint(ip(address), port, **conditions)


def service(name="db", endpoints=(), affinity=SessionAffinity.NONE, timeout=10800, ips=("10.96.0.10",),
            protocol=ServiceProtocol.TCP, port=80):
    return ServiceEntry("shop", name, tuple(ip(a) for a in ips),
                        (ServicePort("", protocol, port, tuple(endpoints)),), affinity, timeout)


def test_ready_endpoints_first_then_serving_terminating_ones():
    port = ServicePort("", ServiceProtocol.TCP, 80, (
        ep("10.0.0.1", ready=False, serving=True, terminating=True),
        ep("10.0.0.2", ready=False, serving=False, terminating=True),
        ep("10.0.0.3"),
        ep("fd00::3"),
    ))
    assert [str(e.address) for e in usable_endpoints(port, 4)] == ["10.0.0.3"]
    assert [str(e.address) for e in usable_endpoints(port, 6)] == ["fd00::3"]
    draining = ServicePort("", ServiceProtocol.TCP, 80, port.endpoints[:2])
    assert [str(e.address) for e in usable_endpoints(draining, 4)] == ["10.0.0.1"]  # not the non-serving one


def test_each_family_translates_to_its_own_endpoints_and_protocol():
    svc = ServiceEntry("shop", "db", (ip("10.96.0.10"), ip("fd00:96::a")), (
        ServicePort("a", ServiceProtocol.UDP, 53, (ep("10.0.0.1", 5353), ep("fd00::1", 5353))),
        ServicePort("b", ServiceProtocol.SCTP, 9, (ep("10.0.0.1", 99),)),
    ))
    script = render((svc,), Objects()).script
    assert "meta l4proto udp dnat ip to 10.0.0.1:5353" in script
    assert "meta l4proto udp dnat ip6 to [fd00::1]:5353" in script
    assert "meta l4proto sctp dnat ip to 10.0.0.1:99" in script
    assert "10.96.0.10 . udp . 53 : goto svc_" in script and "fd00:96::a . udp . 53 : goto svc_" in script
    # SCTP has no IPv6 endpoint: its IPv6 key is only in ports6, where untranslated packets are rejected.
    assert "fd00:96::a . sctp . 9 : goto" not in script and "fd00:96::a . sctp . 9" in script


def sticky_script(endpoints):
    return render((service(endpoints=endpoints, affinity=SessionAffinity.CLIENT_IP),), Objects()).script


def test_load_balancing_and_client_ip_affinity():
    three = [ep(f"10.0.0.{n}") for n in (1, 2, 3)]
    plain = render((service(endpoints=three),), Objects())
    assert "meta l4proto tcp dnat ip to numgen random mod 3 map { 0 : 10.0.0.1 . 8080, 1 : 10.0.0.2 . 8080" in plain.script
    assert "numgen random mod 3 vmap { 0 : goto ep_" in sticky_script(three)
    assert not plain.objects.sets and "update @" not in plain.script and "chain ep_" not in plain.script
    sticky = render((service(endpoints=three, affinity=SessionAffinity.CLIENT_IP, timeout=600),), Objects())
    assert len(sticky.objects.sets) == 3
    assert sticky.script.count("flags dynamic,timeout; timeout 600s;") == 3
    assert sticky.script.count("update @aff_") == 3
    assert len(re.findall(r"ip saddr @aff_\w+ goto ep_\w+", sticky.script)) == 3
    assert (plain.services, plain.endpoints) == (1, 3)


def test_a_service_without_usable_endpoints_is_rejected_not_passed_through():
    batch = render((service(endpoints=[ep("10.0.0.1", ready=False, serving=False)]),), Objects())
    assert "goto svc_" not in batch.script and "10.96.0.10 . tcp . 80" in batch.script
    assert "@ports4 counter name untranslated reject" in batch.script
    assert (batch.services, batch.endpoints) == (0, 0)


def test_updates_keep_unchanged_objects_and_delete_only_the_gone_ones_in_the_same_batch():
    two = render((service(endpoints=[ep("10.0.0.1"), ep("10.0.0.2")], affinity=SessionAffinity.CLIENT_IP),),
                 Objects())
    one = render((service(endpoints=[ep("10.0.0.1")], affinity=SessionAffinity.CLIENT_IP),), two.objects)
    assert one.objects.chains < two.objects.chains and one.objects.sets < two.objects.sets
    (gone_chain,) = two.objects.chains - one.objects.chains
    (gone_set,) = two.objects.sets - one.objects.sets
    lines = one.script.splitlines()
    flush = lines.index("flush table inet ipsec_mesh_svc")
    assert lines.index(f"delete chain inet ipsec_mesh_svc {gone_chain}") > flush
    assert lines.index(f"delete set inet ipsec_mesh_svc {gone_set}") > flush
    assert f"delete chain inet ipsec_mesh_svc {gone_chain}" not in two.script
    # Same input, same names: a restart finds its objects again.
    assert render((service(endpoints=[ep("10.0.0.1")]),), Objects()).objects.chains <= one.objects.chains


def test_the_script_only_touches_the_mesh_table():
    batch = render((service(endpoints=[ep("10.0.0.1")]),), Objects(frozenset({"svc_old"}), frozenset({"aff_x"})))
    for line in batch.script.splitlines():
        words = line.split()
        if words and words[0] in ("flush", "delete", "add", "table"):
            assert words[1:3] in (["inet", "ipsec_mesh_svc"], ["table", "inet"], ["map", "inet"],
                                  ["set", "inet"], ["chain", "inet"], ["element", "inet"]), line
            assert "ipsec_mesh_svc" in line


class FakeNft:
    def __init__(self, netns=None, fail=None, existing=None):
        self.scripts = []
        self.fail = fail
        self.existing = existing

    def objects(self):
        return self.existing

    def run(self, script):
        if self.fail:
            raise NftError(self.fail)
        self.scripts.append(script)

    def untranslated_packets(self):
        return 0

    def close(self):
        pass


def test_refused_updates_are_reported_and_block_readiness_only_when_services_are_wanted():
    fake = FakeNft(fail="Could not process rule: No such file or directory")
    translation = ServiceTranslation(nft_factory=lambda netns: fake)
    assert translation.apply(()) and translation.problem() is None  # nothing wanted, no table: fine
    assert not translation.apply((service(endpoints=[ep("10.0.0.1")]),))
    assert "No such file or directory" in translation.problem()
    status = translation.status()
    assert status["failures"] == 1 and status["services"] == 0 and status["last_error"]
    fake.fail = None
    assert translation.apply((service(endpoints=[ep("10.0.0.1")]),)) and translation.problem() is None
    assert translation.status()["services"] == 1


def test_a_restart_reads_the_kernel_table_before_its_first_batch():
    left = render((service(endpoints=[ep("10.0.0.1")]), service("old", endpoints=[ep("10.0.0.2")])), Objects())
    fake = FakeNft(existing=left.objects)
    translation = ServiceTranslation(nft_factory=lambda netns: fake)
    translation.apply((service(endpoints=[ep("10.0.0.1")]),))
    assert fake.scripts[0].count("delete chain inet ipsec_mesh_svc svc_") == 1
    # An empty map still clears what an earlier instance left.
    fake2 = FakeNft(existing=left.objects)
    ServiceTranslation(nft_factory=lambda netns: fake2).apply(())
    assert "delete chain" in fake2.scripts[0] and "goto" not in fake2.scripts[0].split("flush table")[1]


def test_without_the_binding_the_error_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "nftables", None)
    with pytest.raises(NftError, match="binding is not installed"):
        Nft()


class StubAgent:
    def __init__(self, reason):
        self.reason = reason

    def not_ready_reason(self):
        return self.reason


def test_ready_endpoint_names_the_reason():
    assert readiness(StubAgent(None))[0] == 200
    status, _, body = readiness(StubAgent("service translation failed: no nf_nat"))
    assert status == 503 and b"no nf_nat" in body
