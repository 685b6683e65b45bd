"""Policy priorities and the exemptions every ipsec-mesh namespace needs.

XFRM picks the matching policy with the *lowest* priority value. Exemptions
must therefore sit below the peer policies, and priority 0 (the default) is
reserved for nobody: a peer policy at 0 could never be overridden.
"""

from __future__ import annotations

from ipaddress import ip_network

from .constants import Action, Direction
from .model import PolicySpec, Selector

BYPASS_PRIORITY = 1000  # exemptions (neighbour discovery) beat every peer policy
PEER_PRIORITY = 2000  # host-pair policies; wider selectors get larger numbers

ICMPV6 = 58
NEIGHBOR_SOLICITATION = 135
NEIGHBOR_ADVERTISEMENT = 136


def peer_priority(selector: Selector, base: int = PEER_PRIORITY) -> int:
    """More specific selectors win: base plus the number of wildcard address bits."""
    bits = selector.src.max_prefixlen
    wildcard_bits = 2 * bits - selector.src.prefixlen - selector.dst.prefixlen
    port_bonus = 0 if (selector.proto or selector.sport or selector.dport) else 1
    return base + 2 * wildcard_bits + port_bonus


def neighbor_discovery_bypass(priority: int = BYPASS_PRIORITY) -> list[PolicySpec]:
    """IPv6 NS/NA in and out without IPsec.

    Without these, an on-link IPv6 peer behind a `required` inbound policy can
    never be resolved: its neighbour advertisement arrives in clear and is
    dropped, so not even IKE (bypassed per socket) can reach it. XFRM carries
    the ICMPv6 type in the selector's source-port field.
    """
    any6 = (ip_network("::/0"), ip_network("::/0"))
    return [
        PolicySpec(Selector(*any6, proto=ICMPV6, sport=kind), direction, Action.ALLOW, priority)
        for kind in (NEIGHBOR_SOLICITATION, NEIGHBOR_ADVERTISEMENT)
        for direction in (Direction.IN, Direction.OUT)
    ]
