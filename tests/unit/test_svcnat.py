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


def text(want, have):
    """The batches that turn `have` into `want`, as one text."""
    return "".join(changes(want, have))


def first_batch(services, have=None):
    """The script of the batches after a start, against what the kernel holds."""
    have = Objects() if have is None else have
    return text(render(tuple(services), have), have)


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
    assert "meta l4proto udp dnat ip to ip daddr . udp dport . numgen random mod 1 map @ep4udp" in script
    assert "meta l4proto udp dnat ip6 to ip6 daddr . udp dport . numgen random mod 1 map @ep6udp" in script
    assert "meta l4proto sctp dnat ip to ip daddr . sctp dport . numgen random mod 1 map @ep4sctp" in script
    assert "add element inet ipsec_mesh_svc ep4udp { 10.96.0.10 . 53 . 0 : 10.0.0.1 . 5353 }" in script
    assert "add element inet ipsec_mesh_svc ep6udp { fd00:96::a . 53 . 0 : fd00::1 . 5353 }" in script
    assert "10.96.0.10 . udp . 53 : goto pick_" in script and "fd00:96::a . udp . 53 : goto pick_" in script
    # SCTP has no IPv6 endpoint: its IPv6 key is only in ports6, where untranslated packets are rejected.
    assert "fd00:96::a . sctp . 9 : goto" not in script and "fd00:96::a . sctp . 9" in script


def test_load_balancing_and_client_ip_affinity_need_no_object_per_endpoint():
    three = [ep(f"10.0.0.{n}") for n in (1, 2, 3)]
    plain = render((service(endpoints=three),))
    plain_script = text(plain, Objects())
    assert "ep4tcp { 10.96.0.10 . 80 . 0 : 10.0.0.1 . 8080, 10.96.0.10 . 80 . 1 : 10.0.0.2 . 8080, " in plain_script
    assert "numgen random mod 3 map @ep4tcp" in plain_script
    assert not plain.sets and "update @" not in plain_script
    many = [ep(f"10.0.{n // 250}.{n % 250 + 1}") for n in range(300)]
    lines = []
    for endpoints in (three, many):
        sticky = render((service(endpoints=endpoints, affinity=SessionAffinity.CLIENT_IP, timeout=600),))
        sticky_text = text(sticky, Objects())
        # One affinity map, one affinity chain and one record chain per service port, whatever its
        # endpoints; the random pick is the chain shared by all ports with as many endpoints.
        assert len(sticky.sets) == 1 and len(sticky.chains) == 3
        assert sticky_text.count("flags dynamic,timeout; timeout 600s;") == 1
        (aff,) = sticky.sets
        assert f"meta l4proto tcp dnat ip to ip saddr map @{aff}" in sticky_text
        assert "ip daddr . meta l4proto . th dport vmap @stick4" in sticky_text  # before svc4's random pick
        assert sticky_text.index("vmap @stick4") < sticky_text.index("vmap @svc4")
        assert re.search(r"add element inet ipsec_mesh_svc stick4 \{ 10\.96\.0\.10 \. tcp \. 80 : jump stick_", sticky_text)
        assert re.search(r"add element inet ipsec_mesh_svc svc4 \{ 10\.96\.0\.10 \. tcp \. 80 : goto pick_", sticky_text)
        assert f"update @{aff} {{ ip saddr : ip daddr . tcp dport }}" in sticky_text
        lines.append(sticky_text.count("\n"))
    assert lines[0] == lines[1]  # 3 or 300 endpoints: the same commands (one per element map)
    assert (plain.services, plain.endpoints) == (1, 3)


