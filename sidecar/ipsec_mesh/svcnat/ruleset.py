"""The pod's Service translation as one nftables batch (pure: no kernel, no I/O).

Layout of the table the mesh owns, ``inet ipsec_mesh_svc`` (docs/services.md):

    map svc4/svc6     (cluster IP . protocol . port) -> goto the service port's chain
    set ports4/ports6 every translated (cluster IP . protocol . port)
    counter untranslated
    chain nat_output  type nat hook output priority -100: looks up svc4/svc6
    chain filter_output type filter hook output priority 0: a packet still addressed to a
                      service port here had no usable endpoint: counted and rejected, so it
                      never leaves towards the node unencrypted
    chain svc_<h>     one per service port and family: one DNAT rule that picks an endpoint
                      with numgen; with ClientIP affinity: set lookups, then numgen over ...
    chain ep_<h>      ... one chain per endpoint (ClientIP only): affinity update, then DNAT
    set aff_<h>       one per endpoint of a ClientIP service (dynamic, with timeout)

Names are hashes of what they stand for, so an unchanged endpoint keeps its chain and its
affinity set (and the clients stuck to it) across updates. Each batch first flushes the
table's rules and the lookup maps, deletes the objects the new state no longer has, then
adds everything: the kernel commits it as one transaction, so a new connection sees either
the old rule set or the new one. The script is built only from validated, typed values
(DNS labels, `ipaddress` objects, integers), so nothing from the peer map can inject syntax.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..meshapi.model import ServiceEndpoint, ServiceEntry, ServicePort, SessionAffinity

FAMILY = "inet"
TABLE = "ipsec_mesh_svc"
NAT_PRIORITY = -100  # dstnat: before the re-route that makes the XFRM lookup see the endpoint
FILTER_PRIORITY = 0
UNTRANSLATED_COUNTER = "untranslated"
AFFINITY_SET_SIZE = 65535

_ADDR = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}


@dataclass(frozen=True)
class Objects:
    """The dynamic objects (chains, sets) a rendered state has in the table."""

    chains: frozenset[str] = frozenset()
    sets: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Batch:
    script: str
    objects: Objects
    services: int  # services with at least one translated port
    endpoints: int  # endpoint translations (per port and family)


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


def _dnat(proto: str, version: int, endpoints: tuple[ServiceEndpoint, ...]) -> str:
    head = f"meta l4proto {proto} dnat {_ADDR[version][0]} to"
    if len(endpoints) == 1:
        return f"{head} {_endpoint_text(endpoints[0])}"
    choices = ", ".join(f"{i} : {ep.address} . {ep.port}" for i, ep in enumerate(endpoints))
    return f"{head} numgen random mod {len(endpoints)} map {{ {choices} }}"


def _table_header() -> list[str]:
    """Declarations that must exist before the flushes (idempotent when they do)."""
    return [
        f"table {FAMILY} {TABLE} {{",
        f"  comment \"ipsec-mesh: Service translation of this pod (owned by the sidecar)\"",
        f"  counter {UNTRANSLATED_COUNTER} {{ }}",
        *(f"  map svc{v} {{ type {_ADDR[v][1]} . inet_proto . inet_service : verdict; }}" for v in (4, 6)),
        *(f"  set ports{v} {{ type {_ADDR[v][1]} . inet_proto . inet_service; }}" for v in (4, 6)),
        f"  chain nat_output {{ type nat hook output priority {NAT_PRIORITY}; policy accept; }}",
        f"  chain filter_output {{ type filter hook output priority {FILTER_PRIORITY}; policy accept; }}",
        "}",
    ]


def render(services: tuple[ServiceEntry, ...], have: Objects) -> Batch:
    """The batch that turns a table holding `have` into the translation of `services`."""
    body: list[str] = []
    chains: set[str] = set()
    sets: set[str] = set()
    elements: dict[int, list[str]] = {4: [], 6: []}
    ports: dict[int, list[str]] = {4: [], 6: []}
    translated_services = endpoint_count = 0
    for service in services:
        affinity = service.session_affinity is SessionAffinity.CLIENT_IP
        any_port = False
        for cluster_ip in service.cluster_ips:
            v = cluster_ip.version
            saddr = f"{_ADDR[v][0]} saddr"
            for port in service.ports:
                proto = port.protocol.value.lower()
                key = f"{cluster_ip} . {proto} . {port.port}"
                ports[v].append(key)
                endpoints = usable_endpoints(port, v)
                if not endpoints:
                    continue  # left to filter_output: counted and rejected
                any_port = True
                endpoint_count += len(endpoints)
                label = f"{service.key} {port.protocol.value} {cluster_ip} {port.port}"
                svc_chain = _name("svc", service.key, cluster_ip, proto, port.port)
                chains.add(svc_chain)
                elements[v].append(f"{key} : goto {svc_chain}")
                if not affinity:
                    # One rule picks the endpoint (per new connection; conntrack keeps the rest).
                    body.append(f"  chain {svc_chain} {{ comment \"{label}\"")
                    body.append(f"    {_dnat(proto, v, endpoints)}")
                    body.append("  }")
                    continue
                targets = []
                for ep in endpoints:
                    ep_chain = _name("ep", service.key, cluster_ip, proto, port.port, ep.address, ep.port)
                    chains.add(ep_chain)
                    targets.append(ep_chain)
                    aff = _name("aff", ep_chain, service.affinity_timeout_seconds)
                    sets.add(aff)
                    body.append(f"  set {aff} {{ type {_ADDR[v][1]}; size {AFFINITY_SET_SIZE}; "
                                f"flags dynamic,timeout; timeout {service.affinity_timeout_seconds}s; }}")
                    body.append(f"  chain {ep_chain} {{ comment \"{label} -> {_endpoint_text(ep)}\"")
                    body.append(f"    update @{aff} {{ {saddr} }}")
                    body.append(f"    {_dnat(proto, v, (ep,))}")
                    body.append("  }")
                # The client's address in an endpoint's set sends it there again; else a random pick.
                svc_rules = [f"{saddr} @{_name('aff', t, service.affinity_timeout_seconds)} goto {t}"
                             for t in targets]
                if len(targets) == 1:
                    svc_rules.append(f"goto {targets[0]}")
                else:
                    choices = ", ".join(f"{i} : goto {t}" for i, t in enumerate(targets))
                    svc_rules.append(f"numgen random mod {len(targets)} vmap {{ {choices} }}")
                body.append(f"  chain {svc_chain} {{ comment \"{label}\"")
                body.extend(f"    {rule}" for rule in svc_rules)
                body.append("  }")
        translated_services += any_port
    objects = Objects(frozenset(chains), frozenset(sets))

    script = _table_header()
    script.append(f"flush table {FAMILY} {TABLE}")
    for v in (4, 6):
        script.append(f"flush map {FAMILY} {TABLE} svc{v}")
        script.append(f"flush set {FAMILY} {TABLE} ports{v}")
    # Unreferenced now (rules and map elements flushed above, in the same transaction).
    script += [f"delete chain {FAMILY} {TABLE} {chain}" for chain in sorted(have.chains - objects.chains)]
    script += [f"delete set {FAMILY} {TABLE} {name}" for name in sorted(have.sets - objects.sets)]
    script.append(f"table {FAMILY} {TABLE} {{")
    script += body
    script.append("  chain nat_output {")
    script += [f"    {_ADDR[v][0]} daddr . meta l4proto . th dport vmap @svc{v}" for v in (4, 6)]
    script.append("  }")
    script.append("  chain filter_output {")
    script += [f"    {_ADDR[v][0]} daddr . meta l4proto . th dport @ports{v} counter name {UNTRANSLATED_COUNTER} reject"
               for v in (4, 6)]
    script.append("  }")
    script.append("}")
    for v in (4, 6):
        if elements[v]:
            script.append(f"add element {FAMILY} {TABLE} svc{v} {{ {', '.join(elements[v])} }}")
        if ports[v]:
            script.append(f"add element {FAMILY} {TABLE} ports{v} {{ {', '.join(ports[v])} }}")
    return Batch("\n".join(script) + "\n", objects, translated_services, endpoint_count)
