"""ClusterIP routes (svcnat.routes) and the ESP arithmetic behind their MTU, in memory."""

from __future__ import annotations

import ipaddress
import os
import struct

from ipsec_mesh.ike.proposals import ENCR_NAMES
from ipsec_mesh.svcnat.mtu import ESP_CIPHERS, _inner_mtu, esp_inner_mtu
from ipsec_mesh.svcnat.routes import RT_PROTO, RTN_UNICAST, Route, RouteIndex, _KernelRoute, _parse, derive, route_body
from tests.support.route_reference import reference_best, reference_derive


def test_every_negotiable_esp_cipher_has_its_overhead_and_the_worst_one_counts():
    assert {encr for encr, _ in ENCR_NAMES.values()} <= set(ESP_CIPHERS)
    assert esp_inner_mtu(1500, 4) == 1458 and esp_inner_mtu(1500, 6) == 1458
    # A cipher with a larger IV or block would lower the figure for everyone: the worst case wins.
    assert _inner_mtu(1500, 4, 16, 16, 16) == 1442 < esp_inner_mtu(1500, 4)
    assert esp_inner_mtu(1500, 4) - 28 == 1430  # the largest IPv4 UDP payload that fits
    assert esp_inner_mtu(1500, 6) - 48 == 1410


def kernel_route(network: str, *, proto: int = 3, gateway: str | None = "10.0.0.1", oif: int | None = 2,
                 kind: int = RTN_UNICAST, priority: int = 0, mtu: int | None = None, multipath: bool = False):
    return _KernelRoute(ipaddress.ip_network(network), proto, kind, priority, oif,
                        ipaddress.ip_address(gateway) if gateway else None, 0, 0, mtu, multipath)


CIP = ipaddress.ip_address("10.96.0.10")


def test_a_cluster_ip_route_goes_where_its_covering_route_goes_and_ignores_ours():
    table = [kernel_route("0.0.0.0/0"), kernel_route("10.96.0.0/16", gateway="10.0.0.9", oif=3),
             kernel_route("10.96.0.10/32", proto=RT_PROTO, gateway="10.9.9.9")]
    assert derive(CIP, 1458, RouteIndex(table)) == Route(CIP, 1458, 3, ipaddress.ip_address("10.0.0.9"))
    # The covering route's own smaller MTU is kept.
    table[1] = kernel_route("10.96.0.0/16", gateway="10.0.0.9", oif=3, mtu=1400)
    assert derive(CIP, 1458, RouteIndex(table)).mtu == 1400


def test_no_route_where_someone_else_routes_the_cluster_ip_or_the_way_is_not_a_single_path():
    assert "host route" in derive(CIP, 1458, RouteIndex([kernel_route("0.0.0.0/0"), kernel_route("10.96.0.10/32", proto=4)]))
    assert "not a single-path" in derive(CIP, 1458, RouteIndex([kernel_route("0.0.0.0/0", multipath=True, oif=None)]))
    assert "not a single-path" in derive(CIP, 1458, RouteIndex([kernel_route("0.0.0.0/0", kind=6)]))  # blackhole
    assert derive(CIP, 1458, RouteIndex([kernel_route("::/0", gateway="fe80::1")])) == "no route to 10.96.0.10"


def test_our_route_message_round_trips_through_the_parser():
    route = Route(ipaddress.ip_address("fd00:96::a"), 1458, 7, ipaddress.ip_address("fe80::1"))
    parsed = _parse(struct.pack("=IHHII", 16 + len(route_body(route)), 24, 0, 1, 0) + route_body(route))
    assert parsed.ours and parsed.mtu == 1458 and parsed.oif == 7 and str(parsed.gateway) == "fe80::1"
    assert parsed.network == ipaddress.ip_network("fd00:96::a/128")


def test_a_malformed_route_message_is_a_typed_error_not_a_crash():
    import pytest

    from ipsec_mesh.svcnat.routes import RouteError

    body = route_body(Route(CIP, 1458, 2, ipaddress.ip_address("10.0.0.1")))
    data = struct.pack("=IHHII", 16 + len(body), 24, 0, 1, 0) + body
    assert _parse(data).mtu == 1458
    for broken in (data[:20],                                    # truncated header
                   data[:28] + b"\xff\x00\x01\x00" + data[32:],  # an attribute longer than the message
                   data[:28] + b"\x06\x00" + data[30:]):          # RTA_DST of 2 bytes
        with pytest.raises(RouteError):
            _parse(broken)


