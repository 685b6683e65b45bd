"""The pod's Service translation as nftables batches (pure: no kernel, no I/O).

Layout of the table the mesh owns, ``inet ipsec_mesh_svc`` (docs/services.md):

    map svc4/svc6     (cluster IP . protocol . port) -> goto the service port's chain
    set ports4/ports6 every translated (cluster IP . protocol . port)
    counter untranslated
    chain nat_output  type nat hook output priority -100: looks up svc4/svc6
    chain filter_output type filter hook output priority 0: a packet still addressed to a
                      service port here had no usable endpoint: counted and rejected, so it
                      never leaves towards the node unencrypted
    chain filter_input type filter hook input priority 0: the MSS option of SYN-ACKs of
                      connections to a service port is clamped to what fits inside ESP
    chain svc_<h>     one per (cluster IP, protocol, port): one DNAT rule that picks an endpoint
                      with numgen; with ClientIP affinity: set lookups, then numgen over ...
    chain ep_<h>      ... one chain per endpoint (ClientIP only): affinity update, then DNAT
    set aff_<h>       one per endpoint of a ClientIP service (dynamic, with timeout)

Names are hashes of what they stand for: a service port's chain of its lookup key, so the
key's map element never changes while the key stays, and an endpoint's chain and affinity
set of the endpoint, so an unchanged endpoint keeps its set (and the clients stuck to it).

`render` computes the whole `Table` the services want; `changes` turns the table in force
into it with one batch that touches only what differs: new chains and sets, the rules of
changed chains (flushed and re-added), the map and set elements added or gone, the chains
and sets gone. The lookup maps are never flushed: a key that stays is never touched, so a
new connection cannot miss it while the kernel commits. The kernel commits the batch as
one transaction, so a new connection sees either the old rule set or the new one. After a
start the rules in force are unknown: the first batch replaces every rule (`flush table`)
and still changes only the map elements that differ from the kernel's. The script is built
only from validated, typed values (DNS labels, `ipaddress` objects, integers), so nothing
from the peer map can inject syntax.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping

from ..meshapi.model import ServiceEndpoint, ServiceEntry, ServicePort, SessionAffinity

FAMILY = "inet"
TABLE = "ipsec_mesh_svc"
NAT_PRIORITY = -100  # dstnat: before the re-route that makes the XFRM lookup see the endpoint
FILTER_PRIORITY = 0
UNTRANSLATED_COUNTER = "untranslated"
MSS_CHAIN = "filter_input"
AFFINITY_SET_SIZE = 65535

_ADDR = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}
COMMENT_MAX = 128  # libnftnl's limit for a rule comment

#: A lookup key: (IP version, "cluster IP . protocol . port" in nft syntax).
Key = tuple[int, str]


@dataclass(frozen=True)
class Objects:
    """What the kernel's table holds, as read back at a start (its rules are not read)."""

    chains: frozenset[str] = frozenset()
    sets: frozenset[str] = frozenset()
    #: The lookup maps' elements: key -> the chain it jumps to.
    elements: Mapping[Key, str] = field(default_factory=dict)
    ports: frozenset[Key] = frozenset()


@dataclass(frozen=True)
class Fragment:
    """One Service's part of the table."""

    chains: tuple[tuple[str, tuple[str, ...]], ...]  # endpoint chains before the service chain using them
    sets: tuple[tuple[str, str], ...]  # name, declaration
    elements: tuple[tuple[Key, str], ...]
    ports: tuple[Key, ...]
    endpoints: int  # endpoint translations (per port and family)


@dataclass(frozen=True)
class Table:
    """Everything the translation puts into the table for a list of Services, by name."""

    chains: Mapping[str, tuple[str, ...]]
    sets: Mapping[str, str]
    elements: Mapping[Key, str]
    ports: frozenset[Key]
    #: Per service ("namespace/name"): the entry it was rendered from, and its part.
    parts: Mapping[str, tuple[ServiceEntry, Fragment]]
    #: IP version -> the MSS that SYN-ACKs of translated connections are clamped to.
    mss: Mapping[int, int] = field(default_factory=dict)

    @property
    def services(self) -> int:
        """Services with at least one translated port."""
        return sum(1 for _, part in self.parts.values() if part.elements)

    @property
    def endpoints(self) -> int:
        return sum(part.endpoints for _, part in self.parts.values())


def usable_endpoints(port: ServicePort, version: int) -> tuple[ServiceEndpoint, ...]:
    """Ready endpoints; without any, serving ones that are terminating (as kube-proxy does)."""
    family = [ep for ep in port.endpoints if ep.address.version == version]
    ready = tuple(ep for ep in family if ep.ready)
    return ready or tuple(ep for ep in family if ep.serving and ep.terminating)


def _name(prefix: str, *parts: object) -> str:
    digest = hashlib.sha256("\0".join(str(part) for part in parts).encode()).hexdigest()[:16]
    return f"{prefix}_{digest}"


