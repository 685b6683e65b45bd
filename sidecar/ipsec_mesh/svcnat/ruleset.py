"""The pod's Service translation as nftables batches (pure: no kernel, no I/O).

Layout of the table the mesh owns, ``inet ipsec_mesh_svc`` (docs/services.md), per family v:

    map svc<v>    (cluster IP . protocol . port) -> goto the pick chain that chooses an endpoint
    map ep<v><p>  per protocol p: (cluster IP . port . index) -> endpoint address . port
    set ports<v>  every translated (cluster IP . protocol . port)
    counter untranslated
    chain nat_output    type nat hook output priority -100: looks up stick<v> (jump), then svc<v>
    chain filter_output type filter hook output priority 0: a packet still addressed to a service
                        port here had no usable endpoint: counted and rejected (never sent to the
                        node unencrypted); new connections of ClientIP ports are recorded (rec<v>)
    chain filter_input  type filter hook input priority 0: the MSS option of SYN-ACKs of
                        connections to a service port is clamped to what fits inside ESP
    chain pick_<h>      one per (family, protocol, endpoint count N): DNAT to
                        ep<v><p>[daddr . dport . numgen random mod N]
    map aff_<h>, chain stick_<h>, chain rec_<h>: per ClientIP service port (and timeout), for as
                        long as the port exists: client address -> endpoint (dynamic, timeout; IPv6:
                        address only, one map aff_<h>_<port> per target port, the chains' names
                        then also hash the target ports); stick<v> jumps to stick_<h>, which DNATs
                        to the client's endpoint if it has one, else returns to svc<v>'s random pick;
                        after the DNAT, rec<v> leads a new connection to rec_<h>, which records its
                        endpoint if it is in force (live<v>)
    map stick<v>, map rec<v>, set live<v>: the ClientIP ports' affinity and record chains, endpoints

An update is a handful of element commands whatever the number of Services it changes: the
endpoints of a service port are elements of ep<v> (an endpoint that stays keeps its index, so
a replaced endpoint is one element), and a change of its endpoint count switches its svc<v>
element to another pick chain (delete and add in one batch, which the
kernel commits at once). Chains are named after their rules and never modified, so no packet
ever meets a rule (or its anonymous set) that the batch replaces: a rule flushed in the batch
whose commit a packet straddles made its lookup miss (the packet was then rejected in the pod,
about 1 new flow in 50000 during updates). New chains come in a batch of their own before the
elements that lead to them (`changes`). For the same reason what a batch stops using lingers
one batch: index elements beyond a shrunk endpoint count point to endpoints in force, and
chains and affinity maps no longer referred to are deleted by the next batch.

A removed endpoint creates no object: its live<v> element goes in a batch of its own, then
the next batch changes the index elements and empties (flushes) the port's affinity map, so
affinity never leads to it. Emptying in the batch that stops recording would not do: a packet
still running the old generation between the flush and the commit would record the endpoint
in the emptied map. After the first commit nothing records it (rec_<h> checks live<v> at the
packet's own lookup), so the flush leaves no entry for it. A port that only gains endpoints
keeps its map's entries (clients stay where they are).

`render` computes the whole `Table` the services want; `changes` turns the table in force
into it (one batch, or a batch before it for new chains and going live<v> elements). After a
start the kernel's objects are read back (`Objects`): chains already there are kept (their
names say their rules), only the base chains are rewritten, and the elements are diffed like
any update (a port's endpoints in force are read from its index elements, so a removal whose
two batches a restart split still empties the map). The script is built only from validated,
typed values (DNS labels, `ipaddress` objects, integers), so nothing from the peer map can
inject syntax.
"""

from __future__ import annotations

import hashlib
from dataclasses import field
from functools import lru_cache
from typing import Mapping

from ..meshapi.model import ServiceEndpoint, ServiceEntry, ServicePort, SessionAffinity
from ..records import record
from .presence import FAMILY, TABLE

