"""One IKE SA: message IDs, retransmission, protection, fragments, timers, children.

The exchanges themselves live in `exchanges/` (one module per exchange, as libcharon
has one task per exchange); this class is the machinery they share. Sans-IO: the
owner (`endpoint.IkeEndpoint`) feeds it datagrams and ticks with `now`, and drains
`outbox` and `events`.
"""

from __future__ import annotations

import enum
import logging
import random
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from . import message as codec
from .config import PeerConfig
from .constants import ExchangeType, NotifyType, ProtocolId
from .crypto import AeadProtector, Prf
from .errors import AuthenticationFailed, FragmentError, IkeError, IntegrityError, ParseError
from .events import ChildSaDeleted, Event, IkeSaClosed
from .fragment import Reassembler, encode_fragments
from .keymat import IkeKeys
from .payloads import EncryptedFragment, EncryptedPayload, Message, NotifyPayload
from .proposals import Selected

log = logging.getLogger("ipsec_mesh.ike")

IPV4_UDP_OVERHEAD = 28
IPV6_UDP_OVERHEAD = 48


class IkeState(enum.Enum):
    CONNECTING = "connecting"  # IKE_SA_INIT / IKE_INTERMEDIATE / IKE_AUTH under way
    ESTABLISHED = "established"
    REKEYED = "rekeyed"  # a successor exists; waiting for the old SA's delete
    DELETING = "deleting"
    CLOSED = "closed"


@dataclass
class Datagram:
    data: bytes
    local: tuple[str, int]
    remote: tuple[str, int]


@dataclass
class Reply:
    """A responder handler's answer: payloads to send, and what to do once they are sent."""

    payloads: list
    after: object = None  # callable(now) or None
    close: str | None = None  # close the IKE SA after sending, with this reason


class Services(Protocol):
    """What an IKE SA needs from its endpoint."""

    def random_bytes(self, n: int) -> bytes: ...
    def allocate_child_spi(self) -> int: ...
    def release_child_spi(self, spi: int) -> None: ...
    def allocate_ike_spi(self) -> bytes: ...
    def adopt(self, sa: "IkeSa") -> None: ...  # register a new IKE SA (from an IKE rekey)
    def established(self, sa: "IkeSa", now: float) -> None: ...  # duplicate-SA resolution
    def initial_contact(self, sa: "IkeSa", now: float) -> bool: ...  # peer restarted: drop stale SAs
    def wall_time(self): ...  # datetime (UTC) for certificate validity checks
    def has_other_sa(self, sa: "IkeSa") -> bool: ...  # another IKE SA with this peer exists


@dataclass
class Outstanding:
    task: object  # an exchange task with build/on_response/on_failure
    message_id: int
    datagrams: list[Datagram]
    tries: int
    next_at: float


