"""The Service translation's rule set and its bookkeeping, without a kernel."""

import ipaddress
import re
import sys

import pytest

from ipsec_mesh.agent.status_server import readiness
from ipsec_mesh.meshapi import ServiceEndpoint, ServiceEntry, ServicePort, ServiceProtocol, SessionAffinity
from ipsec_mesh.svcnat import Nft, NftError, Objects, ServiceTranslation, changes, render, usable_endpoints

ip = ipaddress.ip_address


def ep(address, port=8080, **conditions):
    return ServiceEndpoint(ip(address), port, **conditions)


def first_batch(services, have=Objects()):
    """The script of a batch after a start, against what the kernel holds."""
    return changes(render(tuple(services)), have)


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
    script = first_batch((svc,))
    assert "meta l4proto udp dnat ip to 10.0.0.1:5353" in script
    assert "meta l4proto udp dnat ip6 to [fd00::1]:5353" in script
    assert "meta l4proto sctp dnat ip to 10.0.0.1:99" in script
    assert "10.96.0.10 . udp . 53 : goto svc_" in script and "fd00:96::a . udp . 53 : goto svc_" in script
    # SCTP has no IPv6 endpoint: its IPv6 key is only in ports6, where untranslated packets are rejected.
    assert "fd00:96::a . sctp . 9 : goto" not in script and "fd00:96::a . sctp . 9" in script


def sticky_script(endpoints):
    return first_batch((service(endpoints=endpoints, affinity=SessionAffinity.CLIENT_IP),))


def test_load_balancing_and_client_ip_affinity():
    three = [ep(f"10.0.0.{n}") for n in (1, 2, 3)]
    plain = render((service(endpoints=three),))
    plain_script = changes(plain, Objects())
    assert "meta l4proto tcp dnat ip to numgen random mod 3 map { 0 : 10.0.0.1 . 8080, 1 : 10.0.0.2 . 8080" in plain_script
    assert "numgen random mod 3 vmap { 0 : goto ep_" in sticky_script(three)
    assert not plain.sets and "update @" not in plain_script and "chain ep_" not in plain_script
    sticky = render((service(endpoints=three, affinity=SessionAffinity.CLIENT_IP, timeout=600),))
    sticky_text = changes(sticky, Objects())
    assert len(sticky.sets) == 3
    assert sticky_text.count("flags dynamic,timeout; timeout 600s;") == 3
    assert sticky_text.count("update @aff_") == 3
    assert len(re.findall(r"ip saddr @aff_\w+ goto ep_\w+", sticky_text)) == 3
    assert (plain.services, plain.endpoints) == (1, 3)


def test_a_service_without_usable_endpoints_is_rejected_not_passed_through():
    table = render((service(endpoints=[ep("10.0.0.1", ready=False, serving=False)]),))
    script = changes(table, Objects())
    assert "goto svc_" not in script and "10.96.0.10 . tcp . 80" in script
    assert "@ports4 counter name untranslated reject" in script
    assert (table.services, table.endpoints) == (0, 0)


def test_updates_keep_unchanged_objects_and_delete_only_the_gone_ones_in_the_same_batch():
    two = render((service(endpoints=[ep("10.0.0.1"), ep("10.0.0.2")], affinity=SessionAffinity.CLIENT_IP),))
    one = render((service(endpoints=[ep("10.0.0.1")], affinity=SessionAffinity.CLIENT_IP),), two)
    assert set(one.chains) < set(two.chains) and set(one.sets) < set(two.sets)
    (gone_chain,) = set(two.chains) - set(one.chains)
    (gone_set,) = set(two.sets) - set(one.sets)
    lines = changes(one, two).splitlines()
    # Emptied first (in the same batch), deleted last, once nothing refers to them.
    assert lines.index(f"flush chain inet ipsec_mesh_svc {gone_chain}") < lines.index(
        f"delete chain inet ipsec_mesh_svc {gone_chain}") == len(lines) - 2
    assert lines[-1] == f"delete set inet ipsec_mesh_svc {gone_set}"
    assert f"delete chain inet ipsec_mesh_svc {gone_chain}" not in changes(two, Objects())
    # Same input, same names: a restart finds its objects again.
    assert set(render((service(endpoints=[ep("10.0.0.1")]),)).chains) <= set(one.chains)


def test_an_endpoint_change_rewrites_that_chain_only_and_never_touches_the_lookup_maps():
    others = tuple(service(f"s{n}", [ep(f"10.1.0.{n}")], ips=(f"10.96.1.{n}", f"fd00:96::{n}")) for n in range(1, 20))
    before = render((service(endpoints=[ep("10.0.0.1"), ep("10.0.0.2")]), *others))
    after = render((service(endpoints=[ep("10.0.0.1"), ep("10.0.0.3")]), *others), before)
    script = changes(after, before)
    (chain,) = [name for name in after.chains if after.chains[name] != before.chains[name]]
    assert script.splitlines()[0] == f"flush chain inet ipsec_mesh_svc {chain}"
    # The service port keeps its chain, so its lookup element stays: no element, map or set is
    # flushed, added or deleted (a new connection cannot miss the map during the commit).
    assert "element" not in script and "flush table" not in script and "flush map" not in script
    assert "flush set" not in script and script.count("chain svc_") == 1 and "10.0.0.3 . 8080" in script
    assert changes(after, after) == ""  # nothing changed: no batch at all