NAT_PRIORITY = -100  # dstnat: before the re-route that makes the XFRM lookup see the endpoint
FILTER_PRIORITY = 0
UNTRANSLATED_COUNTER = "untranslated"
MSS_CHAIN = "filter_input"
BASE_CHAINS = ("nat_output", "filter_output", MSS_CHAIN)
#: Entries per affinity map: the clients are this pod's own addresses (a larger size makes the kernel
#: allocate its hash table for that many up front, which made every batch dear).
AFFINITY_SET_SIZE = 64
#: IPv6 target ports per service port with ClientIP affinity (each one a map and two rules); beyond, no affinity.
MAX_AFFINITY_TARGET_PORTS = 8
#: The element maps and sets of the header, per family (never deleted; their elements are diffed).
PROTOCOLS = ("tcp", "udp", "sctp")
ELEMENT_SETS = (tuple(f"{name}{v}" for name in ("svc", "stick", "rec", "live", "ports") for v in (4, 6))
                + tuple(f"ep{v}{proto}" for v in (4, 6) for proto in PROTOCOLS))

#: Devices on which the sidecar turned `tx-checksum-sctp` off (it was on): a set of this table, so the fact
#: outlives the sidecar as the table does (offload.OffloadRecord). Not part of the translation: never diffed.
OFFLOAD_SET = "sctp_crc_off"
TABLE_COMMENT = "ipsec-mesh: Service translation of this pod (owned by the sidecar)"

_ADDR = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}
COMMENT_MAX = 128  # libnftnl's limit for a comment

#: A lookup key: (IP version, "cluster IP . protocol . port" in nft syntax).
Key = tuple[int, str]
#: Element set name -> element (nft syntax) -> its data ("" in a set).
Elements = Mapping[str, Mapping[str, str]]


@record(frozen=True)
class PortState:
    """What one service port's elements say: the choice among `count`, its affinity map."""

    count: int
    affinity: str | None = None
    timeout: int | None = None
    endpoints: frozenset[str] = frozenset()  # "address . port" of the endpoints in force
    #: The endpoint at each index ("address . port"), so an update keeps the survivors where they are.
    order: tuple[str, ...] = ()
    #: The port's affinity maps: `affinity` (IPv4), `affinity`_<target port> per target port (IPv6).
    maps: tuple[str, ...] = ()


@record(frozen=True)
class Objects:
    """What the kernel's table holds, as read back at a start (its rules are not read)."""

    chains: frozenset[str] = frozenset()
    #: Sets and maps other than the header's: name -> their timeout (None: none).
    sets: Mapping[str, int | None] = field(default_factory=dict)
    elements: Elements = field(default_factory=dict)

    def port_states(self) -> dict[Key, PortState]:
        """Per lookup key, the state its elements describe (as `Table.states`)."""
        states = {}
        stems: dict[str, list[str]] = {}  # aff_<h> -> its maps (aff_<h>, or aff_<h>_<target port> per IPv6 port)
        for name in sorted(self.sets):
            stems.setdefault("_".join(name.split("_")[:2]), []).append(name)
        for v in (4, 6):
            counts: dict[str, int] = {}
            targets: dict[str, dict[int, str]] = {}
            for proto in PROTOCOLS:
                for element, target in self.elements.get(f"ep{v}{proto}", {}).items():
                    address, port, index = element.split(" . ")
                    key = f"{address} . {proto} . {port}"
                    counts[key] = max(counts.get(key, 0), int(index) + 1)
                    targets.setdefault(key, {})[int(index)] = target
            for key in self.elements.get(f"svc{v}", {}):
                rec = self.elements.get(f"rec{v}", {}).get(key, "")
                stem = "aff_" + rec.removeprefix("goto rec_").split("_")[0] if rec.startswith("goto rec_") else None
                maps = tuple(stems.get(stem, ())) if stem else ()
                affinity = stem if maps else None
                slots = targets.get(key, {})
                states[(v, key)] = PortState(counts.get(key, 0), affinity,
                                             self.sets.get(maps[0]) if maps else None,
                                             frozenset(slots.values()) if affinity else frozenset(),
                                             tuple(slots.get(i, "") for i in range(counts.get(key, 0))), maps)
        return states


@record(frozen=True)
class Fragment:
    """One Service's part of the table."""

    chains: Mapping[str, tuple[str, ...]]
    sets: Mapping[str, str]  # name, declaration
    elements: Elements
    states: Mapping[Key, PortState]
    endpoints: int  # endpoint translations (per port and family)
    #: Index elements kept for one batch after a shrink: the next batch renders the Service again.
    tail: bool = False
    #: What the kernel does differently from what the Service asks (said in its status).
    notes: tuple[str, ...] = ()