def test_ipv6_affinity_maps_hold_the_address_one_map_per_target_port():
    v6 = service(endpoints=[ep("fd00::1"), ep("fd00::2")], affinity=SessionAffinity.CLIENT_IP, ips=("fd00:96::a",))
    script = first_batch((v6,))
    (aff,) = render((v6,)).sets
    assert f"map {aff} {{ type ipv6_addr : ipv6_addr;" in script and aff.endswith("_8080")
    assert f"dnat ip6 to ip6 saddr map @{aff} : 8080" in script and "{ ip6 saddr : ip6 daddr }" in script
    # Endpoints on different ports (libnftables 1.0.6 cannot store address . port from the packet):
    # a map per target port, the record rule of each matching the port the DNAT chose.
    mixed = service(endpoints=[ep("fd00::1", 80), ep("fd00::2", 81), ep("fd00::3", 81)],
                    affinity=SessionAffinity.CLIENT_IP, ips=("fd00:96::a",))
    table = render((mixed,))
    assert sorted(name.rsplit("_", 1)[1] for name in table.sets) == ["80", "81"]
    script = first_batch((mixed,))
    for port in (80, 81):
        (name,) = [name for name in table.sets if name.endswith(f"_{port}")]
        assert f"dnat ip6 to ip6 saddr map @{name} : {port}" in script
        assert f"meta l4proto tcp tcp dport {port} update @{name} {{ ip6 saddr : ip6 daddr }}" in script
    assert not table.parts["shop/db"][1].notes
    # An endpoint removed: every map of the port is emptied; read back after a restart, the same.
    fewer = render((service(endpoints=[ep("fd00::1", 80), ep("fd00::2", 81)], affinity=SessionAffinity.CLIENT_IP,
                            ips=("fd00:96::a",)),), table)
    assert fewer.flush == frozenset(table.sets) and fewer.active_sets == frozenset(table.sets)
    # The only endpoint on port 80 goes: its map goes too, emptied first (it lingers one batch, and its
    # entries must not come back with an endpoint on port 80 in the meantime).
    only81 = render((service(endpoints=[ep("fd00::2", 81)], affinity=SessionAffinity.CLIENT_IP, ips=("fd00:96::a",)),),
                    fewer)
    assert only81.flush == frozenset(table.sets) and len(only81.active_sets) == 1
    kernel = Objects(frozenset(table.chains), dict.fromkeys(table.sets, 10800), table.elements)
    assert render(fewer.parts["shop/db"][0:1], kernel).flush == frozenset(table.sets)
    # A new target port: a map more and new chains (their rules name it), the maps the clients are in stay.
    wider = render((service(endpoints=[*mixed.ports[0].endpoints, ep("fd00::4", 82)], affinity=SessionAffinity.CLIENT_IP,
                            ips=("fd00:96::a",)),), table)
    assert wider.active_sets > table.active_sets and not wider.flush
    assert not wider.active_chains & {name for name in table.chains if not name.startswith("pick_")}
    many = service(endpoints=[ep(f"fd00::{n}", 80 + n) for n in range(1, 10)], affinity=SessionAffinity.CLIENT_IP,
                   ips=("fd00:96::a",))
    assert "more than 8 target ports" in render((many,)).parts["shop/db"][1].notes[0] and not render((many,)).sets


def test_a_service_without_usable_endpoints_is_rejected_not_passed_through():
    table = render((service(endpoints=[ep("10.0.0.1", ready=False, serving=False)]),))
    script = text(table, Objects())
    assert "goto pick_" not in script and "10.96.0.10 . tcp . 80" in script
    assert "@ports4 counter name untranslated reject" in script
    assert (table.services, table.endpoints) == (0, 0)


def test_an_endpoint_change_switches_elements_and_modifies_no_rule():
    others = tuple(service(f"s{n}", [ep(f"10.1.0.{n}")], ips=(f"10.96.1.{n}", f"fd00:96::{n}")) for n in range(1, 20))
    before = render((service(endpoints=[ep("10.0.0.1"), ep("10.0.0.2")]), *others))
    after = render((service(endpoints=[ep("10.0.0.1"), ep("10.0.0.3")]), *others), before)
    (script,) = changes(after, before)
    assert script.splitlines() == [
        "delete element inet ipsec_mesh_svc ep4tcp { 10.96.0.10 . 80 . 1 }",
        "add element inet ipsec_mesh_svc ep4tcp { 10.96.0.10 . 80 . 1 : 10.0.0.3 . 8080 }"]
    assert changes(after, after) == []  # nothing changed: no batch at all