def test_services_that_come_and_go_change_only_their_own_elements():
    kept = service("kept", [ep("10.0.0.1")], ips=("10.96.0.1", "fd00:96::1"))
    gone = service("gone", [ep("10.0.0.2")], ips=("10.96.0.2",))
    new = service("new", [ep("10.0.0.3")], ips=("10.96.0.3",), protocol=ServiceProtocol.UDP)
    before = render((kept, gone))
    script = changes(render((kept, new), before), before)
    assert "delete element inet ipsec_mesh_svc svc4 { 10.96.0.2 . tcp . 80 }" in script
    assert "delete element inet ipsec_mesh_svc ports4 { 10.96.0.2 . tcp . 80 }" in script
    assert "add element inet ipsec_mesh_svc ports4 { 10.96.0.3 . udp . 80 }" in script
    assert re.search(r"add element inet ipsec_mesh_svc svc4 \{ 10\.96\.0\.3 \. udp \. 80 : goto svc_\w+ \}", script)
    assert "10.96.0.1" not in script and "fd00:96::1" not in script and "svc6" not in script


def test_a_restart_replaces_every_rule_and_only_the_elements_that_differ():
    kept = service("kept", [ep("10.0.0.1")], ips=("10.96.0.1",))
    left = render((kept, service("gone", [ep("10.0.0.2")], ips=("10.96.0.2",))))
    kernel = Objects(frozenset(left.chains) | {"svc_0123456789abcdef"}, frozenset(left.sets),
                     {**left.elements, (4, "10.96.0.9 . tcp . 80"): "svc_0123456789abcdef"}, left.ports)
    script = changes(render((kept,)), kernel)
    lines = script.splitlines()
    assert "flush table inet ipsec_mesh_svc" in lines  # rules unknown after a start: all replaced
    assert "vmap @svc4" in script and "@ports4 counter name untranslated reject" in script
    assert "delete element inet ipsec_mesh_svc svc4 { 10.96.0.2 . tcp . 80, 10.96.0.9 . tcp . 80 }" in lines
    assert "add element inet ipsec_mesh_svc svc4" not in script  # the kept key already points at its chain
    assert "delete chain inet ipsec_mesh_svc svc_0123456789abcdef" in lines
    assert "flush map" not in script and "flush set" not in script


def test_the_script_only_touches_the_mesh_table():
    script = first_batch((service(endpoints=[ep("10.0.0.1")]),), Objects(frozenset({"svc_old"}), frozenset({"aff_x"})))
    for line in script.splitlines():
        words = line.split()
        if words and words[0] in ("flush", "delete", "add", "table"):
            assert words[1:3] in (["inet", "ipsec_mesh_svc"], ["table", "inet"], ["map", "inet"],
                                  ["set", "inet"], ["chain", "inet"], ["element", "inet"]), line
            assert "ipsec_mesh_svc" in line


class FakeRoutes:
    """The ClusterIP routes' kernel side, empty: unit tests never touch the host's routing table."""

    def __init__(self, netns=None):
        self.put_routes, self.deleted = [], []

    def table(self):
        return []

    def installed(self, table=None):
        return {}

    def link_names(self):
        return {}

    def put(self, routes):
        self.put_routes += routes

    def delete(self, routes):
        self.deleted += routes

    def close(self):
        pass


class FakeNft:
    def __init__(self, netns=None, fail=None, existing=None):
        self.scripts = []
        self.fail = fail
        self.existing = existing
        self.mtus = {}

    def route_mtus(self, addresses):
        return {a: self.mtus.get(str(a), 1500) for a in addresses}

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
    translation = ServiceTranslation(nft_factory=lambda netns: fake, routes_factory=FakeRoutes)
    assert translation.apply(()) and translation.problem() is None  # nothing wanted, no table: fine
    assert not translation.apply((service(endpoints=[ep("10.0.0.1")]),))
    assert "No such file or directory" in translation.problem()
    status = translation.status()
    assert status["failures"] == 1 and status["services"] == 0 and status["last_error"]
    fake.fail = None
    assert translation.apply((service(endpoints=[ep("10.0.0.1")]),)) and translation.problem() is None
    assert translation.status()["services"] == 1


def test_a_restart_reads_the_kernel_table_before_its_first_batch():
    left = render((service(endpoints=[ep("10.0.0.1")]), service("old", endpoints=[ep("10.0.0.2")], ips=("10.96.0.11",))))
    left = Objects(frozenset(left.chains), frozenset(left.sets), left.elements, left.ports)
    fake = FakeNft(existing=left)
    translation = ServiceTranslation(nft_factory=lambda netns: fake, routes_factory=FakeRoutes)
    translation.apply((service(endpoints=[ep("10.0.0.1")]),))
    assert fake.scripts[0].count("delete chain inet ipsec_mesh_svc svc_") == 1
    # An empty map still clears what an earlier instance left.
    fake2 = FakeNft(existing=left)
    ServiceTranslation(nft_factory=lambda netns: fake2, routes_factory=FakeRoutes).apply(())
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