@record(frozen=True)
class Table:
    """Everything the translation puts into the table for a list of Services, by name."""

    #: Chains (name -> rules; None: left by an earlier instance, rules unknown), lingering ones included.
    chains: Mapping[str, tuple[str, ...] | None]
    sets: Mapping[str, str | None]
    elements: Elements
    #: Per service ("namespace/name"): the entry it was rendered from, and its part.
    parts: Mapping[str, tuple[ServiceEntry, Fragment]]
    #: IP version -> the MSS that SYN-ACKs of translated connections are clamped to.
    mss: Mapping[int, int] = field(default_factory=dict)
    #: The chains and sets the elements refer to now (the others linger until the next batch).
    active_chains: frozenset[str] = frozenset()
    active_sets: frozenset[str] = frozenset()
    states: Mapping[Key, PortState] = field(default_factory=dict)
    #: Affinity maps emptied by this batch: their port lost an endpoint.
    flush: frozenset[str] = frozenset()

    @property
    def services(self) -> int:
        """Services with at least one translated port."""
        return sum(1 for _, part in self.parts.values() if part.states)

    @property
    def endpoints(self) -> int:
        return sum(part.endpoints for _, part in self.parts.values())


def usable_endpoints(port: ServicePort, version: int) -> tuple[ServiceEndpoint, ...]:
    """Ready endpoints; without any, serving ones that are terminating (as kube-proxy does)."""
    family = [ep for ep in port.endpoints if ep.address.version == version]
    ready = tuple(ep for ep in family if ep.ready)
    return ready or tuple(ep for ep in family if ep.serving and ep.terminating)


#: Names and address texts are asked for again on every update of 500 Services: kept, within a bound.
_MEMO = 1 << 16


@lru_cache(maxsize=_MEMO)
def _name(prefix: str, *parts: object) -> str:
    digest = hashlib.sha256("\0".join(str(part) for part in parts).encode()).hexdigest()[:16]
    return f"{prefix}_{digest}"


@lru_cache(maxsize=_MEMO)
def _text(address) -> str:
    return str(address)


def lookup_key(address, protocol: str, port: int) -> Key:
    return address.version, f"{_text(address)} . {protocol} . {port}"


def _affinity_map(types: str, timeout: int) -> str:
    return f"type {types}; size {AFFINITY_SET_SIZE}; flags dynamic,timeout; timeout {timeout}s;"


def _table_header() -> list[str]:
    """Declarations that must exist before anything else (idempotent when they do)."""
    lines = [f"table {FAMILY} {TABLE} {{",
             f"  comment \"{TABLE_COMMENT}\"",
             f"  counter {UNTRANSLATED_COUNTER} {{ }}"]
    for v in (4, 6):
        fam, addr = _ADDR[v]
        key = f"{addr} . inet_proto . inet_service"
        # One index map per protocol: `typeof` with `th dport` cannot be read back by libnftables.
        lines += [f"  map ep{v}{proto} {{ typeof {fam} daddr . {proto} dport . numgen random mod 1 : "
                  f"{fam} daddr . {proto} dport; }}" for proto in PROTOCOLS]
        lines += [f"  map svc{v} {{ type {key} : verdict; }}",
                  f"  map stick{v} {{ type {key} : verdict; }}",
                  f"  map rec{v} {{ type {key} : verdict; }}",
                  f"  set live{v} {{ type {key} . {addr} . inet_service; }}",
                  f"  set ports{v} {{ type {key}; }}"]
    return lines + [
        f"  chain nat_output {{ type nat hook output priority {NAT_PRIORITY}; policy accept; }}",
        f"  chain filter_output {{ type filter hook output priority {FILTER_PRIORITY}; policy accept; }}",
        f"  chain {MSS_CHAIN} {{ type filter hook input priority {FILTER_PRIORITY}; policy accept; }}",
        "}",
    ]