class IkeSa:
    def __init__(self, services: Services, config: PeerConfig, *, initiator: bool,
                 local: tuple[str, int], remote: tuple[str, int], spi_i: bytes, spi_r: bytes, now: float):
        self.services = services
        self.config = config
        self.initiator = initiator  # original initiator of THIS IKE SA (the I flag)
        self.local = local
        self.remote = remote
        self.spi_i = spi_i
        self.spi_r = spi_r
        self.state = IkeState.CONNECTING
        self.created_at = now
        self.established_at: float | None = None
        self.last_received = now
        self.last_sent = now
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
        self.pending_addke: list[int] = []  # responder: additional key exchanges still to run
        self.peer_fragmentation = False
        self.peer_hash_algs: frozenset[int] = frozenset()
        self.peer_childless = False
        self.nat_local = False
        self.nat_remote = False
        self.local_id = config.local_id
        self.remote_id = None  # identity.Identity once authenticated
        self.peer_chain: list = []
        # Messages
        self.next_mid = 0  # our next request
        self.peer_mid = 0  # the peer's next request we expect
        self.outstanding: Outstanding | None = None
        self.cached_response: tuple[int, list[Datagram]] | None = None
        self.tasks: deque = deque()
        self.reassembly: dict[tuple[int, bool], Reassembler] = {}
        # Children by our inbound SPI
        self.children: dict[int, object] = {}
        # Timers
        self.rekey_at: float | None = None
        self.expire_at: float | None = None
        self.keepalive_at: float | None = None
        self.successor: "IkeSa | None" = None
        self.rekeyed_from: str | None = None
        self.peer_rekey: "IkeSa | None" = None  # successor created by the peer (collisions)
        self.rekey_nonces: tuple[bytes, bytes] | None = None  # (Ni, Nr) of the exchange that made this SA
        self.peer_rekey_nonces: tuple[bytes, bytes] | None = None  # (Ni, Nr) of the peer's IKE rekey we answered
        self.followups: dict[bytes, object] = {}  # responder: RFC 9370 follow-up key exchanges by link data
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
    def is_established(self) -> bool:
        return self.state == IkeState.ESTABLISHED

    def emit(self, event: Event) -> None:
        self.events.append(event)

    # -- keys -------------------------------------------------------------------------
    def install_keys(self, keys: IkeKeys) -> None:
        assert self.selected is not None
        self.keys = keys
        enc_i = AeadProtector(self.selected.encr, self.selected.key_bits, keys.sk_ei)
        enc_r = AeadProtector(self.selected.encr, self.selected.key_bits, keys.sk_er)
        self.protect_out, self.protect_in = (enc_i, enc_r) if self.initiator else (enc_r, enc_i)

    @property
    def sk_p_own(self) -> bytes:
        return self.keys.sk_pi if self.initiator else self.keys.sk_pr

    @property
    def sk_p_peer(self) -> bytes:
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
                data = encode_fragments(msg, self.protect_out, limit)
            else:
                data = [whole]
        return [Datagram(d, self.local, self.remote) for d in data]

    def send_request(self, task, exchange: int, payloads: list, now: float) -> bytes:
        msg = Message(self.spi_i, self.spi_r, exchange, self.initiator, False, self.next_mid, payloads)
        datagrams = self.encode(msg)
        delays = self.config.retransmit.delays()
        self.outstanding = Outstanding(task, self.next_mid, datagrams, 0, now + delays[0])
        self._transmit(datagrams, now)
        return datagrams[0].data if len(datagrams) == 1 else b""

    @property
    def outstanding_exchange(self) -> int:
        return getattr(self.outstanding.task, "exchange")

    def _send_response(self, request: Message, payloads: list, now: float) -> bytes:
        msg = Message(self.spi_i, self.spi_r, request.exchange, self.initiator, True, request.message_id, payloads)
        datagrams = self.encode(msg)
        self.cached_response = (request.message_id, datagrams)
        self._transmit(datagrams, now)
        return datagrams[0].data if len(datagrams) == 1 else b""

    def _transmit(self, datagrams: list[Datagram], now: float) -> None:
        self.outbox.extend(datagrams)
        self.last_sent = now

    def queue(self, task, now: float) -> None:
        self.tasks.append(task)
        self.start_next(now)

    def start_next(self, now: float) -> None:
        while self.outstanding is None and self.tasks and self.state not in (IkeState.CLOSED,):
            task = self.tasks.popleft()
            if getattr(task, "obsolete", lambda sa: False)(self):
                continue
            task.start(self, now)

    # -- receiving --------------------------------------------------------------------
    def receive(self, data: bytes, msg: Message, local: tuple[str, int], remote: tuple[str, int],
                now: float) -> None:
        """A datagram for this SA (header already parsed into `msg`, payloads still protected)."""
        if self.state == IkeState.CLOSED:
            return
        try:
            if msg.is_response:
                self._receive_response(data, msg, local, remote, now)
            else:
                self._receive_request(data, msg, local, remote, now)
        except IntegrityError:
            log.debug("%s: dropped a message that failed integrity", self.label)

    def _unprotect(self, data: bytes, msg: Message) -> Message | None:
        """Decrypt, or add to reassembly; None while fragments are missing."""
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            return msg
        if self.protect_in is None:
            raise ParseError("protected message before keys exist")
        last = msg.payloads[-1] if msg.payloads else None
        if isinstance(last, EncryptedPayload):
            return codec.decrypt(data, msg, self.protect_in)
        if isinstance(last, EncryptedFragment):
            key = (msg.message_id, msg.is_response)
            self._forget_stale_fragments()
            reassembler = self.reassembly.get(key)
            if reassembler is None:
                if len(self.reassembly) >= 4:
                    raise FragmentError("too many messages in reassembly")
                reassembler = self.reassembly[key] = Reassembler()
            whole = reassembler.add(data, msg, self.protect_in)
            if whole is not None:
                del self.reassembly[key]
            return whole
        raise ParseError("protected exchange without an Encrypted payload")

    def _forget_stale_fragments(self) -> None:
        """Drop half-reassembled messages that can no longer be processed."""
        current = self.outstanding.message_id if self.outstanding else None
        for mid, is_response in list(self.reassembly):
            if (is_response and mid != current) or (not is_response and mid < self.peer_mid):
                del self.reassembly[(mid, is_response)]

    def _receive_response(self, data, msg, local, remote, now) -> None:
        out = self.outstanding
        if out is None or msg.message_id != out.message_id or msg.exchange != self.outstanding_exchange:
            return
        try:
            whole = self._unprotect(data, msg)
        except (ParseError, FragmentError) as exc:
            log.info("%s: malformed response dropped: %s", self.label, exc)
            return
        if whole is None:
            return
        self.last_received = now
        self.outstanding = None
        self.next_mid += 1
        try:
            out.task.on_response(self, whole, data, now)
        except IkeError as exc:
            self.on_task_error(out.task, exc, now)
        self.start_next(now)

    def _receive_request(self, data, msg, local, remote, now) -> None:
        if self.cached_response and msg.message_id == self.cached_response[0]:
            # A retransmitted request: answer from the cache (only once per fragmented request).
            first = msg.payloads[-1] if msg.payloads else None
            if not isinstance(first, EncryptedFragment) or first.number == 1:
                self._transmit(self.cached_response[1], now)
            return
        if msg.message_id != self.peer_mid:
            return
        try:
            whole = self._unprotect(data, msg)
        except (ParseError, FragmentError) as exc:
            if isinstance(exc, ParseError) and msg.exchange != ExchangeType.IKE_SA_INIT and self.keys:
                log.info("%s: malformed request: %s", self.label, exc)
            return
        if whole is None:
            return
        self.last_received = now
        # Answer where the (authenticated) request came from: the initiator moves to port
        # 4500 after NAT detection, and a NAT may rebind the peer's address or port.
        self.remote = remote
        self.local = local
        from .exchanges import dispatch_request  # exchanges import this module

        try:
            reply = dispatch_request(self, whole, data, now)
        except IkeError as exc:
            reply = self.error_reply(exc, whole)
        if reply is None:
            return
        self.peer_mid = msg.message_id + 1
        self._send_response(whole, reply.payloads, now)
        if reply.after is not None:
            reply.after(now)
        if reply.close:
            self.close(reply.close, now)
        self.start_next(now)

    def error_reply(self, exc: IkeError, request: Message) -> Reply:
        notify = exc.notify or NotifyType.INVALID_SYNTAX
        log.warning("%s: %s request from %s refused (%s): %s", self.label,
                    _exchange_name(request.exchange), self.remote[0], NotifyType(notify).name, exc)
        payloads = [NotifyPayload(notify)]
        if notify == NotifyType.INVALID_KE_PAYLOAD:
            payloads = [NotifyPayload(notify, data=int(exc.wanted_group).to_bytes(2, "big"))]
        close = None
        if isinstance(exc, AuthenticationFailed) or self.state == IkeState.CONNECTING:
            close = "auth-failed" if isinstance(exc, AuthenticationFailed) else "failed"
        return Reply(payloads, close=close)

    def on_task_error(self, task, exc: IkeError, now: float) -> None:
        handler = getattr(task, "on_error", None)
        if handler is not None:
            handler(self, exc, now)
        else:
            log.warning("%s: %s failed: %s", self.label, type(task).__name__, exc)
            self.close("failed", now)

    # -- timers -----------------------------------------------------------------------
    def next_timer(self) -> float | None:
        """When `tick` next has something to do; every time listed here is consumed by it."""
        times = []
        if self.outstanding is not None:
            times.append(self.outstanding.next_at)
        if self.state == IkeState.CONNECTING and not self.initiator:
            times.append(self.created_at + self.config.half_open_timeout)
        times += [pending.expires_at for pending in self.followups.values()]
        if self.state == IkeState.REKEYED and self.expire_at is not None:
            times.append(self.expire_at)
        if self.state == IkeState.ESTABLISHED:
            times += [t for t in (self.rekey_at, self.expire_at, self.keepalive_at) if t is not None]
            if self.config.dpd_delay and self.outstanding is None and not self.tasks:
                times.append(self.last_received + self.config.dpd_delay)
            for child in self.children.values():
                times += [t for t in (child.rekey_at, child.expire_at, child.activity_check_at) if t is not None]
                if child.state.value == "inbound-only":
                    times.append(child.created_at + sum(self.config.retransmit.delays()))
        return min(times) if times else None

    def tick(self, now: float) -> None:
        if self.state == IkeState.CLOSED:
            return
        from .exchanges import on_timers

        out = self.outstanding
        if out is not None and now >= out.next_at:
            delays = self.config.retransmit.delays()
            if out.tries + 1 >= len(delays):
                log.warning("%s: no answer from %s after %d retransmissions", self.label,
                            self.remote[0], out.tries)
                self.outstanding = None
                handler = getattr(out.task, "on_timeout", None)
                if handler is not None:
                    handler(self, now)
                else:
                    self.close("timeout", now)
                return
            out.tries += 1
            out.next_at = now + delays[out.tries]
            self._transmit(out.datagrams, now)
        if self.state == IkeState.CONNECTING and not self.initiator \
                and now >= self.created_at + self.config.half_open_timeout:
            self.close("timeout", now)
            return
        on_timers(self, now)

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
        self.state = IkeState.CLOSED
        self.close_reason = reason
        self.outstanding = None
        self.tasks.clear()
        self.followups.clear()
        self.emit(IkeSaClosed(self.label, self.remote[0], reason))

    def drop_child(self, child, reason: str) -> None:
        """Forget a CHILD_SA and tell the data plane to remove it."""
        from .child import ChildState

        if self.children.pop(child.inbound_spi, None) is None:
            return
        if child.state != ChildState.DELETED:
            child.state = ChildState.DELETED
            self.emit(ChildSaDeleted(self.label, child.name, child.inbound_spi, child.outbound_spi,
                                     self.local[0], self.remote[0], reason))
        self.services.release_child_spi(child.inbound_spi)

    def find_child_by_outbound(self, spi: int):
        for child in self.children.values():
            if child.outbound_spi == spi:
                return child
        return None

    def random_bytes(self, n: int) -> bytes:
        return self.services.random_bytes(n)

    def status(self) -> dict:
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


def _exchange_name(value: int) -> str:
    try:
        return ExchangeType(value).name
    except ValueError:
        return f"exchange {value}"


__all__ = ["IkeSa", "IkeState", "Datagram", "Reply", "Services", "ProtocolId"]
