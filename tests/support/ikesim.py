"""An in-memory network of IKE endpoints with a fake clock: drops, duplicates, reordering, NAT.

Test helper (not a test module): ties several `IkeEndpoint`s together and runs them
to quiescence deterministically. Every loop is bounded in steps and simulated time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from ipsec_mesh.ike import (
    CertCredential,
    ChildConfig,
    ChildSaActivityQuery,
    ChildSaDeleted,
    ChildSaEncapChanged,
    ChildSaInboundQuery,
    ChildSaInstallInbound,
    ChildSaInstallOutbound,
    ChildSaOutboundRetired,
    Datagram,
    Identity,
    IkeEndpoint,
    IkeSaClosed,
    IkeSaEstablished,
    Lifetime,
    PeerConfig,
    ProtocolId,
    PskCredential,
    Retransmit,
    TrafficSelector,
    TrustStore,
    parse_proposal,
    single_peer_lookup,
)
from ipsec_mesh.ike import message as codec

PSK = b"correct horse battery staple, 32b"


def child_config(local: str, remote: str, *, name: str = "mesh", esp: str | None = None,
                 rekey: float = 3600, life: float = 3960, jitter: float = 0.0, mode: str = "transport",
                 inactivity: float = 0.0) -> ChildConfig:
    kwargs = {}
    if esp:
        kwargs["esp_proposals"] = tuple(parse_proposal(p, ProtocolId.ESP) for p in esp.split(","))
    return ChildConfig(name, (TrafficSelector.for_address(local),), (TrafficSelector.for_address(remote),),
                       mode=mode, lifetime=Lifetime(rekey, life, jitter, inactivity=inactivity), **kwargs)


def psk_config(name: str, local_id: str, remote_id: str, child: ChildConfig | None, *,
               psk: bytes = PSK, peer_psks: tuple[bytes, ...] | None = None, ike: str | None = None,
               **kwargs) -> PeerConfig:
    if ike:
        kwargs["ike_proposals"] = tuple(parse_proposal(p, ProtocolId.IKE) for p in ike.split(","))
    kwargs.setdefault("retransmit", Retransmit(timeout=1.0, base=2.0, tries=3))
    return PeerConfig(name, Identity.parse(local_id), PskCredential(psk), remote_ids=(remote_id,),
                      psks=peer_psks if peer_psks is not None else (psk,),
                      children=(child,) if child else (), **kwargs)


def cert_config(name: str, issued, pki, remote_id: str, child: ChildConfig | None, *, local_id: str,
                **kwargs) -> PeerConfig:
    kwargs.setdefault("retransmit", Retransmit(timeout=1.0, base=2.0, tries=3))
    return PeerConfig(name, Identity.parse(local_id), CertCredential(issued.key, issued.chain),
                      remote_ids=(remote_id,), trust=TrustStore([pki.root.cert]),
                      children=(child,) if child else (), **kwargs)


@dataclass
class Node:
    name: str
    address: str
    endpoint: IkeEndpoint
    events: list = field(default_factory=list)
    # The data plane as the events describe it: inbound/outbound SPI -> ChildSaInfo
    inbound: dict = field(default_factory=dict)
    outbound: dict = field(default_factory=dict)  # in install order: the kernel sends on the newest
    honour_retire: bool = True  # False: behave like a data plane that ignores ChildSaOutboundRetired
    # Outbound SPIs an earlier instance left in the kernel (a restart): the data plane removes
    # them once a new CHILD_SA's outbound half is installed (XfrmDataPlane's kept SAs).
    kept_outbound: set = field(default_factory=set)
    # The kernel's packet count of a CHILD_SA (inbound SPI -> count), answering ChildSaActivityQuery;
    # None: a data plane without a kernel, which never answers.
    packets: Callable[[int], int] | None = None
    # The kernel's inbound byte count of a CHILD_SA (inbound SPI -> bytes), answering
    # ChildSaInboundQuery (liveness); None: never answers.
    inbound_bytes: Callable[[int], int] | None = None

    def of(self, cls) -> list:
        return [e for e in self.events if isinstance(e, cls)]

    def apply(self, event) -> None:
        self.events.append(event)
        if isinstance(event, ChildSaInstallInbound):
            self.inbound[event.child.inbound_spi] = event.child
        elif isinstance(event, ChildSaInstallOutbound):
            self.outbound[event.child.outbound_spi] = event.child
            for spi in self.kept_outbound & set(self.outbound):
                del self.outbound[spi]
        elif isinstance(event, ChildSaEncapChanged):
            for table, spi in ((self.inbound, event.child.inbound_spi), (self.outbound, event.child.outbound_spi)):
                if spi in table:
                    table[spi] = event.child
        elif isinstance(event, ChildSaOutboundRetired) and self.honour_retire:
            self.outbound.pop(event.outbound_spi, None)
        elif isinstance(event, ChildSaDeleted) and event.reason != "replaced":
            # No grace period: the inbound half goes at once, so late ESP shows up as lost.
            # `replaced` ones stay as the data plane keeps them (their peer restarted and
            # sends on them until new SAs replace them); a newer outbound SA takes over.
            self.inbound.pop(event.inbound_spi, None)
            self.outbound.pop(event.outbound_spi, None)

    def sending_spi(self) -> int | None:
        """The outbound SA the kernel would pick: the newest one installed (same policy, same reqid)."""
        return next(reversed(self.outbound), None)

    @property
    def established(self) -> list:
        return [sa for sa in self.endpoint.sas.values() if sa.is_established]

    def closed_reasons(self) -> list[str]:
        return [e.reason for e in self.of(IkeSaClosed)]

    def up_count(self) -> int:
        return len(self.of(IkeSaEstablished))


@dataclass(frozen=True)
class EspProbe:
    """One ESP packet on `spi`, in flight to `remote` (in order with the IKE datagrams)."""

    spi: int
    remote: str


class Network:
    """Delivers datagrams between nodes. Hooks decide per datagram: deliver, drop, duplicate."""

    def __init__(self, seed: int = 1):
        self.now = 1000.0
        self.nodes: dict[str, Node] = {}
        self.in_flight: list[tuple[float, Datagram, str]] = []
        self.rng = random.Random(seed)
        self.drop: Callable[[Datagram], bool] = lambda d: False
        self.duplicate: Callable[[Datagram], bool] = lambda d: False
        self.reorder = False
        self.nat: dict[str, tuple[str, int]] = {}  # private address -> public (address, port base)
        self.delivered: list[Datagram] = []
        self.latency = 0.01
        # With esp_probes on, after every IKE delivery or timer each node sends one ESP packet
        # on the SA it would use; a packet that arrives where no inbound SA has its SPI is lost.
        self.esp_probes = False
        self.esp_delivered = 0
        self.esp_received: dict[tuple[str, int], int] = {}  # (receiver address, SPI) -> packets
        self.esp_lost: list[tuple[str, int]] = []  # (receiver address, SPI)
        self.esp_gaps: list[tuple[float, str]] = []  # (time, node) with a CHILD_SA but nothing to send on

    def add(self, name: str, address: str, lookup, **endpoint_kwargs) -> Node:
        rng = random.Random(f"{name}-{len(self.nodes)}")
        endpoint = IkeEndpoint(lookup, random_bytes=lambda n: rng.randbytes(n), **endpoint_kwargs)
        node = Node(name, address, endpoint)
        self.nodes[address] = node
        return node

    def _node_for(self, address: str) -> Node | None:
        node = self.nodes.get(address)
        if node is None:
            for private, (public, _) in self.nat.items():
                if public == address:
                    return self.nodes.get(private)
        return node

    def _translate(self, d: Datagram) -> Datagram:
        """Source NAT for nodes behind a NAT: their address and port are rewritten outbound."""
        public = self.nat.get(d.local[0])
        if public is None:
            return d
        return Datagram(d.data, (public[0], public[1] + d.local[1]), d.remote)

    def collect(self, node: Node) -> None:
        for _ in range(4):  # an answered query may make more events (a delete)
            events = node.endpoint.events()
            for event in events:
                node.apply(event)
                if isinstance(event, ChildSaActivityQuery) and node.packets is not None:
                    node.endpoint.child_activity(event.inbound_spi, node.packets(event.inbound_spi), self.now)
                if isinstance(event, ChildSaInboundQuery) and node.inbound_bytes is not None:
                    node.endpoint.child_inbound_bytes(event.inbound_spi, node.inbound_bytes(event.inbound_spi),
                                                      self.now)
            if not events:
                break
        for d in node.endpoint.datagrams():
            if self.drop(d):
                continue
            copies = 2 if self.duplicate(d) else 1
            for _ in range(copies):
                delay = self.latency + (self.rng.random() * 0.05 if self.reorder else 0)
                self.in_flight.append((self.now + delay, d, node.address))

    def step(self) -> bool:
        """Deliver the next datagram or fire the next timer; False when nothing is left to do."""
        for node in self.nodes.values():
            self.collect(node)
        timers = [(t, node) for node in self.nodes.values() if (t := node.endpoint.next_timer()) is not None]
        next_delivery = min((f[0] for f in self.in_flight), default=None)
        next_timer = min(timers, key=lambda x: x[0], default=None)
        if next_delivery is None and next_timer is None:
            return False
        if next_delivery is not None and (next_timer is None or next_delivery <= next_timer[0]):
            self.in_flight.sort(key=lambda f: f[0])
            at, d, sender = self.in_flight.pop(0)
            self.now = max(self.now, at)
            if isinstance(d, EspProbe):
                self._receive_esp(d)
                return True
            sent = self._translate(d)
            target = self._node_for(d.remote[0])
            if target is not None:
                self.delivered.append(sent)
                # The receiver sees the translated source; a NATed receiver sees its private address and port.
                local = d.remote
                if d.remote[0] != target.address:
                    local = (target.address, d.remote[1] - self.nat[target.address][1])
                target.endpoint.receive(sent.data, local, sent.local, self.now)
                self.collect(target)
            self._send_esp()
            return True
        self.now = max(self.now, next_timer[0])
        next_timer[1].endpoint.tick(self.now)
        self.collect(next_timer[1])
        self._send_esp()
        return True

    def _send_esp(self) -> None:
        if not self.esp_probes:
            return
        for node in self.nodes.values():
            spi = node.sending_spi()
            if spi is None and node.inbound:
                self.esp_gaps.append((self.now, node.name))
            if spi is not None:
                self.in_flight.append((self.now + self.latency, EspProbe(spi, node.outbound[spi].remote_addr),
                                       node.address))

    def _receive_esp(self, probe: EspProbe) -> None:
        target = self._node_for(probe.remote)
        if target is not None and probe.spi in target.inbound:
            self.esp_delivered += 1
            key = (target.address, probe.spi)
            self.esp_received[key] = self.esp_received.get(key, 0) + 1
        else:
            self.esp_lost.append((probe.remote, probe.spi))

    def run(self, seconds: float = 60.0, max_steps: int = 20000) -> None:
        """Run until nothing is pending, or `seconds` of simulated time, bounded in steps."""
        end = self.now + seconds
        for _ in range(max_steps):
            if self.in_flight:
                pending = min(f[0] for f in self.in_flight)
            else:
                timers = [t for n in self.nodes.values() if (t := n.endpoint.next_timer()) is not None]
                pending = min(timers, default=None)
            if pending is None or pending > end:
                self.now = max(self.now, end) if pending is not None else self.now
                return
            self.step()
        raise AssertionError("simulation did not settle within its step bound")

    def run_with_traffic(self, seconds: float, interval: float = 0.1) -> None:
        """`run`, with every node also sending one ESP packet every `interval` s of simulated
        time (steps alone may be seconds apart: a gap in between would go unseen)."""
        self.esp_probes = True
        for _ in range(round(seconds / interval)):
            self.run(interval)
            self._send_esp()

    def settle(self, max_steps: int = 5000) -> None:
        """Deliver everything in flight (and timers due before the last delivery)."""
        for _ in range(max_steps):
            for node in self.nodes.values():
                self.collect(node)
            if not self.in_flight:
                return
            self.step()
        raise AssertionError("network did not settle")


def keys_match(a: Node, b: Node) -> bool:
    """Every outbound SA of `a` is an inbound SA of `b` with the same key, and vice versa."""
    for spi, info in a.outbound.items():
        peer = b.inbound.get(spi)
        if peer is None or peer.keys.inbound != info.keys.outbound:
            return False
    for spi, info in b.outbound.items():
        peer = a.inbound.get(spi)
        if peer is None or peer.keys.inbound != info.keys.outbound:
            return False
    return True


# Two nodes with matching PSK configurations: what most exchange tests start from.
A, B = "10.0.0.1", "10.0.0.2"


def pair(net: Network, *, a_kwargs=None, b_kwargs=None, child=True, a_child=None, b_child=None,
         endpoint_kwargs=None):
    a_cfg = psk_config("to-b", "a.mesh.test", "b.mesh.test",
                       a_child if a_child is not None else (child_config(A, B) if child else None),
                       **(a_kwargs or {}))
    b_cfg = psk_config("to-a", "b.mesh.test", "a.mesh.test",
                       b_child if b_child is not None else child_config(B, A), **(b_kwargs or {}))
    a = net.add("a", A, single_peer_lookup(a_cfg), **(endpoint_kwargs or {}))
    b = net.add("b", B, single_peer_lookup(b_cfg), **(endpoint_kwargs or {}))
    return a, b, a_cfg, b_cfg


def establish(net, a, a_cfg, *, child=True):
    a.endpoint.initiate(a_cfg, (A, 500), (B, 500), net.now, a_cfg.children[0] if child and a_cfg.children else None)
    net.settle()


def exchanges(net: Network) -> list[int]:
    return [codec.peek_header(d.data).exchange for d in net.delivered if d.data != b"\xff"]
