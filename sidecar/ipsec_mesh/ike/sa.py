"""One IKE SA: its state, keys, protection and fragmentation, timers and children.

The exchanges live in `exchanges/` (one module per exchange, as libcharon has one task
per exchange); message IDs, the outstanding request, the task queue, retransmission and
dispatch are the task manager's (`manager.TaskManager`, `sa.tasks`). Sans-IO: the owner
(`endpoint.IkeEndpoint`) feeds it datagrams and ticks with `now`, and drains `outbox`
and `events`.
"""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from typing import Any, Protocol

from ..records import record
from . import message as codec
from .certificate import Certificate
from .child import ChildSa, ChildState
from .config import PeerConfig
from .constants import ExchangeType
from .crypto import AeadProtector, Prf
from .errors import IntegrityError, InvariantError
from .events import ChildSaDeleted, Event, IkeSaClosed
from .fragment import encode_fragments
from .identity import Identity
from .keymat import IkeKeys
from .manager import TaskManager
from .payloads import Message, NotifyPayload
from .proposals import Selected
from .state import IkeState, check_transition
from .task import Responder, Task

log = logging.getLogger("ipsec_mesh.ike")

IPV4_UDP_OVERHEAD = 28
IPV6_UDP_OVERHEAD = 48
OLD_SA_GRACE = 30.0  # seconds a rekeyed IKE SA waits for the peer's delete before going


@record
class Datagram:
    data: bytes
    local: tuple[str, int]
    remote: tuple[str, int]


class Exchanges(Protocol):
    """The exchanges package as the IKE SA sees it: routing of requests and timers, and the
    tasks one exchange queues for another (libcharon's task_manager queue_* calls), so that
    exchanges never import each other."""

    def new_responder(self, exchange: int) -> Responder | None: ...  # a fresh one of the kind answering it
    def on_timers(self, sa: "IkeSa", now: float) -> None: ...
    def delete_child(self, child: ChildSa, reason: str) -> Task: ...
    def delete_ike(self, reason: str, *, children_reason: str = "ike-closed") -> Task: ...
    def liveness_check(self) -> Task: ...


class Services(Protocol):
    """What an IKE SA needs from its endpoint."""

    def random_bytes(self, n: int) -> bytes: ...
    def allocate_child_spi(self) -> int: ...
    def release_child_spi(self, spi: int) -> None: ...
    def allocate_ike_spi(self) -> bytes: ...
    def adopt(self, sa: "IkeSa") -> None: ...  # register a new IKE SA (from an IKE rekey)
    def established(self, sa: "IkeSa", now: float) -> None: ...  # duplicate-SA resolution
    def initial_contact(self, sa: "IkeSa", now: float) -> bool: ...  # peer restarted: drop stale SAs
    def wall_time(self) -> float: ...  # POSIX seconds, for certificate validity checks
    def has_other_sa(self, sa: "IkeSa") -> bool: ...  # another IKE SA with this peer exists
    def replaces_kernel_sas(self, sa: "IkeSa", now: float) -> bool: ...  # our earlier instance's SAs with its peer carry traffic
    def crosses_ours(self, sa: "IkeSa", now: float) -> bool: ...  # after our restart, an IKE SA we initiated with its peer exists
    exchanges: Exchanges  # the exchange tasks (exchanges/__init__.py): dispatch, timers, queued deletes