def test_a_new_chain_comes_one_batch_before_the_element_that_uses_it_and_goes_one_batch_after():
    two = render((service(endpoints=[ep("10.0.0.1"), ep("10.0.0.2")]),))
    three = render((service(endpoints=[ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")]),), two)
    prepare, switch = changes(three, two)
    assert "numgen random mod 3" in prepare and "element" not in prepare
    assert "delete element inet ipsec_mesh_svc svc4 { 10.96.0.10 . tcp . 80 }" in switch
    assert "add element inet ipsec_mesh_svc svc4 { 10.96.0.10 . tcp . 80 : goto pick_" in switch
    assert "delete chain" not in switch  # the mod-2 chain lingers one batch ...
    (old,) = set(two.chains)
    one = render((service(endpoints=[ep("10.0.0.3")]),), three)
    prepare, switch = changes(one, three)
    assert f"delete chain inet ipsec_mesh_svc {old}" in switch  # ... and goes with the next one.
    # Shrunk from three to one: indexes 1 and 2 stay one batch, on the endpoint in force.
    assert one.elements["ep4tcp"] == {f"10.96.0.10 . 80 . {i}": "10.0.0.3 . 8080" for i in range(3)}
    again = render(one.parts["shop/db"][0:1], one)
    assert again.elements["ep4tcp"] == {"10.96.0.10 . 80 . 0": "10.0.0.3 . 8080"}


def test_affinity_keeps_its_map_while_endpoints_are_added_and_empties_it_when_one_goes():
    sticky = SessionAffinity.CLIENT_IP
    two = render((service(endpoints=[ep("10.0.0.1"), ep("10.0.0.2")], affinity=sticky),))
    three = render((service(endpoints=[ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")], affinity=sticky),), two)
    assert set(three.active_sets) == set(two.sets)
    assert "10.96.0.10 . tcp . 80 . 10.0.0.3 . 8080" in text(three, two)  # live: the new endpoint may be recorded
    assert "flush" not in "".join(line for line in text(three, two).splitlines() if "chain" not in line)
    fewer = render((service(endpoints=[ep("10.0.0.1"), ep("10.0.0.3"), ep("10.0.0.4")], affinity=sticky),), three)
    # An endpoint replaced: the same map, chains and lookup elements; no object is created.
    assert fewer.active_sets == three.active_sets and fewer.active_chains == three.active_chains
    (aff,) = fewer.active_sets
    unlive, switch = changes(fewer, three)
    # First its live element goes (nothing records it any more), then, one commit later, the
    # index elements change and the port's affinity map is emptied in the same batch.
    assert unlive.splitlines() == [
        "delete element inet ipsec_mesh_svc live4 { 10.96.0.10 . tcp . 80 . 10.0.0.2 . 8080 }"]
    assert f"flush map inet ipsec_mesh_svc {aff}" in switch.splitlines()
    assert "ep4tcp" in switch and not re.search(r"^\s*(map|chain) |svc4|stick4|rec4|delete set", switch, re.M)
    # A shrink switches only the port's random pick (svc4), as without affinity.
    two = render((service(endpoints=[ep("10.0.0.1"), ep("10.0.0.4")], affinity=sticky),), fewer)
    assert two.active_sets == fewer.active_sets and "stick4" not in text(two, fewer) and "svc4" in text(two, fewer)
    gone = render((), fewer)
    assert f"delete set inet ipsec_mesh_svc {aff}" not in text(gone, fewer)  # lingers one batch ...
    assert f"delete set inet ipsec_mesh_svc {aff}" in text(render((), gone), gone)  # ... then goes


def test_the_removal_of_an_affinity_endpoint_is_known_again_after_a_restart_between_its_two_batches():
    sticky = SessionAffinity.CLIENT_IP
    three = render((service(endpoints=[ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")], affinity=sticky),))
    fewer = render((service(endpoints=[ep("10.0.0.1"), ep("10.0.0.3")], affinity=sticky),), three)
    # The sidecar stopped after the live element went, before the index changed and the map was emptied.
    elements = {**three.elements, "live4": fewer.elements["live4"]}
    kernel = Objects(frozenset(three.chains), dict.fromkeys(three.sets, 10800), elements)
    (aff,) = three.sets
    assert f"flush map inet ipsec_mesh_svc {aff}" in first_batch(fewer.parts["shop/db"][0:1], kernel)


def test_services_that_come_and_go_change_only_their_own_elements():
    kept = service("kept", [ep("10.0.0.1")], ips=("10.96.0.1", "fd00:96::1"))
    gone = service("gone", [ep("10.0.0.2")], ips=("10.96.0.2",))
    new = service("new", [ep("10.0.0.3")], ips=("10.96.0.3",), protocol=ServiceProtocol.UDP)
    before = render((kept, gone))
    script = text(render((kept, new), before), before)
    assert "delete element inet ipsec_mesh_svc svc4 { 10.96.0.2 . tcp . 80 }" in script
    assert "delete element inet ipsec_mesh_svc ports4 { 10.96.0.2 . tcp . 80 }" in script
    assert "add element inet ipsec_mesh_svc ports4 { 10.96.0.3 . udp . 80 }" in script
    assert re.search(r"add element inet ipsec_mesh_svc svc4 \{ 10\.96\.0\.3 \. udp \. 80 : goto pick_\w+ \}", script)
    assert "10.96.0.1 " not in script and "fd00:96::1" not in script and "svc6" not in script
    assert "ep4tcp { 10.96.0.2" not in script  # the gone port's index stays one batch


def test_a_restart_keeps_the_kernels_chains_and_changes_only_the_elements_that_differ():
    kept = service("kept", [ep("10.0.0.1")], ips=("10.96.0.1",))
    left = render((kept, service("gone", [ep("10.0.0.2")], ips=("10.96.0.2",))))
    elements = {**left.elements, "svc4": {**left.elements["svc4"], "10.96.0.9 . tcp . 80": "goto svc_0123456789abcdef"}}
    kernel = Objects(frozenset(left.chains) | {"svc_0123456789abcdef"}, {}, elements)
    want = render((kept,), kernel)
    (script,) = changes(want, kernel)
    lines = script.splitlines()
    assert "flush table inet ipsec_mesh_svc" not in lines and "flush chain inet ipsec_mesh_svc nat_output" in lines
    assert "vmap @svc4" in script and "@ports4 counter name untranslated reject" in script
    assert "delete element inet ipsec_mesh_svc svc4 { 10.96.0.2 . tcp . 80, 10.96.0.9 . tcp . 80 }" in lines
    assert "add element inet ipsec_mesh_svc svc4" not in script  # the kept key already points at its chain
    assert "chain pick_" not in script and "delete chain" not in script  # left chains linger one batch
    assert "delete chain inet ipsec_mesh_svc svc_0123456789abcdef" in text(render((kept,), want), want)


def test_the_script_only_touches_the_mesh_table():
    script = first_batch((service(endpoints=[ep("10.0.0.1")]),), Objects(frozenset({"svc_old"}), {"aff_x": None}))
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
        self.kernel = {}
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
        for line in script.splitlines():  # what the kernel's lookup maps hold after it
            words = line.split(" ", 5)
            if len(words) == 6 and words[1] == "element" and words[4] in ("svc4", "svc6"):
                items = self.kernel.setdefault(words[4], {})
                for element in words[5].strip("{ }").split(", "):
                    key, _, data = element.partition(" : ")
                    if words[0] == "add":
                        items[key] = data
                    else:
                        items.pop(key, None)

    def lookup_elements(self):
        return self.kernel

    def run_json(self, commands):  # the offload record lists nothing here (test_svcnat_offload.py keeps one)
        return []

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
    left = Objects(frozenset(left.chains) | {"svc_0123456789abcdef"}, {}, left.elements)
    fake = FakeNft(existing=left)
    translation = ServiceTranslation(nft_factory=lambda netns: fake, routes_factory=FakeRoutes)
    translation.apply((service(endpoints=[ep("10.0.0.1")]),))
    assert "delete element inet ipsec_mesh_svc svc4 { 10.96.0.11 . tcp . 80 }" in fake.scripts[0]
    translation.apply((service(endpoints=[ep("10.0.0.1")]),))  # the next update retires the old chain
    assert "delete chain inet ipsec_mesh_svc svc_0123456789abcdef\n" in fake.scripts[-1]
    # An empty map still clears what an earlier instance left.
    fake2 = FakeNft(existing=left)
    ServiceTranslation(nft_factory=lambda netns: fake2, routes_factory=FakeRoutes).apply(())
    assert "delete element inet ipsec_mesh_svc svc4" in fake2.scripts[0] and "add element" not in fake2.scripts[0]


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
    script = text(render(services, mss={4: 1418, 6: 1398}), Objects())
    assert "chain filter_input { type filter hook input priority 0; policy accept; }" in script
    clamp4 = [line for line in script.splitlines() if "@ports4" in line and "maxseg" in line]
    clamp6 = [line for line in script.splitlines() if "@ports6" in line and "maxseg" in line]
    assert len(clamp4) == len(clamp6) == 1
    assert "ct original ip daddr . meta l4proto . ct original proto-dst @ports4" in clamp4[0]
    assert "tcp flags & (syn | ack) == syn | ack" in clamp4[0]
    assert clamp4[0].endswith("tcp option maxseg size > 1418 tcp option maxseg size set 1418")
    assert clamp6[0].endswith("tcp option maxseg size > 1398 tcp option maxseg size set 1398")
    # A family without a known path MTU gets no clamp; a changed MTU rewrites only that chain.
    assert "@ports6" not in "".join(l for l in text(render(services, mss={4: 1418}), Objects()).splitlines()
                                    if "maxseg" in l)
    before = render(services, mss={4: 1418, 6: 1398})
    after = render(services, previous=before, mss={4: 1318, 6: 1398})
    update = text(after, before)
    assert "flush chain inet ipsec_mesh_svc filter_input" in update and "set 1318" in update
    assert "pick_" not in update and changes(render(services, previous=before, mss={4: 1418, 6: 1398}), before) == []


def test_the_translation_clamps_to_the_smallest_path_mtu_of_its_endpoints_only():
    # The ClusterIPs' routes are the translation's own (ESP already taken off): never an input.
    fake = FakeNft()
    fake.mtus = {"10.96.0.10": 1200, "10.0.0.1": 1400, "fd00:96::a": 1300, "fd00::1": None}
    translation = ServiceTranslation(nft_factory=lambda netns: fake, routes_factory=FakeRoutes)
    assert translation.apply((service(endpoints=[ep("10.0.0.1"), ep("fd00::1")], ips=("10.96.0.10", "fd00:96::a")),))
    assert "size set 1318" in "".join(fake.scripts) and "size set" not in "".join(fake.scripts).replace("size set 1318", "")
    assert translation.status()["mss_clamp"] == {"ipv4": 1318}
    # No covering route in the (empty) table, no path MTU to fd00::1: no ClusterIP routes, and the status says why.
    assert translation.status()["route_problems"] == {"10.96.0.10": "no route to 10.96.0.10",
                                                      "fd00:96::a": "no path MTU known to any of its endpoints"}


def test_status_reads_back_from_the_kernel_whether_a_service_is_translated():
    fake = FakeNft()
    translation = ServiceTranslation(nft_factory=lambda netns: fake, routes_factory=FakeRoutes)
    assert translation.apply((service(endpoints=[ep("10.0.0.1")]),))
    assert translation.status()["per_service"]["shop/db"]["translated"]
    fake.kernel["svc4"].clear()  # someone else deleted the lookup element
    status = translation.status()
    assert status["services"] == 0 and not status["per_service"]["shop/db"]["translated"]
    assert "not in the kernel's table" in status["per_service"]["shop/db"]["error"]


def test_a_restart_keeps_the_affinity_maps_it_finds_and_their_clients():
    sticky = service(endpoints=[ep("10.0.0.1"), ep("10.0.0.2")], affinity=SessionAffinity.CLIENT_IP, timeout=600)
    left = render((sticky,))
    kernel = Objects(frozenset(left.chains), dict.fromkeys(left.sets, 600), left.elements)
    want = render((sticky,), kernel)
    assert set(want.active_sets) == set(left.sets) and want.states == left.states
    (script,) = changes(want, kernel)
    assert "element" not in script and " map aff_" not in script
    # The Service's timeout changed meanwhile: a new map, with the new timeout.
    shorter = render((service(endpoints=sticky.ports[0].endpoints, affinity=SessionAffinity.CLIENT_IP, timeout=60),),
                     kernel)
    (new_map,) = shorter.active_sets
    assert new_map not in left.sets and shorter.sets[new_map].endswith("timeout 60s;")