def test_status_says_per_service_whether_the_kernel_translates_what_the_map_says():
    fake = FakeNft()
    translation = ServiceTranslation(nft_factory=lambda netns: fake, routes_factory=FakeRoutes)
    db, idle = service(endpoints=[ep("10.0.0.1")]), service("idle", [ep("10.0.0.2", ready=False, serving=False)],
                                                           ips=("10.96.0.11",))
    assert translation.apply((db, idle))
    assert translation.status()["per_service"] == {
        "shop/db": {"translated": True, "current": True, "error": ""},
        "shop/idle": {"translated": False, "current": True, "error": "no ready or serving endpoint: calls are "
                                                                       "rejected in the pod"}}
    # The kernel refuses the next map: db stays translated to its old endpoint, new is not translated.
    fake.fail = "Could not process rule: No such file or directory"
    moved, new = service(endpoints=[ep("10.0.0.3")]), service("new", [ep("10.0.0.4")], ips=("10.96.0.12",))
    assert not translation.apply((moved, new))
    per_service = translation.status()["per_service"]
    assert per_service["shop/db"] == {"translated": True, "current": False, "error": fake.fail}
    assert per_service["shop/new"] == {"translated": False, "current": False, "error": fake.fail}
    assert set(per_service) == {"shop/db", "shop/new"}  # only the Services of the map in force
    assert translation.status()["services"] == 1  # the table in force: db (idle has no usable endpoint)


def test_esp_reduced_mss_matches_the_kernels_esp_mtu_for_both_families():
    from ipsec_mesh.svcnat.mtu import esp_inner_mtu, mss_clamp
    # esp4_get_mtu/esp6_get_mtu for a 1500-byte path, AES-GCM-16 (8-byte IV, 16-byte ICV), UDP encapsulation.
    assert esp_inner_mtu(1500, 4) == 1458 and esp_inner_mtu(1500, 6) == 1458
    assert mss_clamp(1500, 4) == 1418 and mss_clamp(1500, 6) == 1398
    assert mss_clamp(1400, 4) == 1318  # follows the route's MTU
    assert esp_inner_mtu(1501, 4) == esp_inner_mtu(1500, 4)  # ESP pads to 4 bytes


def test_syn_acks_of_translated_connections_get_their_mss_clamped_per_family():
    services = (service(endpoints=[ep("10.0.0.1"), ep("fd00::1")], ips=("10.96.0.10", "fd00:96::a")),)
    script = changes(render(services, mss={4: 1418, 6: 1398}), Objects())
    assert "chain filter_input { type filter hook input priority 0; policy accept; }" in script
    clamp4 = [line for line in script.splitlines() if "@ports4" in line and "maxseg" in line]
    clamp6 = [line for line in script.splitlines() if "@ports6" in line and "maxseg" in line]
    assert len(clamp4) == len(clamp6) == 1
    assert "ct original ip daddr . meta l4proto . ct original proto-dst @ports4" in clamp4[0]
    assert "tcp flags & (syn | ack) == syn | ack" in clamp4[0]
    assert clamp4[0].endswith("tcp option maxseg size > 1418 tcp option maxseg size set 1418")
    assert clamp6[0].endswith("tcp option maxseg size > 1398 tcp option maxseg size set 1398")
    # A family without a known path MTU gets no clamp; a changed MTU rewrites only that chain.
    assert "@ports6" not in "".join(l for l in changes(render(services, mss={4: 1418}), Objects()).splitlines()
                                    if "maxseg" in l)
    before = render(services, mss={4: 1418, 6: 1398})
    after = render(services, previous=before, mss={4: 1318, 6: 1398})
    update = changes(after, before)
    assert "flush chain inet ipsec_mesh_svc filter_input" in update and "set 1318" in update
    assert "svc_" not in update and changes(render(services, previous=before, mss={4: 1418, 6: 1398}), before) == ""


def test_the_translation_clamps_to_the_smallest_path_mtu_of_its_endpoints_only():
    # The ClusterIPs' routes are the translation's own (ESP already taken off): never an input.
    fake = FakeNft()
    fake.mtus = {"10.96.0.10": 1200, "10.0.0.1": 1400, "fd00:96::a": 1300, "fd00::1": None}
    translation = ServiceTranslation(nft_factory=lambda netns: fake, routes_factory=FakeRoutes)
    assert translation.apply((service(endpoints=[ep("10.0.0.1"), ep("fd00::1")], ips=("10.96.0.10", "fd00:96::a")),))
    assert "size set 1318" in fake.scripts[0] and "size set" not in fake.scripts[0].replace("size set 1318", "")
    assert translation.status()["mss_clamp"] == {"ipv4": 1318}
    # No covering route in the (empty) table, no path MTU to fd00::1: no ClusterIP routes, and the status says why.
    assert translation.status()["route_problems"] == {"10.96.0.10": "no route to 10.96.0.10",
                                                      "fd00:96::a": "no path MTU known to any of its endpoints"}