class IkeSa:
    def __init__(self, services: Services, config: PeerConfig, *, initiator: bool,
                 local: tuple[str, int], remote: tuple[str, int], spi_i: bytes, spi_r: bytes, now: float):
        self.services = services
        self.exchanges = services.exchanges
        self.config = config
        self.initiator = initiator  # original initiator of THIS IKE SA (the I flag)
        self.local = local
        self.remote = remote
        self.spi_i = spi_i
        self.spi_r = spi_r
        self._state = IkeState.CONNECTING
        self.created_at = now
        self.established_at: float | None = None
        self.last_received = now  # of anything from the peer: IKE, or ESP (liveness.py)
        self.last_sent = now
        self.inbound_query_for: float | None = None  # liveness.py: the check the last query was for
        # Negotiated state
        self.selected: Selected | None = None
        self.prf: Prf | None = None
        self.keys: IkeKeys | None = None
        self.protect_out: AeadProtector | None = None
        self.protect_in: AeadProtector | None = None
        self.ni = b""
        self.nr = b""
        self.init_request = b""  # IKE_SA_INIT request as sent, for AUTH (RFC 7296 §2.15)
        self.init_response = b""
        self.int_auth_i = b""  # RFC 9242 running IntAuth values
        self.int_auth_r = b""
        self.intermediate_done = False
        self.peer_fragmentation = False
        self.peer_hash_algs: frozenset[int] = frozenset()
        self.peer_childless = False
        self.nat_local = False
        self.nat_remote = False
        self.local_id = config.local_id
        self.remote_id: Identity | None = None  # once authenticated
        self.peer_chain: list[Certificate] = []
        # Message IDs, the outstanding request, the queue, retransmission, dispatch
        self.tasks = TaskManager(self)
        # Children by our inbound SPI
        self.children: dict[int, ChildSa] = {}
        # Timers
        self.rekey_at: float | None = None
        self.expire_at: float | None = None
        self.keepalive_at: float | None = None
        self.successor: "IkeSa | None" = None
        self.rekeyed_from: str | None = None
        self.peer_rekey: "IkeSa | None" = None  # successor created by the peer (collisions)
        self.rekey_nonces: tuple[bytes, bytes] | None = None  # (Ni, Nr) of the exchange that made this SA
        self.peer_rekey_nonces: tuple[bytes, bytes] | None = None  # (Ni, Nr) of the peer's IKE rekey we answered
        self.close_reason: str | None = None
        #: Initiator replacing SAs that outlived an earlier instance: after IKE_AUTH, an empty
        #: INFORMATIONAL tells the peer our CHILD_SA is installed (exchanges.ike_auth).
        self.confirm_install = False
        # Outputs
        self.outbox: list[Datagram] = []
        self.events: list[Event] = []

    # -- identity -------------------------------------------------------------------
    @property
    def label(self) -> str:
        return f"{self.spi_i.hex()}_{self.spi_r.hex()}"

    @property
    def our_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def remote_addr(self) -> str:
        return self.remote[0]

    @property
    def state(self) -> IkeState:
        return self._state

    def transition(self, new: IkeState) -> None:
        """The one way to change the state: only changes state.TRANSITIONS lists."""
        check_transition(self._state, new)
        self._state = new

    @property
    def is_established(self) -> bool:
        return self.state == IkeState.ESTABLISHED

    def emit(self, event: Event) -> None:
        self.events.append(event)

    # -- keys -------------------------------------------------------------------------
    def install_keys(self, keys: IkeKeys) -> None:
        if self.selected is None:
            raise InvariantError("expected self.selected is not None")
        self.keys = keys
        enc_i = AeadProtector(self.selected.encr, self.selected.key_bits, keys.sk_ei)
        enc_r = AeadProtector(self.selected.encr, self.selected.key_bits, keys.sk_er)
        self.protect_out, self.protect_in = (enc_i, enc_r) if self.initiator else (enc_r, enc_i)

    @property
    def sk_p_own(self) -> bytes:
        if self.keys is None:
            raise InvariantError("no AUTH before IKE_SA_INIT made the keys")
        return self.keys.sk_pi if self.initiator else self.keys.sk_pr

    @property
    def sk_p_peer(self) -> bytes:
        if self.keys is None:
            raise InvariantError("no AUTH before IKE_SA_INIT made the keys")
        return self.keys.sk_pr if self.initiator else self.keys.sk_pi

    # -- sending ----------------------------------------------------------------------
    def _max_datagram(self) -> int:
        overhead = IPV6_UDP_OVERHEAD if ":" in self.remote[0] else IPV4_UDP_OVERHEAD
        marker = 4 if self.local[1] != 500 else 0
        return max(576, self.config.fragment_size) - overhead - marker

    def encode(self, msg: Message) -> list[Datagram]:
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            data = [codec.encode(msg)]
        else:
            whole = codec.encode(msg, self.protect_out)
            limit = self._max_datagram()
            if self.peer_fragmentation and self.config.fragmentation and len(whole) > limit:
                if self.protect_out is None:
                    raise InvariantError("fragmentation is negotiated after the keys exist")
                data = encode_fragments(msg, self.protect_out, limit)
            else:
                data = [whole]
        return [Datagram(d, self.local, self.remote) for d in data]

    def transmit(self, datagrams: list[Datagram], now: float) -> None:
        self.outbox.extend(datagrams)
        self.last_sent = now

    def queue(self, task: Task, now: float) -> None:
        """Run `task` once the exchanges queued before it are done (libcharon's queue_task)."""
        self.tasks.queue(task, now)

    # -- receiving --------------------------------------------------------------------
    def receive(self, data: bytes, msg: Message, local: tuple[str, int], remote: tuple[str, int],
                now: float) -> None:
        """A datagram for this SA (header already parsed into `msg`, payloads still protected)."""
        if self.state == IkeState.CLOSED:
            return
        try:
            if msg.is_response:
                self.tasks.receive_response(data, msg, now)
            else:
                self.tasks.receive_request(data, msg, local, remote, now)
        except IntegrityError:
            log.debug("%s: dropped a message that failed integrity", self.label)

    # -- timers -----------------------------------------------------------------------
    def next_timer(self) -> float | None:
        """When `tick` next has something to do; every time listed here is consumed by it."""
        # Asked after every call that touched the SA (twice per IKE SA set up): the earliest
        # is kept as it goes, without building a list of candidates each time.
        earliest = self.tasks.next_timer()
        state = self._state
        if state == IkeState.CONNECTING:
            if not self.initiator:
                earliest = _earlier(earliest, self.created_at + self.config.half_open_timeout)
        elif state == IkeState.REKEYED:
            earliest = _earlier(earliest, self.expire_at)
        elif state == IkeState.ESTABLISHED:
            earliest = _earlier(_earlier(_earlier(earliest, self.rekey_at), self.expire_at), self.keepalive_at)
            if self.config.dpd_delay and self.tasks.outstanding is None and not self.tasks.queued:
                earliest = _earlier(earliest, self.last_received + self.config.dpd_delay)
            for child in self.children.values():
                earliest = _earlier(_earlier(_earlier(earliest, child.rekey_at), child.expire_at),
                                    child.activity_check_at)
                if child.state.value == "inbound-only" and not child.outbound_retired:
                    earliest = _earlier(earliest, child.created_at + self.inbound_only_limit())
                    earliest = _earlier(earliest, child.handover_query_at)
        return earliest

    def inbound_only_limit(self) -> float:
        """How long a CHILD_SA waits for the peer's signal before it sends anyway: as long as
        the peer retransmits the request that would bring it (its Delete, or after a handover
        its confirmation). A restarted peer can be slow to process our IKE_AUTH answer (over a
        second was seen in the VM tier); sending sooner would lose what it cannot decrypt."""
        return sum(self.config.retransmit.delays())

    def tick(self, now: float) -> None:
        if self.state == IkeState.CLOSED:
            return
        if not self.tasks.retransmit(now):
            return
        if self.state == IkeState.CONNECTING and not self.initiator \
                and now >= self.created_at + self.config.half_open_timeout:
            self.close("timeout", now)
            return
        self.tasks.on_timers(now)
        self.exchanges.on_timers(self, now)

    # -- lifecycle --------------------------------------------------------------------
    def schedule_rekey(self, now: float) -> None:
        lt = self.config.ike_lifetime
        self.rekey_at = now + lt.rekey_time - random.uniform(0, lt.jitter) if lt.rekey_time else None
        self.expire_at = now + lt.life_time if lt.life_time else None

    def close(self, reason: str, now: float, *, children_reason: str = "ike-closed") -> None:
        """Forget this SA (no message sent). Children still here are reported deleted."""
        if self.state == IkeState.CLOSED:
            return
        for child in list(self.children.values()):
            self.drop_child(child, children_reason)
        self.transition(IkeState.CLOSED)
        self.close_reason = reason
        self.tasks.close()
        self.emit(IkeSaClosed(self.label, self.remote[0], reason))

    def notify_and_close(self, notify: int, reason: str, now: float) -> None:
        """Send one INFORMATIONAL with an error notify, then forget the SA without waiting
        for its answer (RFC 7296 §2.21.2, e.g. AUTHENTICATION_FAILED)."""
        self.tasks.clear()
        self.tasks.send_once(ExchangeType.INFORMATIONAL, [NotifyPayload(notify)], now)
        self.close(reason, now)

    def hand_children_to(self, target: "IkeSa") -> None:
        """Move every CHILD_SA to `target` (the IKE SA that replaces this one)."""
        for spi, child in list(self.children.items()):
            child.info = replace(child.info, ike_sa=target.label)
            target.children[spi] = child
        self.children.clear()

    def retire(self, successor: "IkeSa", now: float) -> None:
        """Replaced by `successor`: wait a little for the peer's delete, then go."""
        self.transition(IkeState.REKEYED)
        self.successor = successor
        self.rekey_at = None
        self.expire_at = now + OLD_SA_GRACE

    def drop_child(self, child: ChildSa, reason: str) -> None:
        """Forget a CHILD_SA and tell the data plane to remove it."""
        if self.children.pop(child.inbound_spi, None) is None:
            return
        if child.state != ChildState.DELETED:
            child.state = ChildState.DELETED
            self.emit(ChildSaDeleted(self.label, child.name, child.inbound_spi, child.outbound_spi,
                                     self.local[0], self.remote[0], reason))
        self.services.release_child_spi(child.inbound_spi)

    def find_child_by_outbound(self, spi: int) -> ChildSa | None:
        for child in self.children.values():
            if child.outbound_spi == spi:
                return child
        return None

    def random_bytes(self, n: int) -> bytes:
        return self.services.random_bytes(n)

    def status(self) -> dict[str, Any]:
        return {
            "ike_sa": self.label,
            "state": self.state.value,
            "initiator": self.initiator,
            "local": f"{self.local[0]}[{self.local[1]}]",
            "remote": f"{self.remote[0]}[{self.remote[1]}]",
            "local_id": str(self.local_id),
            "remote_id": str(self.remote_id) if self.remote_id is not None else None,
            "algorithm": self.selected.describe() if self.selected else None,
            "nat_local": self.nat_local,
            "nat_remote": self.nat_remote,
            "established_at": self.established_at,
            "children": [
                {
                    "name": c.name,
                    "state": c.state.value,
                    "inbound_spi": f"{c.inbound_spi:08x}",
                    "outbound_spi": f"{c.outbound_spi:08x}",
                    "algorithm": c.info.algorithm,
                    "mode": c.info.mode,
                    "encap": c.info.encap is not None,
                    "local_ts": [str(t.start_addr) for t in c.info.local_ts],
                    "remote_ts": [str(t.start_addr) for t in c.info.remote_ts],
                }
                for c in self.children.values()
            ],
        }


__all__ = ["IkeSa", "IkeState", "Datagram", "Services"]


def _earlier(a: float | None, b: float | None) -> float | None:
    """The earlier of two deadlines, None meaning none."""
    if a is None:
        return b
    if b is None or a <= b:
        return a
    return b