def _endpoint_text(ep: ServiceEndpoint) -> str:
    return f"{ep.address}:{ep.port}" if ep.address.version == 4 else f"[{ep.address}]:{ep.port}"


def _comment(text: str) -> str:
    return f"comment \"{text[:COMMENT_MAX]}\""


def _dnat(proto: str, version: int, endpoints: tuple[ServiceEndpoint, ...]) -> str:
    head = f"meta l4proto {proto} dnat {_ADDR[version][0]} to"
    if len(endpoints) == 1:
        return f"{head} {_endpoint_text(endpoints[0])}"
    choices = ", ".join(f"{i} : {ep.address} . {ep.port}" for i, ep in enumerate(endpoints))
    return f"{head} numgen random mod {len(endpoints)} map {{ {choices} }}"


def lookup_key(address, protocol: str, port: int) -> Key:
    return address.version, f"{address} . {protocol} . {port}"


def _table_header() -> list[str]:
    """Declarations that must exist before anything else (idempotent when they do)."""
    return [
        f"table {FAMILY} {TABLE} {{",
        "  comment \"ipsec-mesh: Service translation of this pod (owned by the sidecar)\"",
        f"  counter {UNTRANSLATED_COUNTER} {{ }}",
        *(f"  map svc{v} {{ type {_ADDR[v][1]} . inet_proto . inet_service : verdict; }}" for v in (4, 6)),
        *(f"  set ports{v} {{ type {_ADDR[v][1]} . inet_proto . inet_service; }}" for v in (4, 6)),
        f"  chain nat_output {{ type nat hook output priority {NAT_PRIORITY}; policy accept; }}",
        f"  chain filter_output {{ type filter hook output priority {FILTER_PRIORITY}; policy accept; }}",
        f"  chain {MSS_CHAIN} {{ type filter hook input priority {FILTER_PRIORITY}; policy accept; }}",
        "}",
    ]


#: The base chains' rules (re-added only after a `flush table`).
_BASE_CHAINS = (
    ("nat_output", tuple(f"{_ADDR[v][0]} daddr . meta l4proto . th dport vmap @svc{v}" for v in (4, 6))),
    ("filter_output", tuple(f"{_ADDR[v][0]} daddr . meta l4proto . th dport @ports{v} counter name "
                            f"{UNTRANSLATED_COUNTER} reject" for v in (4, 6))),
)


def _mss_rules(mss: Mapping[int, int]) -> tuple[str, ...]:
    """Clamp the MSS a SYN-ACK offers on a connection the pod opened to a service port.

    The client socket's route is the ClusterIP's (no ESP in its MTU): its segment size comes
    from this option, so a smaller value makes its segments fit after the DNAT and ESP.
    `ct original` still holds the ClusterIP, whatever the NAT did to the packet.
    """
    return tuple(f"tcp flags & (syn | ack) == syn | ack ct direction reply ct original {_ADDR[v][0]} daddr . "
                 f"meta l4proto . ct original proto-dst @ports{v} "
                 f"tcp option maxseg size > {int(mss[v])} tcp option maxseg size set {int(mss[v])}"
                 for v in (4, 6) if v in mss)


def _fragment(service: ServiceEntry) -> Fragment:
    affinity = service.session_affinity is SessionAffinity.CLIENT_IP
    timeout = service.affinity_timeout_seconds
    chains: list[tuple[str, tuple[str, ...]]] = []
    sets: list[tuple[str, str]] = []
    elements: list[tuple[Key, str]] = []
    ports: list[Key] = []
    endpoint_count = 0
    for cluster_ip in service.cluster_ips:
        v = cluster_ip.version
        saddr = f"{_ADDR[v][0]} saddr"
        for port in service.ports:
            proto = port.protocol.value.lower()
            key = lookup_key(cluster_ip, proto, port.port)
            ports.append(key)
            endpoints = usable_endpoints(port, v)
            if not endpoints:
                continue  # left to filter_output: counted and rejected
            endpoint_count += len(endpoints)
            label = f"{service.key} {port.protocol.value} {cluster_ip} {port.port}"
            svc_chain = _name("svc", *key)
            elements.append((key, svc_chain))
            if not affinity:
                # One rule picks the endpoint (per new connection; conntrack keeps the rest).
                chains.append((svc_chain, (f"{_dnat(proto, v, endpoints)} {_comment(label)}",)))
                continue
            targets = []
            for ep in endpoints:
                ep_chain = _name("ep", service.key, cluster_ip, proto, port.port, ep.address, ep.port)
                aff = _name("aff", ep_chain, timeout)
                sets.append((aff, f"type {_ADDR[v][1]}; size {AFFINITY_SET_SIZE}; flags dynamic,timeout; "
                                  f"timeout {timeout}s;"))
                chains.append((ep_chain, (f"update @{aff} {{ {saddr} }}",
                                          f"{_dnat(proto, v, (ep,))} {_comment(f'{label} -> {_endpoint_text(ep)}')}")))
                targets.append((ep_chain, aff))
            # The client's address in an endpoint's set sends it there again; else a random pick.
            rules = [f"{saddr} @{aff} goto {target}" for target, aff in targets]
            if len(targets) == 1:
                rules.append(f"goto {targets[0][0]} {_comment(label)}")
            else:
                choices = ", ".join(f"{i} : goto {target}" for i, (target, _) in enumerate(targets))
                rules.append(f"numgen random mod {len(targets)} vmap {{ {choices} }} {_comment(label)}")
            chains.append((svc_chain, tuple(rules)))
    return Fragment(tuple(chains), tuple(sets), tuple(elements), tuple(ports), endpoint_count)


