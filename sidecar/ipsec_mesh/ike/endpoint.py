"""The IKE endpoint: all IKE SAs of one sidecar, sans-IO.

Feed it every IKE datagram (`receive`), call `tick` when `next_timer()` is due, and
after each call handle `events()` BEFORE sending `datagrams()`: a CHILD_SA's inbound
half must be in the kernel before the message that lets the peer use it leaves.

It routes datagrams to IKE SAs by SPI, answers new IKE_SA_INITs (with stateless
cookies above a half-open threshold and hard limits on half-open SAs), keeps one IKE
SA per peer when both sides initiate at once, and cleans up after a peer's restart
(INITIAL_CONTACT).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from itertools import count
from typing import Any, Callable, Sequence

from . import exchanges, inactivity, liveness
from . import message as codec
from .child import ChildSa, ChildState, handover_evidence, retire_outbound, sends
from .config import ChildConfig, ConfigLookup, PeerConfig
from .constants import ExchangeType, NotifyType
from .cookies import CookieJar
from .errors import IkeError
from .events import Event
from .exchanges.create_child import ChildCreateTask
from .exchanges.ike_rekey import IkeRekeyTask
from .exchanges.informational import DeleteChildTask, IkeDeleteTask, follow_nat_mapping
from .payloads import Message, NoncePayload, NotifyPayload, TrafficSelector
from .registry import HalfOpenCount, PeerIndex, TimerQueue
from .sa import Datagram, Exchanges, IkeSa, IkeState

log = logging.getLogger("ipsec_mesh.ike")

#: Counters of datagrams dropped without a log line each (anyone can make them grow).
DROP_COUNTERS = ("malformed", "unknown_spi", "refused_unknown_peer", "refused_half_open_limit",
                 "cookies_sent", "cookie_invalid", "evicted_half_open", "dropped")


class IkeEndpoint:
    def __init__(self, lookup: ConfigLookup, *,
                 random_bytes: Callable[[int], bytes] = os.urandom,
                 wall_clock: Callable[[], float] = time.time,
                 cookie_threshold: int = 50,
                 cookie_threshold_per_source: int = 5,
                 half_open_limit: int = 1000,
                 half_open_limit_per_source: int = 20):
        self.lookup = lookup
        self._random = random_bytes
        self._wall_clock = wall_clock
        self.cookie_threshold = cookie_threshold
        self.cookie_threshold_per_source = cookie_threshold_per_source
        self.half_open_limit = half_open_limit
        self.half_open_limit_per_source = half_open_limit_per_source
        self.cookies = CookieJar(random_bytes=random_bytes)
        self.sas: dict[bytes, IkeSa] = {}  # by our SPI
        self._init_requests: dict[tuple[str, bytes], IkeSa] = {}  # (peer address, SPIi) -> responder SA
        self._init_keys: dict[bytes, tuple[str, bytes]] = {}  # our SPI -> its key in _init_requests
        # Work per call is proportional to the SAs it touched, not to all SAs (registry.py).
        self._touched: dict[bytes, IkeSa] = {}
        self._rank: dict[bytes, int] = {}  # creation order: events leave in the order SAs were made
        self._ranks = count()
        self._by_peer: PeerIndex[bytes, IkeSa] = PeerIndex()
        self._half_open: HalfOpenCount[bytes] = HalfOpenCount()
        self._timers: TimerQueue[bytes] = TimerQueue()
        self._child_spis: set[int] = set()
        #: peers with whom SAs an earlier instance of ours left in the kernel still carry traffic
        #: -> when the record stops mattering (`kernel_sas_kept`)
        self._kept_kernel_sas: dict[str, float] = {}
        #: duplicate IKE SAs of ours kept until the winner's CHILD_SAs send: loser SPI -> (loser, winner)
        self._deferred_deletes: dict[bytes, tuple[IkeSa, IkeSa]] = {}
        self._outbox: list[Datagram] = []
        self._events: list[Event] = []
        self.counters: Counter[str] = Counter()
        self.exchanges: Exchanges = exchanges  # Services.exchanges: what each IkeSa dispatches to

    # -- Services for IkeSa -------------------------------------------------------------
    def random_bytes(self, n: int) -> bytes:
        return self._random(n)

    def wall_time(self) -> float:
        return self._wall_clock()

    def allocate_child_spi(self) -> int:
        while True:
            spi = int.from_bytes(self._random(4), "big")
            if spi >= 256 and spi not in self._child_spis:  # 1-255 are reserved (RFC 4303)
                self._child_spis.add(spi)
                return spi

    def release_child_spi(self, spi: int) -> None:
        self._child_spis.discard(spi)

    def allocate_ike_spi(self) -> bytes:
        while True:
            spi = self._random(8)
            if spi != bytes(8) and spi not in self.sas:
                return spi

    def adopt(self, sa: IkeSa) -> None:
        self._register(sa)

    def _register(self, sa: IkeSa) -> None:
        spi = sa.our_spi
        self.sas[spi] = sa
        self._rank[spi] = next(self._ranks)
        self._by_peer.put(spi, sa, sa.remote[0], sa.initiator)
        if not sa.initiator and sa.state == IkeState.CONNECTING:
            self._half_open.add(spi, sa.remote[0])
        self._touch(sa)

    def _touch(self, sa: IkeSa) -> None:
        self._touched[sa.our_spi] = sa

    def has_other_sa(self, sa: IkeSa) -> bool:
        return any(o is not sa and o.remote[0] == sa.remote[0] and o.state != IkeState.CLOSED
                   for o in self._by_peer.all(sa.remote[0]))

    def established(self, sa: IkeSa, now: float) -> None:
        """Two IKE SAs with one peer (both sides initiated at once): keep one, deterministically.

        Both ends know all four nonces; the SA whose IKE_SA_INIT had the lowest nonce is
        closed by its initiator (the rule RFC 7296 §2.8.1 uses for rekey collisions).
        """
        if sa.rekeyed_from:
            return
        # Only an SA we initiated can be closed here (by us, its initiator): two SAs that
        # the peer both initiated are its own business (it may want many, RFC 7296 §2.4).
        peer = sa.remote[0]
        candidates = self._by_peer.all(peer) if sa.initiator else self._by_peer.initiated_by_us(peer)
        for other in candidates:
            if other is sa or other.state != IkeState.ESTABLISHED or other.remote[0] != peer:
                continue
            if other.remote_id != sa.remote_id or other.rekeyed_from:
                continue
            loser = sa if min(sa.ni, sa.nr) < min(other.ni, other.nr) else other
            winner = other if loser is sa else sa
            log.info("duplicate IKE SAs with %s: keeping %s, %s goes", peer, winner.label, loser.label)
            # Make before break: until the winner's CHILD_SA sends (it may not exist yet: the
            # winner is being established; or it waits for the peer's sign after a restart)
            # the loser's carries our traffic. Released by `_release_deferred_deletes` once the
            # caller has added the winner's CHILD_SA, never here.
            self._deferred_deletes[loser.our_spi] = (loser, winner)

    def _release_deferred_deletes(self, now: float) -> None:
        """Duplicates whose winner sends now (or has no CHILD_SA to wait for: childless) stop
        carrying our traffic, and go if we initiated them; bounded by the winner's
        inbound-only limit (its CHILD_SA sends after it). A winner that is gone leaves the
        loser as it is: it is the only IKE SA left."""
        for key, (loser, winner) in list(self._deferred_deletes.items()):
            if loser.state != IkeState.ESTABLISHED or winner.state == IkeState.CLOSED:
                del self._deferred_deletes[key]
            elif not winner.children or any(sends(c) for c in winner.children.values()):
                del self._deferred_deletes[key]
                # Our traffic goes on the winner's CHILD_SAs from now. The peer drops the
                # loser's inbound halves when our Delete arrives (a lost Delete must not leave
                # us sending there); and when the peer initiated the loser, it sends on the
                # winner only once it sees ours there, then deletes the loser.
                for child in loser.children.values():
                    retire_outbound(loser, child)
                    if child.state == ChildState.INBOUND_ONLY:
                        child.outbound_retired = True  # never switched on (child.awaits_handover)
                if loser.initiator:
                    loser.queue(IkeDeleteTask("superseded"), now)
                self._touch(loser)

    def initial_contact(self, sa: IkeSa, now: float) -> bool:
        """The peer says it has no other SA with us (it restarted): forget older ones, silently.

        Their CHILD_SAs are reported `replaced`: a restarted peer of ours kept the kernel's
        SAs carrying traffic while it negotiated this SA, so the data plane keeps them until
        the new CHILD_SA sends. True if a CHILD_SA was replaced so."""
        replaced = False
        for other in self._by_peer.all(sa.remote[0]):
            if other is sa or other.remote_id != sa.remote_id or other.remote[0] != sa.remote[0]:
                continue
            # Only SAs that were up before this one began: a simultaneous one is resolved
            # by `established`, not thrown away here.
            if other.established_at is not None and other.established_at <= sa.created_at:
                log.info("INITIAL_CONTACT from %s: dropping stale IKE SA %s", sa.remote[0], other.label)
                replaced = replaced or bool(other.children)
                other.close("stale", now, children_reason="replaced")
                self._touch(other)
        return replaced

    def kernel_sas_kept(self, remote: str, until: float) -> None:
        """SAs an earlier instance of ours left in the kernel (a restart) still carry traffic
        with `remote`, whichever side initiates their replacement. `until`: the kept-SA bound
        (`Retransmit.kept_sas_limit` after the start), when the data plane has removed them in
        any case; by then the crossing IKE SA of a peer that restarted with us is up or given
        up (each of its two exchanges takes one retransmission budget at most)."""
        self._kept_kernel_sas[remote] = until

    def _kept_sas_matter(self, peer: str, now: float) -> bool:
        until = self._kept_kernel_sas.get(peer)
        if until is not None and now >= until:
            del self._kept_kernel_sas[peer]  # past the bound: the kept SAs are gone, nothing crosses ours
            return False
        return until is not None

    def crosses_ours(self, sa: IkeSa, now: float) -> bool:
        """Whether `sa` (the peer initiated it) crosses an IKE SA we initiated with the same
        peer after a restart of ours: both sides restarted and each replaces its kept SAs.
        The duplicate-SA rule keeps one of the two; until the peer shows it installed this
        one's CHILD_SA, ours (or the kept SAs) carry our traffic. Asked until the kept-SA
        bound, not only until our kept SAs are replaced: the peer's crossing IKE_AUTH may
        arrive after our own CHILD_SA sends (tests/unit/ike/test_restart_handover.py)."""
        peer = sa.remote[0]
        return self._kept_sas_matter(peer, now) and any(
            other.state in (IkeState.CONNECTING, IkeState.ESTABLISHED)
            for other in self._by_peer.initiated_by_us(peer) if other is not sa and other.remote[0] == peer)

    def replaces_kernel_sas(self, sa: IkeSa, now: float) -> bool:
        """Whether `sa`'s CHILD_SA replaces such kept SAs: none with that peer sends yet
        (once one does, the data plane has retired them)."""
        peer = sa.remote[0]
        return self._kept_sas_matter(peer, now) and not any(
            sends(child) for other in self._by_peer.all(peer) if other is not sa and other.remote[0] == peer
            for child in other.children.values())

    # -- Inputs --------------------------------------------------------------------------
    def initiate(self, config: PeerConfig, local: tuple[str, int], remote: tuple[str, int], now: float,
                 child: ChildConfig | None = None, *, replaces_kernel_sas: bool = False) -> IkeSa:
        """Start a new IKE SA (and its first CHILD_SA unless `child` is None).

        `replaces_kernel_sas`: SAs of an earlier instance of ours still carry traffic with
        this peer (a restart): the peer learns when it may send on the new CHILD_SA."""
        sa = IkeSa(self, config, initiator=True, local=local, remote=remote,
                   spi_i=self.allocate_ike_spi(), spi_r=bytes(8), now=now)
        sa.confirm_install = replaces_kernel_sas
        if replaces_kernel_sas and remote[0] not in self._kept_kernel_sas:
            self._kept_kernel_sas[remote[0]] = now + config.retransmit.kept_sas_limit()
        self._register(sa)
        for task in exchanges.initiate(child):
            sa.queue(task, now)
        self._collect()
        return sa

    def acquire(self, config: PeerConfig, local: tuple[str, int], remote: tuple[str, int], now: float,
                child: ChildConfig, local_ts: Sequence[TrafficSelector] | None = None,
                remote_ts: Sequence[TrafficSelector] | None = None) -> IkeSa:
        """A packet wants protection (kernel ACQUIRE): reuse the peer's IKE SA or start one."""
        for sa in sorted(self._by_peer.all(remote[0]), key=lambda s: self._rank[s.our_spi]):
            if sa.remote[0] != remote[0] or sa.state in (IkeState.CLOSED, IkeState.DELETING, IkeState.REKEYED):
                continue
            if any(isinstance(t, IkeDeleteTask) for t in sa.tasks.queued):
                continue  # its delete waits for another exchange: a CHILD_SA queued after it would die with it
            if sa.state == IkeState.CONNECTING:
                return sa  # its IKE_AUTH (or the peer's) brings the CHILD_SA
            # A CHILD_SA that sends (or whose outbound half is about to) covers the packet. One
            # that no longer sends does not: the kernel asked because it has nothing to send on.
            if any(c.name == child.name and (sends(c) or c.state == ChildState.INBOUND_ONLY)
                   for c in sa.children.values()):
                return sa
            if not any(isinstance(t, ChildCreateTask) and t.config.name == child.name for t in sa.tasks.queued):
                sa.queue(ChildCreateTask(child, local_ts=local_ts, remote_ts=remote_ts), now)
                self._touch(sa)
                self._collect()
            return sa
        return self.initiate(config, local, remote, now, child)

    def receive(self, data: bytes, local: tuple[str, int], remote: tuple[str, int], now: float) -> None:
        """One IKE datagram (the non-ESP marker already stripped by the caller)."""
        self.counters["datagrams_in"] += 1
        # The header alone (fixed size) decides whether anyone here wants the datagram:
        # one that no SA and no peering wants is dropped before its payloads are parsed,
        # so a flood from strangers costs less than one from configured peers (issue 10).
        try:
            header = codec.peek_header(data)
            init_request = (header.exchange == ExchangeType.IKE_SA_INIT and not header.is_response
                            and header.spi_r == bytes(8))
            if not self._wanted(header, init_request, local, remote):
                return
            msg = codec.decode(data, header)
        except IkeError as exc:
            self.counters["malformed"] += 1
            log.debug("malformed datagram from %s: %s", remote[0], exc)
            return
        try:
            if init_request:
                self._receive_init_request(data, msg, local, remote, now)
            else:
                sa = self.sas[msg.spi_r if msg.is_initiator else msg.spi_i]
                self._touch(sa)
                sa.receive(data, msg, local, remote, now)
        except IkeError as exc:
            # Anything typed that escaped an SA: drop the datagram, keep every SA.
            self.counters["dropped"] += 1
            log.debug("dropped datagram from %s: %s", remote[0], exc)
        self._release_deferred_deletes(now)
        self._collect()

    def _wanted(self, header: codec.Header, init_request: bool, local: tuple[str, int],
                remote: tuple[str, int]) -> bool:
        """Whether an SA or a peering wants the datagram; counts the ones nobody wants."""
        if init_request:
            if (remote[0], header.spi_i) in self._init_requests or self.lookup(local[0], remote[0]) is not None:
                return True
            self.counters["refused_unknown_peer"] += 1
            # Per datagram only at debug: the agent logs these counters in summary (DROP_COUNTERS).
            log.debug("IKE_SA_INIT from %s refused: not a configured peer", remote[0])
            return False
        if (header.spi_r if header.is_initiator else header.spi_i) in self.sas:
            return True
        self.counters["unknown_spi"] += 1
        return False

    def _receive_init_request(self, data: bytes, msg: Message, local: tuple[str, int], remote: tuple[str, int],
                              now: float) -> None:
        existing = self._init_requests.get((remote[0], msg.spi_i))
        if existing is not None and existing.state != IkeState.CLOSED:
            self._touch(existing)
            existing.receive(data, msg, local, remote, now)  # a retransmission: answered from cache
            return
        config = self.lookup(local[0], remote[0])
        if config is None:  # `receive` checked; a retransmission's SA closed since
            return
        total, mine = self._half_open.total, self._half_open.count(remote[0])
        if mine >= self.half_open_limit_per_source:
            self.counters["refused_half_open_limit"] += 1
            return
        if total >= self.cookie_threshold or mine >= self.cookie_threshold_per_source:
            if not self._cookie_ok(msg, remote, now):
                self._send_cookie(data, msg, local, remote, now)
                return
        if total >= self.half_open_limit and not self._evict_half_open(mine, now):
            self.counters["refused_half_open_limit"] += 1
            return
        sa = IkeSa(self, config, initiator=False, local=local, remote=remote,
                   spi_i=msg.spi_i, spi_r=self.allocate_ike_spi(), now=now)
        self._register(sa)
        self._init_requests[(remote[0], msg.spi_i)] = sa
        self._init_keys[sa.our_spi] = (remote[0], msg.spi_i)
        sa.receive(data, msg, local, remote, now)

    def _evict_half_open(self, mine: int, now: float) -> bool:
        """The table is full: a source that holds fewer half-open SAs than the heaviest
        one takes that one's oldest slot (issue 10: many configured addresses answering
        COOKIEs filled it, and legitimate peers waited for the flood's SAs to time out).

        Only a source that answered a COOKIE gets here, so it is reachable at its address.
        Among equals (every source holding one) this is first in, first out: a flood then
        has to open a whole table's worth of SAs within one round trip to starve anyone.
        """
        heaviest = self._half_open.oldest_of_heaviest()
        if heaviest is None:  # an empty table is full only with a limit of 0
            return False
        key, held = heaviest
        if held <= mine:
            return False
        victim = self.sas[key]
        self._half_open.discard(key)
        victim.close("evicted", now)
        self._touch(victim)
        self.counters["evicted_half_open"] += 1
        return True

    def _cookie_ok(self, msg: Message, remote: tuple[str, int], now: float) -> bool:
        first = msg.payloads[0] if msg.payloads else None
        nonce = msg.first(NoncePayload)
        if not isinstance(first, NotifyPayload) or first.type != NotifyType.COOKIE or nonce is None:
            return False
        ok = self.cookies.check(first.data, nonce.data, remote[0], msg.spi_i, now)
        self.counters["cookie_valid" if ok else "cookie_invalid"] += 1
        return ok

    def _send_cookie(self, data: bytes, msg: Message, local: tuple[str, int], remote: tuple[str, int],
                     now: float) -> None:
        nonce = msg.first(NoncePayload)
        if nonce is None:
            return
        cookie = self.cookies.make(nonce.data, remote[0], msg.spi_i, now)
        reply = Message(msg.spi_i, bytes(8), ExchangeType.IKE_SA_INIT, False, True, 0,
                        [NotifyPayload(NotifyType.COOKIE, data=cookie)])
        self.counters["cookies_sent"] += 1
        self._outbox.append(Datagram(codec.encode(reply), local, remote))

    def tick(self, now: float) -> None:
        """Run the timers that are due (an SA's `tick` does nothing before its `next_timer`)."""
        due = [self.sas[spi] for spi in self._timers.pop_due(now) if spi in self.sas]
        for sa in sorted(due, key=lambda s: self._rank[s.our_spi]):
            self._touch(sa)
            sa.tick(now)
        self._release_deferred_deletes(now)
        self._collect()

    def next_timer(self) -> float | None:
        return self._timers.earliest()

    # -- Commands from the layer above -----------------------------------------------------
    def _find_child(self, inbound_spi: int) -> tuple[IkeSa, ChildSa] | None:
        for sa in self.sas.values():
            child = sa.children.get(inbound_spi)
            if child is not None:
                return sa, child
        return None

    def rekey_child(self, inbound_spi: int, now: float) -> bool:
        """Rekey a CHILD_SA now (e.g. the kernel's soft EXPIRE); False if unknown."""
        found = self._find_child(inbound_spi)
        if found is None:
            return False
        sa, child = found
        if child.state != ChildState.INSTALLED or sa.state != IkeState.ESTABLISHED:
            return False
        child.rekey_at = None
        self._touch(sa)
        sa.queue(ChildCreateTask(child.config, rekey_of=child), now)
        self._collect()
        return True

    def delete_child(self, inbound_spi: int, now: float, reason: str = "deleted") -> bool:
        found = self._find_child(inbound_spi)
        if found is None:
            return False
        sa, child = found
        self._touch(sa)
        if sa.state == IkeState.ESTABLISHED:
            sa.queue(DeleteChildTask(child, reason), now)
        else:
            sa.drop_child(child, reason)
        self._collect()
        return True

    def _kernel_answer(self, inbound_spi: int, decide: Callable[[IkeSa, ChildSa], str]) -> str:
        """Apply what the kernel said about a CHILD_SA (`decide(sa, child)`) and collect."""
        found = self._find_child(inbound_spi)
        if found is None:
            return "unknown-sa"
        sa, child = found
        self._touch(sa)
        result = decide(sa, child)
        self._collect()
        return result

    def child_activity(self, inbound_spi: int, packets: int, now: float) -> str:
        """The kernel's packet count for a CHILD_SA, answering a ChildSaActivityQuery.

        Returns active, idle (it is being deleted, with its IKE SA if it was the last),
        busy or unknown-sa (inactivity.py).
        """
        return self._kernel_answer(inbound_spi, lambda sa, child: inactivity.report(sa, child, packets, now))

    def child_inbound_bytes(self, inbound_spi: int, inbound_bytes: int, now: float) -> str:
        """The kernel's inbound byte count for a CHILD_SA, answering a ChildSaInboundQuery.

        Returns alive (it grew: the peer counts as heard from now), silent or unknown-sa
        (liveness.py).
        """
        result = self._kernel_answer(inbound_spi, lambda sa, child: self._inbound_answer(sa, child, inbound_bytes, now))
        self._release_deferred_deletes(now)
        self._collect()
        return result

    @staticmethod
    def _inbound_answer(sa: IkeSa, child: ChildSa, inbound_bytes: int, now: float) -> str:
        handover_evidence(sa, child, inbound_bytes)  # a HANDOVER CHILD_SA's query (child.handover_query)
        return liveness.report(sa, child, inbound_bytes, now)

    def nat_mapping_changed(self, inbound_spi: int, new_remote: tuple[str, int], now: float) -> str:
        """The kernel saw this CHILD_SA's ESP-in-UDP arrive from `new_remote` (XFRM MAPPING).

        Follows a NAT port rebind (exchanges.informational.follow_nat_mapping); returns
        what was done: followed, unchanged, not-natted, address-changed, not-established
        or unknown-sa.
        """
        return self._kernel_answer(inbound_spi, lambda sa, _child: follow_nat_mapping(sa, new_remote, now))

    def rekey_ike(self, label: str, now: float) -> bool:
        sa = self._by_label(label)
        if sa is None or sa.state != IkeState.ESTABLISHED:
            return False
        self._touch(sa)
        sa.rekey_at = None
        sa.queue(IkeRekeyTask(), now)
        self._collect()
        return True

    def delete_ike(self, label: str, now: float, reason: str = "deleted") -> bool:
        sa = self._by_label(label)
        if sa is None:
            return False
        self._delete(sa, now, reason)
        self._collect()
        return True

    def _delete(self, sa: IkeSa, now: float, reason: str) -> None:
        self._touch(sa)
        if sa.state == IkeState.ESTABLISHED:
            sa.tasks.clear()
            sa.queue(IkeDeleteTask(reason), now)
        else:
            sa.close(reason, now)

    def shutdown(self, now: float) -> None:
        """Delete every IKE SA, telling the peers (one attempt each; the caller need not wait)."""
        for sa in list(self.sas.values()):
            self._delete(sa, now, "shutdown")
        self._collect()

    def _by_label(self, label: str) -> IkeSa | None:
        for sa in self.sas.values():
            if sa.label == label:
                return sa
        return None

    # -- Outputs -------------------------------------------------------------------------
    def _collect(self) -> None:
        """Outputs of the SAs this call touched; their indexes and timers brought up to date."""
        touched = self._touched
        if not touched:
            return
        sas = self.sas
        for sa in list(touched.values()):  # a rekey links SAs: what one did may change the other
            if sa.successor is None and sa.peer_rekey is None:  # the usual case: none linked
                continue
            for linked in (sa.successor, sa.peer_rekey):
                if linked is not None and sas.get(linked.our_spi) is linked:
                    touched.setdefault(linked.our_spi, linked)
        self._touched = {}
        # Most calls touch one SA (a datagram for it): nothing to order then.
        ordered = touched.values() if len(touched) < 2 else sorted(
            touched.values(), key=lambda s: self._rank.get(s.our_spi, -1))
        for sa in ordered:
            spi = sa.our_spi
            if sa.events:
                self._events.extend(sa.events)
                sa.events.clear()
            if sa.outbox:
                self._outbox.extend(sa.outbox)
                sa.outbox.clear()
            if sas.get(spi) is not sa:
                continue
            state = sa.state
            if state != IkeState.CONNECTING:
                self._half_open.discard(spi)
            if state == IkeState.CLOSED:
                self._forget(sa)
            else:
                self._by_peer.put(spi, sa, sa.remote[0], sa.initiator)
                self._timers.set(spi, sa.next_timer())

    def _forget(self, sa: IkeSa) -> None:
        spi = sa.our_spi
        del self.sas[spi]
        del self._rank[spi]
        self._by_peer.remove(spi)
        self._timers.set(spi, None)
        self._deferred_deletes.pop(spi, None)
        key = self._init_keys.pop(spi, None)
        if key is not None and self._init_requests.get(key) is sa:
            del self._init_requests[key]

    def datagrams(self) -> list[Datagram]:
        out, self._outbox = self._outbox, []
        return out

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def status(self) -> list[dict[str, Any]]:
        return [sa.status() for sa in self.sas.values() if sa.state != IkeState.CLOSED]