#: The base chains' rules (re-added only after a start; they hold no anonymous set a miss would matter in).
_BASE_RULES = (
    ("nat_output", tuple(f"{_ADDR[v][0]} daddr . meta l4proto . th dport vmap @{name}{v}"
                         for name in ("stick", "svc") for v in (4, 6))),
    ("filter_output",
     tuple(f"{_ADDR[v][0]} daddr . meta l4proto . th dport @ports{v} counter name {UNTRANSLATED_COUNTER} reject"
           for v in (4, 6))
     + tuple(f"ct state new meta l4proto {{ tcp, udp, sctp }} ct original {_ADDR[v][0]} daddr . meta l4proto . "
             f"ct original proto-dst vmap @rec{v}" for v in (4, 6))),
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


def _chain(chains: dict, rules: tuple[str, ...]) -> str:
    """A chain named after its rules (so never modified: other rules get another chain)."""
    name = _name("pick", *rules)
    chains[name] = rules
    return name


def _slots(targets: list[str], before: tuple[str, ...]) -> tuple[str, ...]:
    """The endpoint at each index: the ones that stay keep theirs, new ones fill the gaps (one element each)."""
    wanted, slots, placed = set(targets), [""] * len(targets), set()
    for index, target in enumerate(before[:len(targets)]):
        if target in wanted and target not in placed:
            slots[index] = target
            placed.add(target)
    rest = iter(target for target in targets if target not in placed)
    return tuple(slot or next(rest) for slot in slots)


def _fragment(service: ServiceEntry, before: Mapping[Key, PortState]) -> Fragment:
    affinity = service.session_affinity is SessionAffinity.CLIENT_IP
    timeout = service.affinity_timeout_seconds
    chains: dict[str, tuple[str, ...]] = {}
    sets: dict[str, str] = {}
    elements: dict[str, dict[str, str]] = {}
    states: dict[Key, PortState] = {}
    endpoint_count, tail = 0, False
    notes: list[str] = []
    for cluster_ip in service.cluster_ips:
        v = cluster_ip.version
        fam, addr = _ADDR[v]
        for port in service.ports:
            proto = port.protocol.value.lower()
            key = lookup_key(cluster_ip, proto, port.port)
            elements.setdefault(f"ports{v}", {})[key[1]] = ""
            endpoints = usable_endpoints(port, v)
            if not endpoints:
                continue  # left to filter_output: counted and rejected
            endpoint_count += len(endpoints)
            previous = before.get(key)
            targets = _slots([f"{_text(ep.address)} . {ep.port}" for ep in endpoints],
                             previous.order if previous is not None else ())
            # A shrunk choice keeps its higher indexes one batch, on endpoints in force: a packet
            # that took the old pick chain before the commit still finds its element after it.
            indexes = max(len(targets), previous.count if previous is not None else 0)
            tail |= indexes > len(targets)
            ep_map = elements.setdefault(f"ep{v}{proto}", {})
            for i in range(indexes):
                ep_map[f"{_text(cluster_ip)} . {port.port} . {i}"] = targets[i % len(targets)]
            pick = (f"meta l4proto {proto} dnat {fam} to {fam} daddr . {proto} dport . "
                    f"numgen random mod {len(targets)} map @ep{v}{proto}")
            # libnftables 1.0.6 cannot store an IPv6 address and a port from the packet in one
            # map element (its register allocation asserts): IPv6 affinity maps hold the address,
            # one map per target port of the port's endpoints, each DNATing to its own port.
            tports = sorted({ep.port for ep in endpoints}) if v == 6 else []
            if affinity and len(tports) > MAX_AFFINITY_TARGET_PORTS:
                notes.append(f"{key[1]}: no ClientIP affinity over IPv6 endpoints with more than "
                             f"{MAX_AFFINITY_TARGET_PORTS} target ports")
            if not affinity or len(tports) > MAX_AFFINITY_TARGET_PORTS:
                elements.setdefault(f"svc{v}", {})[key[1]] = f"goto {_chain(chains, (pick,))}"
                states[key] = PortState(len(targets), order=targets)
                continue
            # One affinity map per service port (and timeout; IPv6: and target port), for as long as the
            # port exists: a removed endpoint empties it (`render`), so affinity never leads to it.
            # Its chains hold a rule per IPv6 target port: named after them too, so a new target port
            # makes new chains but keeps the maps (and their clients).
            suffix = _name("aff", key, timeout).removeprefix("aff_")
            rules = suffix + (_name("", *tports)[:9] if tports else "")
            stem, stick, rec = f"aff_{suffix}", f"stick_{rules}", f"rec_{rules}"
            live_check = (f"meta l4proto {proto} ct original {fam} daddr . meta l4proto . ct original proto-dst . "
                          f"{fam} daddr . {proto} dport != @live{v} return")
            if v == 4:
                maps = (stem,)
                sets[stem] = _affinity_map(f"{addr} : {addr} . inet_service", timeout)
                dnats = (f"meta l4proto {proto} dnat {fam} to {fam} saddr map @{stem}",)
                records = (f"update @{stem} {{ {fam} saddr : {fam} daddr . {proto} dport }}",)
            else:
                maps = tuple(f"{stem}_{tport}" for tport in tports)
                for name in maps:
                    sets[name] = _affinity_map(f"{addr} : {addr}", timeout)
                dnats = tuple(f"meta l4proto {proto} dnat {fam} to {fam} saddr map @{name} : {tport}"
                              for name, tport in zip(maps, tports, strict=True))
                records = tuple(f"meta l4proto {proto} {proto} dport {tport} update @{name} {{ {fam} saddr : {fam} daddr }}"
                                for name, tport in zip(maps, tports, strict=True))
            # The client's endpoint if it has one (a DNAT accepts), else back in nat_output to svc<v>'s
            # random pick, as without affinity. No jump out of stick_<h>: the kernel checks every chain a
            # verdict-map change makes reachable, and a jump per port to a map of all ports made that quadratic.
            chains[stick] = dnats
            elements.setdefault(f"stick{v}", {})[key[1]] = f"jump {stick}"
            elements.setdefault(f"svc{v}", {})[key[1]] = f"goto {_chain(chains, (pick,))}"
            # After the DNAT: a new connection to an endpoint in force refreshes (or sets) its client's entry.
            chains[rec] = (live_check, *records)
            elements.setdefault(f"rec{v}", {})[key[1]] = f"goto {rec}"
            live = elements.setdefault(f"live{v}", {})
            for target in targets:
                live[f"{key[1]} . {target}"] = ""
            states[key] = PortState(len(targets), stem, timeout, frozenset(targets), targets, maps)
    return Fragment(chains, sets, elements, states, endpoint_count, tail, tuple(notes))


def render(services: tuple[ServiceEntry, ...], previous: Table | Objects | None = None,
           mss: Mapping[int, int] | None = None) -> Table:
    """The table that translates `services`, following `previous` (our last batch, or the kernel's objects).

    Parts of a previous Table whose Service is unchanged are reused. `mss`: IP version -> MSS
    clamp for SYN-ACKs of translated connections (none for a version left out).
    """
    mss = dict(mss or {})
    chains: dict[str, tuple[str, ...] | None] = {}
    sets: dict[str, str | None] = {}
    elements: dict[str, dict[str, str]] = {}
    parts: dict[str, tuple[ServiceEntry, Fragment]] = {}
    states: dict[Key, PortState] = {}
    if isinstance(previous, Table):
        earlier, before = previous.parts, previous.states
        lingering_chains = {name: previous.chains[name] for name in previous.active_chains}
        lingering_sets = {name: previous.sets[name] for name in previous.active_sets}
    else:
        earlier, before = {}, previous.port_states() if previous is not None else {}
        lingering_chains = dict.fromkeys(previous.chains if previous is not None else ())
        lingering_sets = dict.fromkeys(previous.sets if previous is not None else ())
    for service in services:
        known = earlier.get(service.key)
        reuse = known is not None and known[0] == service and not known[1].tail
        part = known[1] if reuse else _fragment(service, before)
        parts[service.key] = (service, part)
        chains.update(part.chains)
        sets.update(part.sets)
        for name, items in part.elements.items():
            elements.setdefault(name, {}).update(items)
        states.update(part.states)
    # A port that goes keeps its index elements one batch too, for a packet that took its pick chain.
    for (v, key), state in before.items():
        if (v, key) not in states:
            address, proto, port = key.split(" . ")
            old = previous.elements.get(f"ep{v}{proto}", {})
            ep_map = elements.setdefault(f"ep{v}{proto}", {})
            for index in (f"{address} . {port} . {i}" for i in range(state.count)):
                if index in old:
                    ep_map[index] = old[index]
    # A port that lost an endpoint empties its affinity map (`changes`: in the batch after the one that took the
    # endpoint out of live<v>, so nothing records it again before the map is emptied).
    # An IPv6 port's map of a target port that goes is emptied too: wanted again before it is deleted, it
    # would otherwise lead its clients back to the removed endpoint.
    flush = frozenset(name for key, state in states.items()
                      if state.affinity is not None and (old := before.get(key)) is not None
                      and old.affinity == state.affinity and old.endpoints - state.endpoints
                      for name in (*state.maps, *old.maps))
    active_chains, active_sets = frozenset(chains), frozenset(sets)
    # What the last batch used and this one does not lingers until the next one (module docstring).
    for name, rules in lingering_chains.items():
        chains.setdefault(name, rules)
    for name, declaration in lingering_sets.items():
        sets.setdefault(name, declaration)
    return Table(chains, sets, elements, parts, mss, active_chains, active_sets, states, flush)


def _element_lines(command: str, name: str, items: list[tuple[str, str]]) -> list[str]:
    if not items:
        return []
    text = ", ".join(f"{key} : {data}" if data else key for key, data in items)
    return [f"{command} element {FAMILY} {TABLE} {name} {{ {text} }}"]


def changes(want: Table, have: Table | Objects) -> list[str]:
    """The batches that turn the table holding `have` into `want`, touching only what differs.

    `have` a Table: what our last batch installed. `have` Objects: what the kernel has after a
    start: the base chains' rules are replaced, every other object is diffed by name. New chains
    come in a batch of their own, before the one whose elements refer to them: a packet that
    straddles a commit runs the rules of the generation it started in, so a chain created by
    the batch that also switches an element to it would be empty for that packet (and the
    packet, untranslated, rejected). Going live<v> elements are in that first batch too, so
    the affinity maps the second one empties get no entry for a removed endpoint after it.
    """
    known = isinstance(have, Table)
    mss_changed = not known or have.mss != want.mss
    header = [] if known else _table_header()
    block = [f"  map {name} {{ {declaration} }}" for name, declaration in want.sets.items()
             if name not in have.sets and declaration is not None]
    for name, rules in want.chains.items():
        if name not in have.chains and rules is not None:
            block += [f"  chain {name} {{", *(f"    {rule}" for rule in rules), "  }"]
    prepare = header + ([f"table {FAMILY} {TABLE} {{", *block, "}"] if block else [])
    script = [] if known else [f"flush chain {FAMILY} {TABLE} {name}" for name in BASE_CHAINS]
    if known and mss_changed:
        script.append(f"flush chain {FAMILY} {TABLE} {MSS_CHAIN}")
    base = [] if known else list(_BASE_RULES)
    if mss_changed:
        base.append((MSS_CHAIN, _mss_rules(want.mss)))
    if base:
        script += [f"table {FAMILY} {TABLE} {{"]
        for name, rules in base:
            script += [f"  chain {name} {{", *(f"    {rule}" for rule in rules), "  }"]
        script += ["}"]
    # An element whose data changes is deleted and added in this batch: the commit switches it at once.
    adds, unlive = [], []
    for name in ELEMENT_SETS:
        old, new = have.elements.get(name, {}), want.elements.get(name, {})
        deletes = _element_lines("delete", name, [(key, "") for key, data in old.items() if new.get(key) != data])
        if name.startswith("live"):
            unlive += deletes  # a batch before: no connection records a going endpoint after that commit
        else:
            script += deletes
        adds += _element_lines("add", name, [(key, data) for key, data in new.items() if old.get(key) != data])
    script += adds
    script += [f"flush map {FAMILY} {TABLE} {name}" for name in sorted(want.flush)]
    # Unreferenced since the last batch (they lingered one): their rules first (a chain left by an
    # earlier layout may jump to another one going too), then the chains, then the maps they used.
    gone = sorted(set(have.chains) - set(want.chains))
    script += [f"flush chain {FAMILY} {TABLE} {name}" for name in gone]
    script += [f"delete chain {FAMILY} {TABLE} {name}" for name in gone]
    script += [f"delete set {FAMILY} {TABLE} {name}" for name in sorted(set(have.sets) - set(want.sets))]
    prepare += unlive
    if not unlive and not any(line.lstrip().startswith("chain ") for line in block):
        script, prepare = prepare + script, []
    return ["\n".join(lines) + "\n" for lines in (prepare, script) if lines]
