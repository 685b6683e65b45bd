"""The kernel data plane: transport-mode ESP in the sidecar's network namespace via XFRM.

What it keeps true (docs/xfrm.md has the kernel side):
- Policies follow the peer set: per peer network and local address, an `out` and an
  `in` policy with a transport-mode ESP template; level `required` under `require`
  (fail closed: no plaintext leaves or is accepted), `use` under `prefer`.
- At start, policies are reconciled (added, updated, removed) before anything else. The
  SAs a previous instance left behind (kill -9, or a SIGTERM for a restart) keep carrying
  traffic: the agent negotiates with each of their peers at once, and they go when a new
  CHILD_SA with that peer sends (outbound after the grace, as the kernel picks the new one
  at once; inbound once the kernel's counter shows it quiet for the grace period), or after `handover_limit` (175 s by default). So do the SAs of a peer's stale IKE SA (it restarted and kept
  them: ChildSaDeleted reason `replaced`). Under `require` nothing is ever in plaintext.
- Inbound SA before outbound. An outbound SA goes as soon as the IKE core retires it
  (before its Delete leaves); the inbound half stays a short grace period after the
  CHILD_SA is deleted (defence in depth, see `remove`).
- Only objects carrying our ownership tags are ever touched.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
from typing import TYPE_CHECKING

from .. import aio
from ..ike import ChildSaDeleted, ChildSaInfo, ChildSaOutboundRetired, ChildSaRef, EncrId
from ..ike.config import Retransmit
from ..meshapi.model import Enforcement
from ..svcnat.ondemand import OnDemandTranslation
from ..xfrm import (
    Acquire as KernelAcquire,
)
from ..xfrm import (
    Aead,
    Direction,
    EventsLost,
    Expire,
    Level,
    Lifetime,
    LifetimeCurrent,
    PolExpire,
    PolicySpec,
    SaSpec,
    Selector,
    Template,
    UdpEncap,
    Xfrm,
    XfrmError,
    owned_reqid,
    set_udp_encap,
    socket_bypass,
)
from ..xfrm import (
    Mapping as KernelMapping,
)
from ..xfrm.api import NOT_FOUND
from ..xfrm.constants import IPPROTO_ESP
from ..xfrm.policies import neighbor_discovery_bypass, peer_priority
from .config import IkeSettings
from .dataplane import Acquire, HardExpire, NatMapping, PolicyExpired, SoftExpire

if TYPE_CHECKING:
    from ..svcnat import ServiceTranslation

log = logging.getLogger("ipsec_mesh.dataplane")

REKEY_GRACE = 2.0  # seconds the replaced inbound SA keeps accepting in-flight packets


def handover_limit(retransmit: Retransmit) -> float:
    """Seconds SAs without IKE state are kept at most (`Retransmit.kept_sas_limit`: the IKE
    core ends its own record of our kept SAs at the same bound)."""
    return retransmit.kept_sas_limit()


HANDOVER_LIMIT = handover_limit(IkeSettings().retransmit())
HARD_LIFETIME_MARGIN = 60  # seconds past the IKE core's own hard limit: a safety net if we die
LARVAL_DROP = "net/core/xfrm_larval_drop"


def kernel_aead(info: ChildSaInfo, key: bytes) -> Aead:
    if info.encr == EncrId.AES_GCM_16:
        return Aead("rfc4106(gcm(aes))", key, 128)
    if info.encr == EncrId.CHACHA20_POLY1305:
        return Aead("rfc7539esp(chacha20,poly1305)", key, 128)
    raise XfrmError(f"no kernel AEAD for IKE transform {info.encr}", 0, "install")


def policy_key(selector: Selector, direction) -> tuple:
    """How the kernel tells policies apart (besides the tag, mark and type we keep fixed)."""
    return (str(selector.src), str(selector.dst), selector.proto, selector.sport, selector.dport, int(direction))


def _inf_if_zero(value: int) -> int:
    return value if value else Lifetime().soft_bytes


class XfrmDataPlane:
    name = "xfrm"

    def __init__(self, netns: str | None = None, *, rekey_grace: float = REKEY_GRACE, xfrm: Xfrm | None = None,
                 services: OnDemandTranslation | ServiceTranslation | None = None,
                 handover_limit: float | None = None):
        """`xfrm`, `services`: the kernel interfaces to use (tests pass recording stand-ins). The Service
        translation loads when the peer map first lists a Service, or at start if an earlier instance left one.
        `handover_limit`: see `handover_limit()` (HANDOVER_LIMIT: the default settings')."""
        self.netns = netns
        self.handover_limit = HANDOVER_LIMIT if handover_limit is None else handover_limit
        self.services: OnDemandTranslation | ServiceTranslation = (
            services if services is not None else OnDemandTranslation(netns))
        self.rekey_grace = rekey_grace
        self.xfrm = xfrm if xfrm is not None else Xfrm(netns)
        self.events_channel: Xfrm | None = None
        self.peers = None
        self._reqids: dict[tuple, int] = {}
        self._policies: dict[tuple, PolicySpec] = {}
        self.inbound: dict[int, SaSpec] = {}
        self.outbound: dict[int, SaSpec] = {}
        self._acquire_seq: dict[str, int] = {}
        self._inbound_of: dict[int, int] = {}  # outbound SPI -> inbound SPI of the same CHILD_SA
        self._mapped: dict[int, tuple[str, int]] = {}  # inbound SPI -> last NAT mapping passed on
        #: remote address -> SAs with no IKE state (an earlier instance's, a restarted peer's
        #: stale ones) that carry traffic until a new CHILD_SA with that peer sends.
        self.superseded: dict[str, list[tuple[bool, SaSpec | object]]] = {}
        self._handover_timers: dict[str, aio.TimerHandle] = {}
        #: kept inbound SAs waiting for quiet: id -> (remote, SA, next check)
        self._quiet_checks: dict[int, tuple[str, object, aio.TimerHandle]] = {}
        #: SAs that go after the grace (`_delete_later`): retired outbound halves and the inbound
        #: halves of deleted CHILD_SAs; id -> (SA, timer)
        self._retiring: dict[int, tuple[object, aio.TimerHandle]] = {}
        self.errors = 0

    # -- policies ---------------------------------------------------------------------
    def _reqid(self, entry_key: tuple) -> int:
        if entry_key not in self._reqids:
            self._reqids[entry_key] = owned_reqid(len(self._reqids) + 1)
        return self._reqids[entry_key]

    def reqid_for(self, remote: str) -> int:
        entry = self.peers.entry_for(remote) if self.peers is not None else None
        return self._reqid(entry.key) if entry is not None else owned_reqid(0xFFFF)

    def desired_policies(self, peers) -> dict[tuple, PolicySpec]:
        desired: dict[tuple, PolicySpec] = {}
        for entry in peers.entries:
            level = Level.REQUIRED if entry.enforcement == Enforcement.REQUIRE else Level.USE
            template = (Template(self._reqid(entry.key), level=level),)
            for local in peers.local_addresses:
                local_net = ipaddress.ip_network(local)
                if local_net.version != entry.network.version:
                    continue
                for direction, sel in ((Direction.OUT, Selector(local_net, entry.network)),
                                       (Direction.IN, Selector(entry.network, local_net))):
                    spec = PolicySpec(sel, direction, priority=peer_priority(sel), templates=template)
                    desired[policy_key(sel, direction)] = spec
        if any(ipaddress.ip_address(a).version == 6 for a in peers.local_addresses):
            # IPv6 neighbour discovery must pass in clear, or on-link peers are unreachable.
            for spec in neighbor_discovery_bypass():
                desired[policy_key(spec.selector, spec.direction)] = spec
        return desired

    def _reconcile_policies(self, desired: dict[tuple, PolicySpec]) -> None:
        """At start: make the kernel's policies (ours only) the desired ones."""
        current = {policy_key(info.selector, info.direction): info
                   for info in self.xfrm.dump_policies() if info.owned}
        # A delete that fails here raises: the start fails rather than run on kernel state
        # that is not what we believe (e.g. a stale `require` policy for a removed peer).
        self._sync_policies(desired, current, self._same, tolerate_delete_errors=False)

    def _sync_policies(self, desired: dict[tuple, PolicySpec], current: dict, same, *,
                       tolerate_delete_errors: bool) -> None:
        """Add what is missing, update what differs (`same(current, desired)`), delete the rest."""
        adds = [spec for key, spec in desired.items() if key not in current]
        updates = [spec for key, spec in desired.items() if key in current and not same(current[key], spec)]
        for result in self.xfrm.add_policies(adds) + self.xfrm.update_policies(updates):
            if result is not None:
                self.errors += 1
                log.error("policy install failed: %s", result)
        stale = [(have.selector, have.direction, None) for key, have in current.items() if key not in desired]
        for result in self.xfrm.delete_policies(stale):
            if result is None or result.errno in NOT_FOUND:
                continue  # gone already: what we want
            if not tolerate_delete_errors:
                raise result
            self.errors += 1
            log.warning("policy delete failed: %s", result)
        self._policies = desired

    @staticmethod
    def _same(info, spec: PolicySpec) -> bool:
        return (info.priority == spec.priority and tuple(info.templates) == tuple(spec.templates)
                and info.action == spec.action)

    # -- lifecycle --------------------------------------------------------------------
    def start(self, peers) -> None:
        self.peers = peers
        # 1. Policies first, so nothing to a `require` peer leaves in plaintext from now on.
        self._reconcile_policies(self.desired_policies(peers))
        # 1b. Then ClusterIPs rewritten to endpoints in the pod, so Service calls meet those policies;
        #     one transaction replaces whatever an earlier instance left.
        self.services.apply(peers.peer_map.services)
        # 2. SAs of an earlier instance keep carrying traffic until new ones replace them.
        local = {str(ipaddress.ip_address(a)) for a in peers.local_addresses}
        kept = 0
        for sa in self.xfrm.dump_sas():
            if not sa.owned or sa.larval:
                continue
            inbound = str(sa.dst) in local
            self._supersede(str(sa.src if inbound else sa.dst), [(inbound, sa)])
            kept += 1
        if kept:
            log.info("kept %d SAs left by an earlier instance until new ones with %d peers replace them",
                     kept, len(self.superseded))
        # 3. Hold, rather than drop, packets that wait for an SA (per-namespace sysctl).
        self._set_larval_drop(0)
        self.events_channel = Xfrm(self.netns)
        self.events_channel.subscribe()

    def inherited_peers(self) -> list[str]:
        """Peers whose SAs an earlier instance left: the agent negotiates with them at once."""
        return list(self.superseded)

    def _supersede(self, remote: str, halves: list) -> None:
        self.superseded.setdefault(remote, []).extend(halves)
        if remote not in self._handover_timers:
            self._handover_timers[remote] = aio.get_running_loop().call_later(
                self.handover_limit, self._end_handover, remote)

    def _end_handover(self, remote: str) -> None:
        log.warning("SAs with %s not replaced within %.0fs: removing them", remote, self.handover_limit)
        self._retire_superseded(remote, grace=False)

    def _retire_superseded(self, remote: str, *, grace: bool) -> None:
        """Inbound halves once quiet (`_delete_when_quiet`); outbound ones after the grace too,
        though the new one sends at once: the kernel picks the newest SA for new packets, but
        one that looked its SA up just before may meet it deleted and fail (EINVAL to the
        sender, XfrmOutStateInvalid; seen in the VM when the kept SA went at the switch)."""
        timer = self._handover_timers.pop(remote, None)
        if timer is not None:
            timer.cancel()
        loop = aio.get_running_loop()
        for inbound, sa in self.superseded.pop(remote, []):
            if grace and self.rekey_grace and inbound:
                self._delete_when_quiet(remote, sa, loop.time() + self.handover_limit)
            elif grace and self.rekey_grace:
                self._delete_later(sa)
            else:
                self._delete(sa)

    def _delete_later(self, sa) -> None:
        """Delete `sa` after the grace (at once at a full stop; never after the close): an
        outbound SA the kernel no longer picks (a newer one to the same peer sends), so that a
        send that looked it up just before does not meet it deleted; an inbound SA whose
        CHILD_SA was deleted, for the ESP still in flight."""
        def delete() -> None:
            del self._retiring[id(sa)]
            self._delete(sa)

        self._retiring[id(sa)] = (sa, aio.get_running_loop().call_later(self.rekey_grace, delete))

    def _delete_when_quiet(self, remote: str, sa, deadline: float, seen: int | None = None) -> None:
        """Delete a kept inbound SA once the kernel shows no new packet on it for a grace
        period (or at `deadline`). The peer sends on the old SAs until our confirmation
        reaches it; a lost one is retransmitted seconds later and a loaded peer is slow to
        answer, so a fixed grace after our switch dropped what it still sent there."""
        loop = aio.get_running_loop()
        current = self._counters(sa)
        packets = None if current is None else current.packets
        if id(sa) in self._quiet_checks and (packets is None or packets == seen or loop.time() >= deadline):
            del self._quiet_checks[id(sa)]
            self._delete(sa)
            return
        self._quiet_checks[id(sa)] = (remote, sa, loop.call_later(self.rekey_grace, self._delete_when_quiet,
                                                                  remote, sa, deadline, packets))

    def _set_larval_drop(self, value: int) -> None:
        if self.netns is not None:
            return  # /proc/sys/net is the caller's namespace; the sidecar runs inside its own
        try:
            with open(f"/proc/sys/{LARVAL_DROP}", "w") as sysctl:
                sysctl.write(str(value))
        except OSError as exc:
            log.debug("cannot set %s: %s", LARVAL_DROP, exc)

    def update_peers(self, old, new) -> None:
        """Apply a new peer set incrementally: only changed policies are touched.

        Compared with our own record (no kernel dump per update). A failed delete is
        logged and counted, not raised: the sidecar is serving its other peers, and
        stopping half-way would leave the new peer set half applied.
        """
        self._sync_policies(self.desired_policies(new), self._policies, lambda have, want: have == want,
                            tolerate_delete_errors=True)
        if new.peer_map.services != (old.peer_map.services if old is not None else None):
            self.services.apply(new.peer_map.services)
        self.peers = new

    def not_ready_reason(self) -> str | None:
        return self.services.problem()

    def prepare_socket(self, sock: socket.socket, natt: bool) -> None:
        socket_bypass(sock)
        if natt:
            set_udp_encap(sock)

    def stop(self) -> None:
        """Remove our SAs. Policies and the Service translation stay: a pod that is going away stays fail-closed."""
        for sa in list(self.inbound.values()) + list(self.outbound.values()):
            try:
                self.xfrm.delete_sa(sa.dst, sa.spi, sa.proto)
            except XfrmError:
                pass
        self.inbound.clear()
        self.outbound.clear()
        for remote in list(self.superseded):
            self._retire_superseded(remote, grace=False)
        for _, kept, _ in self._quiet_checks.values():
            self._delete(kept)
        for retiring, _ in self._retiring.values():
            self._delete(retiring)
        self._close()

    def hand_over(self) -> None:
        """Stop for a restart: every SA stays in the kernel and keeps carrying traffic for
        the next instance (which replaces them); policies and translation stay too."""
        self._close()

    def _close(self) -> None:
        for timer in [*self._handover_timers.values(), *(check for _, _, check in self._quiet_checks.values()),
                      *(timer for _, timer in self._retiring.values())]:
            timer.cancel()
        self._handover_timers.clear()
        self._quiet_checks.clear()
        self._retiring.clear()
        if self.events_channel is not None:
            self.events_channel.close()
            self.events_channel = None
        self.xfrm.close()
        self.services.close()

    # -- SAs --------------------------------------------------------------------------
    def _spec(self, info: ChildSaInfo, inbound: bool) -> SaSpec:
        src, dst = (info.remote_addr, info.local_addr) if inbound else (info.local_addr, info.remote_addr)
        key = info.keys.inbound if inbound else info.keys.outbound
        encap = None
        if info.encap is not None:
            encap = (UdpEncap(info.encap.remote_port, info.encap.local_port) if inbound
                     else UdpEncap(info.encap.local_port, info.encap.remote_port))
        hard = int(info.life_time) + HARD_LIFETIME_MARGIN if info.life_time else 0
        lifetime = Lifetime(soft_bytes=_inf_if_zero(info.rekey_bytes), hard_bytes=_inf_if_zero(info.life_bytes),
                            soft_packets=_inf_if_zero(info.rekey_packets),
                            hard_packets=_inf_if_zero(info.life_packets), hard_add_seconds=hard)
        return SaSpec(src=src, dst=dst, spi=info.inbound_spi if inbound else info.outbound_spi,
                      reqid=self.reqid_for(info.remote_addr), aead=kernel_aead(info, key), esn=info.esn,
                      # Outbound SAs ignore the window, but kernels before 6.10 refuse ESN without one.
                      replay_window=128, lifetime=lifetime, encap=encap,
                      tfc_pad=info.tfc_padding if not inbound else 0,
                      acquire_seq=0 if inbound else self._acquire_seq.pop(info.remote_addr, 0))

    def install_inbound(self, child: ChildSaInfo) -> None:
        spec = self._add_sa(self._spec(child, inbound=True))
        self.inbound[spec.spi] = spec

    def install_outbound(self, child: ChildSaInfo) -> None:
        spec = self._add_sa(self._spec(child, inbound=False))
        self.outbound[spec.spi] = spec
        self._inbound_of[spec.spi] = child.inbound_spi
        if child.remote_addr in self.superseded:
            self._retire_superseded(child.remote_addr, grace=True)

    def _add_sa(self, spec: SaSpec) -> SaSpec:
        """The kernel's refusal (say, no ESP in it) is counted and raised to the agent."""
        try:
            self.xfrm.add_sa(spec)
        except XfrmError:
            self.errors += 1
            raise
        return spec

    def update_encap(self, child: ChildSaInfo) -> None:
        """The peer's NAT rebound: both halves' UDP encapsulation follow (XFRM_MSG_UPDSA)."""
        encap = child.encap
        for table, spi, ports in ((self.inbound, child.inbound_spi, (encap.remote_port, encap.local_port)),
                                  (self.outbound, child.outbound_spi, (encap.local_port, encap.remote_port))):
            spec = table.get(spi)
            if spec is None:
                continue
            updated = dataclasses.replace(spec, encap=UdpEncap(*ports), acquire_seq=0)
            self.xfrm.update_sa(updated)
            table[spi] = updated

    def retire_outbound(self, retired: ChildSaOutboundRetired) -> None:
        """Our Delete of this CHILD_SA is about to leave: the kernel sends on another SA from now.
        If a newer outbound SA to the peer is installed, the kernel picks that one already and
        this one goes after the grace (`_delete_later`); if not, at once, or the kernel would
        keep sending on it after the peer removed its inbound half."""
        spi = retired.outbound_spi
        self._remove_outbound(spi, after_grace=bool(self.rekey_grace) and self._newer_outbound_installed(spi))

    def _newer_outbound_installed(self, spi: int) -> bool:
        """Whether an outbound SA to the same peer was installed after `spi` (the kernel sends on that one)."""
        spec = self.outbound.get(spi)
        if spec is None:
            return False
        installed = iter(self.outbound.items())  # in install order
        for other, _ in installed:
            if other == spi:
                break
        return any(later.dst == spec.dst for _, later in installed)

    def _remove_outbound(self, spi: int, *, after_grace: bool = False) -> None:
        out = self.outbound.pop(spi, None)
        self._inbound_of.pop(spi, None)
        if out is not None and after_grace:
            self._delete_later(out)
        elif out is not None:
            self._delete(out)

    def remove(self, deleted: ChildSaDeleted) -> None:
        if deleted.reason == "replaced":
            # The peer restarted and keeps sending on these until our new CHILD_SA sends.
            halves = [(False, self.outbound.pop(deleted.outbound_spi, None)),
                      (True, self.inbound.pop(deleted.inbound_spi, None))]
            self._inbound_of.pop(deleted.outbound_spi, None)
            self._mapped.pop(deleted.inbound_spi, None)
            self._supersede(deleted.remote_addr, [(i, s) for i, s in halves if s is not None])
            return
        self._remove_outbound(deleted.outbound_spi)
        inbound = self.inbound.pop(deleted.inbound_spi, None)
        self._mapped.pop(deleted.inbound_spi, None)
        if inbound is None:
            return
        # A peer that deletes a CHILD_SA stops sending on it before its Delete leaves when
        # another SA can carry the traffic (ours do: ChildSaOutboundRetired), so then nothing
        # arrives on it after the Delete. The grace covers the rest: the last SA for the
        # traffic (it keeps sending until the exchange ends), peers that keep sending until
        # our answer arrives (seen in the VM tier as one lost packet after a rekey
        # collision), and ESP reordered behind the IKE datagram (another 5-tuple, so another
        # NIC queue or ECMP path). Only the IKE SA going away ends it at once.
        if self.rekey_grace and deleted.reason != "ike-closed":
            self._delete_later(inbound)
        else:
            self._delete(inbound)

    def packets(self, child: ChildSaRef) -> int | None:
        """Packets both halves carried, from the kernel's current lifetime (XFRM_MSG_GETSA);
        None if neither is in the kernel. A retired outbound half no longer counts: its
        traffic went elsewhere, and the inbound half still shows what the peer sends."""
        total, found = 0, False
        for table, spi in ((self.inbound, child.inbound_spi), (self.outbound, child.outbound_spi)):
            current = self._counters(table.get(spi))
            if current is not None:
                total, found = total + current.packets, True
        return total if found else None

    def inbound_bytes(self, child: ChildSaRef) -> int | None:
        """Bytes the inbound half received (XFRM_MSG_GETSA), for liveness; None if it is not
        in the kernel or cannot be read."""
        current = self._counters(self.inbound.get(child.inbound_spi))
        return None if current is None else current.bytes

    def _counters(self, spec) -> LifetimeCurrent | None:
        """The kernel's current lifetime (packet and byte counts) of one of our SAs; None if we
        hold no such SA, the kernel has none, or it cannot be read (logged)."""
        if spec is None:
            return None
        try:
            info = self.xfrm.get_sa(spec.dst, spec.spi, spec.proto)
        except XfrmError as exc:
            log.warning("cannot read SA %08x counters: %s", spec.spi, exc)
            return None
        return None if info is None else info.current

    def _delete(self, spec) -> None:
        try:
            self.xfrm.delete_sa(spec.dst, spec.spi, spec.proto)
        except XfrmError as exc:
            log.debug("SA %08x already gone: %s", spec.spi, exc)

    # -- kernel events ------------------------------------------------------------------
    def fileno(self) -> int | None:
        return self.events_channel.fileno() if self.events_channel is not None else None

    def read_events(self) -> list:
        out: list = []
        for event in self.events_channel.read_events():
            if isinstance(event, EventsLost):
                log.warning("kernel XFRM events were lost (socket overflow)")
                continue
            if not event.owned:
                continue  # another program's policy or SA
            if isinstance(event, KernelAcquire):
                self._acquire_seq[str(event.dst)] = event.seq
                out.append(Acquire(str(event.src), str(event.dst)))
            elif isinstance(event, Expire) and event.sa.proto == IPPROTO_ESP:
                # Byte/packet limits may trip on either half; the IKE core knows the CHILD_SA
                # by its inbound SPI.
                spi = event.sa.spi if event.sa.spi in self.inbound else self._inbound_of.get(event.sa.spi)
                if spi is not None:
                    out.append(HardExpire(spi) if event.hard else SoftExpire(spi))
            elif isinstance(event, KernelMapping):
                mapping = self._nat_mapping(event)
                if mapping is not None:
                    out.append(mapping)
            elif isinstance(event, PolExpire):
                out.append(self._policy_expired(event))
        return out

    def _nat_mapping(self, event: KernelMapping) -> NatMapping | None:
        """Pass a mapping on once per new source: the kernel reports every packet from it
        until the SA is updated, and forever if the IKE core declines to follow."""
        source = (str(event.new_src), event.new_sport)
        if event.spi not in self.inbound or self._mapped.get(event.spi) == source:
            return None
        self._mapped[event.spi] = source
        return NatMapping(event.spi, *source)

    def _policy_expired(self, event: PolExpire) -> PolicyExpired:
        """Ours have no lifetimes: someone changed one. After a hard expire the kernel has
        removed it, which under `require` would let plaintext through: put it back."""
        info = event.policy
        label = f"{info.selector.src} -> {info.selector.dst} {info.direction.name.lower()}"
        self.errors += 1
        log.error("kernel %s-expired our policy %s: our policies have no lifetimes; "
                  "something else changed it", "hard" if event.hard else "soft", label)
        desired = self._policies.get(policy_key(info.selector, info.direction))
        if event.hard and desired is not None:
            for result in self.xfrm.add_policies([desired]):
                if result is not None:
                    log.error("could not put policy %s back: %s", label, result)
        return PolicyExpired(label, event.hard)

    def status(self) -> dict:
        return {"dataplane": self.name, "policies": len(self._policies), "inbound_sas": len(self.inbound),
                "outbound_sas": len(self.outbound), "errors": self.errors, "services": self.services.status(),
                # SAs without IKE state still carrying traffic until new ones replace them.
                "kept_sas": self._kept_sas()}

    def _kept_sas(self) -> dict[str, int]:
        """Per peer, the SAs without IKE state still in the kernel: those waiting for their
        replacement and the inbound ones waiting for the peer to stop sending on them."""
        kept = {remote: len(halves) for remote, halves in self.superseded.items()}
        for remote, _, _ in self._quiet_checks.values():
            kept[remote] = kept.get(remote, 0) + 1
        return kept