def render(services: tuple[ServiceEntry, ...], previous: Table | None = None,
           mss: Mapping[int, int] | None = None) -> Table:
    """The table that translates `services`; parts of `previous` whose Service is unchanged are reused.

    `mss`: IP version -> MSS clamp for SYN-ACKs of translated connections (none for a version left out).
    """
    mss = dict(mss or {})
    chains: dict[str, tuple[str, ...]] = {}
    sets: dict[str, str] = {}
    elements: dict[Key, str] = {}
    ports: set[Key] = set()
    parts: dict[str, tuple[ServiceEntry, Fragment]] = {}
    earlier = previous.parts if previous is not None else {}
    for service in services:
        known = earlier.get(service.key)
        part = known[1] if known is not None and known[0] == service else _fragment(service)
        parts[service.key] = (service, part)
        chains.update(part.chains)
        sets.update(part.sets)
        elements.update(part.elements)
        ports.update(part.ports)
    return Table(chains, sets, elements, frozenset(ports), parts, mss)


def _elements(command: str, name: str, keys: list[Key], data: Mapping[Key, str] | None = None) -> list[str]:
    """`add element`/`delete element` lines for the sets `name`4/`name`6 (maps: with `data`)."""
    lines = []
    for v in (4, 6):
        items = [key if data is None else f"{key} : goto {data[(kv, key)]}" for kv, key in keys if kv == v]
        if items:
            lines.append(f"{command} element {FAMILY} {TABLE} {name}{v} {{ {', '.join(items)} }}")
    return lines


def changes(want: Table, have: Table | Objects) -> str:
    """One batch that turns the table holding `have` into `want`, touching only what differs.

    `have` a Table: what our last batch installed (its rules known). `have` Objects: what the
    kernel has after a start: every rule is replaced, the elements are still only diffed.
    """
    known = isinstance(have, Table)
    have_chains: Mapping[str, tuple[str, ...] | None] = have.chains if known else dict.fromkeys(have.chains)
    gone_chains = sorted(set(have_chains) - set(want.chains))
    gone_sets = sorted(set(have.sets) - set(want.sets))
    mss_changed = not known or have.mss != want.mss
    if known:
        script = [f"flush chain {FAMILY} {TABLE} {name}" for name, rules in want.chains.items()
                  if name in have_chains and have_chains[name] != rules]
        script += [f"flush chain {FAMILY} {TABLE} {MSS_CHAIN}"] if mss_changed else []
        script += [f"flush chain {FAMILY} {TABLE} {name}" for name in gone_chains]
    else:
        script = _table_header() + [f"flush table {FAMILY} {TABLE}"]
    # A key's element changes only when it goes (or, after a start, when it points elsewhere).
    script += _elements("delete", "svc", [key for key, chain in have.elements.items()
                                          if want.elements.get(key) != chain])
    block = [f"  set {name} {{ {declaration} }}" for name, declaration in want.sets.items() if name not in have.sets]
    new_rules = [(name, rules) for name, rules in want.chains.items() if have_chains.get(name) != rules]
    if not known:
        new_rules += _BASE_CHAINS
    if mss_changed:
        new_rules.append((MSS_CHAIN, _mss_rules(want.mss)))
    for name, rules in new_rules:
        block += [f"  chain {name} {{", *(f"    {rule}" for rule in rules), "  }"]
    if block:
        script += [f"table {FAMILY} {TABLE} {{", *block, "}"]
    script += _elements("add", "svc", [key for key, chain in want.elements.items()
                                      if have.elements.get(key) != chain], want.elements)
    script += _elements("delete", "ports", sorted(have.ports - want.ports))
    script += _elements("add", "ports", sorted(want.ports - have.ports))
    # Unreferenced now: their rules were flushed and the elements pointing to them deleted above.
    script += [f"delete chain {FAMILY} {TABLE} {name}" for name in gone_chains]
    script += [f"delete set {FAMILY} {TABLE} {name}" for name in gone_sets]
    return "\n".join(script) + "\n" if script else ""