def test_route_notifications_of_our_own_routes_are_no_change_and_anything_else_is():
    from ipsec_mesh.svcnat.routes import RT_PROTO, RTM_NEWROUTE
    from ipsec_mesh.svcnat.routewatch import only_routes_of

    def message(kind, protocol, body=12):
        rtm = bytes([2, 32, 0, 0, 254, protocol, 0, 1]) + bytes(4) + bytes(body - 12)
        return struct.pack("=IHHII", 16 + len(rtm), kind, 0, 0, 0) + rtm

    ours, boot = message(RTM_NEWROUTE, RT_PROTO), message(RTM_NEWROUTE, 3)
    assert only_routes_of(ours + message(RTM_NEWROUTE + 1, RT_PROTO), RT_PROTO)
    assert not only_routes_of(ours + boot, RT_PROTO)
    assert not only_routes_of(message(16, RT_PROTO), RT_PROTO)  # RTM_NEWLINK: a link changed
    assert not only_routes_of(ours[:20], RT_PROTO)  # truncated: counts as a change
    assert not only_routes_of(b"", RT_PROTO)


def test_a_route_the_kernel_refuses_is_named_in_the_status_and_blocks_readiness_the_others_stay():
    import errno

    from ipsec_mesh.svcnat import ServiceTranslation
    from ipsec_mesh.svcnat.routes import RoutesRefused
    from ipsec_mesh.xfrm import XfrmError
    from tests.unit.test_svcnat import FakeNft, FakeRoutes, ep, service

    class RefusingRoutes(FakeRoutes):
        """A default route; the kernel refuses the route of 10.96.0.11 and takes the others."""

        def table(self):
            return [kernel_route("0.0.0.0/0")]

        def put(self, routes):
            refused = [(r, XfrmError("add routes", errno.ENOBUFS)) for r in routes if str(r.destination) == "10.96.0.11"]
            self.put_routes += [r for r in routes if not any(r is bad for bad, _ in refused)]
            if refused:
                raise RoutesRefused("add routes", refused)

    nft = FakeNft()
    nft.mtus = {"10.0.0.1": 1500, "10.0.0.2": 1500}
    translation = ServiceTranslation(nft_factory=lambda netns: nft, routes_factory=RefusingRoutes)
    services = (service("a", [ep("10.0.0.1")], ips=("10.96.0.10",)), service("b", [ep("10.0.0.2")], ips=("10.96.0.11",)))
    assert translation.apply(services)  # the translation itself is in place
    assert [str(r.destination) for r in translation._routes.put_routes] == ["10.96.0.10"]
    status = translation.status()
    assert status["route_problems"] == {"10.96.0.11": "the kernel refused its route: " + os.strerror(errno.ENOBUFS)}
    assert "10.96.0.11/32" in status["route_error"] and "10.96.0.11/32" in translation.problem()


NETWORKS = ["0.0.0.0/0", "10.0.0.0/8", "10.96.0.0/16", "10.96.0.0/30", *(f"10.96.0.{n}/32" for n in range(6)),
            "::/0", "fd00:96::/64", "fd00:96::/126", *(f"fd00:96::{n}/128" for n in range(6))]
DESTINATIONS = [ipaddress.ip_address(a) for a in
                [*(f"10.96.0.{n}" for n in range(6)), "11.0.0.1", *(f"fd00:96::{n}" for n in range(6)), "fd01::1"]]


def test_the_indexed_table_picks_what_a_scan_of_the_whole_table_picks():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from ipsec_mesh.svcnat.routes import RouteIndex, device_of

    one = st.builds(lambda net, proto, kind, prio, oif, mtu, mp, flags: _KernelRoute(
        ipaddress.ip_network(net), proto, kind, prio, oif,
        ipaddress.ip_network(net).network_address + 1, flags, 0, mtu, mp),
        st.sampled_from(NETWORKS), st.sampled_from((3, 4, RT_PROTO)), st.sampled_from((RTN_UNICAST, RTN_UNICAST, 6)),
        st.sampled_from((0, 100, 1024)), st.sampled_from((None, 2, 3, 3)), st.sampled_from((None, 1400)),
        st.booleans(), st.sampled_from((0, 4)))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(one, max_size=25))
    def check(table):
        index = RouteIndex(table)
        for destination in DESTINATIONS:
            assert derive(destination, 1458, index) == reference_derive(destination, 1458, table)
            best = reference_best(destination, table)
            expected = best.oif if best is not None and not best.multipath else None
            assert device_of(destination, index) == expected

    check()
