"""ClusterIP route requests packed by `svcnat.routes` equal pyroute2's encoding, byte for byte (no kernel).

The reference (tests/support/route_reference.py) builds each request the way routes.py did before
it packed its own: a pyroute2 `rtmsg` filled field by field and encoded by pyroute2, nested
RTA_METRICS included.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_mesh.svcnat.routes import (
    KEPT_FLAGS,
    RTM_DELROUTE,
    RTM_NEWROUTE,
    Route,
    RouteError,
    _parse,
    dump_request_body,
    route_body,
)
from tests.support.route_reference import pyroute2_body, pyroute2_dump_request, pyroute2_route_message

v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
v6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


@st.composite
def routes(draw: st.DrawFn) -> Route:
    family = draw(st.sampled_from((v4, v6)))
    return Route(destination=draw(family), mtu=draw(st.integers(0, 2**32 - 1)), oif=draw(st.integers(0, 2**31 - 1)),
                 gateway=draw(st.none() | family), flags=draw(st.sampled_from((0, KEPT_FLAGS))),
                 scope=draw(st.sampled_from((0, 200, 253))))


@settings(max_examples=2000, deadline=None)
@given(routes(), st.sampled_from((RTM_NEWROUTE, RTM_DELROUTE)))
def test_packed_route_requests_equal_pyroute2s_bytes(route, msg_type):
    assert route_body(route) == pyroute2_body(pyroute2_route_message(route), msg_type)


def test_every_kind_of_route_was_compared():
    """The generated cases above cover both families with and without a gateway (fixed cases, so a
    change of the strategy cannot quietly drop one)."""
    cases = [Route(ipaddress.ip_address(dst), 1458, 7, ipaddress.ip_address(gw) if gw else None, flags)
             for dst, gw in (("10.96.0.10", "10.0.0.1"), ("10.96.0.10", None), ("fd00:96::a", "fe80::1"),
                             ("fd00:96::a", None))
             for flags in (0, KEPT_FLAGS)]
    for route in cases:
        body = route_body(route)
        assert body == pyroute2_body(pyroute2_route_message(route))
        parsed = _parse(bytes(16) + body)
        assert parsed is not None and parsed.ours and parsed.mtu == 1458 and parsed.oif == 7
        assert parsed.gateway == route.gateway and parsed.network.network_address == route.destination


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_the_dump_request_equals_pyroute2s(family):
    assert dump_request_body(family) == pyroute2_body(pyroute2_dump_request(family), 26)


@pytest.mark.parametrize("field", [{"mtu": 2**32}, {"mtu": -1}, {"oif": 2**32}, {"oif": -1}, {"flags": 2**32}])
def test_a_value_outside_its_kernel_field_is_a_typed_error(field):
    route = Route(ipaddress.ip_address("10.96.0.10"), 1458, 2, None)
    with pytest.raises(RouteError, match="10.96.0.10/32"):
        route_body(Route(**{**route.__dict__, **field}))
