"""The task manager of one IKE SA (libcharon's task_manager_v2): message IDs, the one
outstanding request and its retransmission, the queue of tasks waiting for their turn,
duplicate requests answered from the cached response, reassembly of fragments, and the
dispatch of responses to their task and of requests to the SA's responders.

It knows exchanges only through the contract in task.py; `IkeSa` owns one as `sa.tasks`.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

from ..records import record
from . import message as codec
from .constants import ExchangeType, NotifyType
from .errors import AuthenticationFailed, FragmentError, IkeError, InvalidKePayload, ParseError
from .fragment import Reassembler
from .payloads import EncryptedFragment, EncryptedPayload, Message, NotifyPayload, Payload
from .state import IkeState
from .task import Reply, Responder, Task

if TYPE_CHECKING:
    from .sa import Datagram, IkeSa

log = logging.getLogger("ipsec_mesh.ike")

MAX_REASSEMBLIES = 4  # messages in reassembly at once, per IKE SA


@record
class Outstanding:
    task: Task
    message_id: int
    datagrams: list[Datagram]
    tries: int
    next_at: float


class TaskManager:
    def __init__(self, sa: IkeSa):
        self.sa = sa
        self.next_mid = 0  # our next request
        self.peer_mid = 0  # the peer's next request we expect
        self.outstanding: Outstanding | None = None
        self.cached_response: tuple[int, list[Datagram]] | None = None
        self.queued: deque[Task] = deque()
        self.reassembly: dict[tuple[int, bool], Reassembler] = {}
        # By exchange type, made on first use (`responder`): an IKE SA that only ever answers
        # IKE_SA_INIT and IKE_AUTH builds two, not one of each kind.
        self.responders: dict[int, Responder] = {}
        # The responders with timers of their own (most have none): asked on every datagram.
        self._timed: list[Responder] = []

    def responder(self, exchange: int) -> Responder | None:
        """This IKE SA's responder for `exchange` (made the first time), None if no kind answers it.

        One object answers all the exchange types of its kind (`Responder.exchanges`), so
        what it keeps between them (IKE_SA_INIT for IKE_INTERMEDIATE) stays together."""
        responder = self.responders.get(exchange)
        if responder is None:
            responder = self.sa.exchanges.new_responder(exchange)
            if responder is None:
                return None
            for kind in responder.exchanges:
                self.responders[kind] = responder
            if type(responder).next_timer is not Responder.next_timer:
                self._timed.append(responder)
        return responder

    # -- the queue ----------------------------------------------------------------------
    def queue(self, task: Task, now: float) -> None:
        self.queued.append(task)
        self.start_next(now)

    def queue_first(self, task: Task) -> None:
        """Run `task` before anything already queued (the next step of the task that just ran)."""
        self.queued.appendleft(task)

    def clear(self) -> None:
        self.queued.clear()

    def start_next(self, now: float) -> None:
        while self.outstanding is None and self.queued and self.sa.state != IkeState.CLOSED:
            task = self.queued.popleft()
            if task.obsolete(self.sa):
                continue
            task.start(self.sa, now)

    def close(self) -> None:
        self.outstanding = None
        self.queued.clear()
        for responder in self.responders.values():
            responder.close()

    # -- sending ----------------------------------------------------------------------
    def send_request(self, task: Task, exchange: int, payloads: list[Payload], now: float) -> bytes:
        """Send `task`'s request; the bytes of the message as sent (empty when fragmented)."""
        sa = self.sa
        msg = Message(sa.spi_i, sa.spi_r, exchange, sa.initiator, False, self.next_mid, payloads)
        datagrams = sa.encode(msg)
        delays = sa.config.retransmit.delays()
        self.outstanding = Outstanding(task, self.next_mid, datagrams, 0, now + delays[0])
        sa.transmit(datagrams, now)
        return datagrams[0].data if len(datagrams) == 1 else b""

    def send_once(self, exchange: int, payloads: list[Payload], now: float) -> None:
        """A request nobody waits for (the SA is closed right after)."""
        sa = self.sa
        msg = Message(sa.spi_i, sa.spi_r, exchange, sa.initiator, False, self.next_mid, payloads)
        sa.transmit(sa.encode(msg), now)

    def _send_response(self, request: Message, payloads: list[Payload], now: float) -> None:
        sa = self.sa
        msg = Message(sa.spi_i, sa.spi_r, request.exchange, sa.initiator, True, request.message_id, payloads)
        datagrams = sa.encode(msg)
        self.cached_response = (request.message_id, datagrams)
        sa.transmit(datagrams, now)

    # -- timers -----------------------------------------------------------------------
    def next_timer(self) -> float | None:
        earliest = self.outstanding.next_at if self.outstanding is not None else None
        for responder in self._timed:  # most SAs have none
            at = responder.next_timer()
            if at is not None and (earliest is None or at < earliest):
                earliest = at
        return earliest

    def retransmit(self, now: float) -> bool:
        """Resend the outstanding request if due; False when it was given up (the task was told)."""
        out = self.outstanding
        if out is None or now < out.next_at:
            return True
        sa = self.sa
        delays = sa.config.retransmit.delays()
        if out.tries + 1 >= len(delays):
            log.warning("%s: no answer from %s after %d retransmissions", sa.label, sa.remote[0], out.tries)
            self.outstanding = None
            out.task.on_timeout(sa, now)
            return False
        out.tries += 1
        out.next_at = now + delays[out.tries]
        sa.transmit(out.datagrams, now)
        return True

    def on_timers(self, now: float) -> None:
        for responder in dict.fromkeys(self.responders.values()):
            responder.on_timers(self.sa, now)

    # -- receiving --------------------------------------------------------------------
    def _unprotect(self, data: bytes, msg: Message) -> Message | None:
        """Decrypt, or add to reassembly; None while fragments are missing."""
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            return msg
        protect_in = self.sa.protect_in
        if protect_in is None:
            raise ParseError("protected message before keys exist")
        last = msg.payloads[-1] if msg.payloads else None
        if isinstance(last, EncryptedPayload):
            return codec.decrypt(data, msg, protect_in)
        if isinstance(last, EncryptedFragment):
            key = (msg.message_id, msg.is_response)
            self.forget_stale_fragments()
            reassembler = self.reassembly.get(key)
            if reassembler is None:
                if len(self.reassembly) >= MAX_REASSEMBLIES:
                    raise FragmentError("too many messages in reassembly")
                reassembler = self.reassembly[key] = Reassembler()
            whole = reassembler.add(data, msg, protect_in)
            if whole is not None:
                del self.reassembly[key]
            return whole
        raise ParseError("protected exchange without an Encrypted payload")

    def forget_stale_fragments(self) -> None:
        """Drop half-reassembled messages that can no longer be processed."""
        current = self.outstanding.message_id if self.outstanding else None
        for mid, is_response in list(self.reassembly):
            if (is_response and mid != current) or (not is_response and mid < self.peer_mid):
                del self.reassembly[(mid, is_response)]

    def receive_response(self, data: bytes, msg: Message, now: float) -> None:
        out = self.outstanding
        if out is None or msg.message_id != out.message_id or msg.exchange != out.task.exchange:
            return
        sa = self.sa
        try:
            whole = self._unprotect(data, msg)
        except (ParseError, FragmentError) as exc:
            log.info("%s: malformed response dropped: %s", sa.label, exc)
            return
        if whole is None:
            return
        sa.last_received = now
        self.outstanding = None
        self.next_mid += 1
        try:
            out.task.on_response(sa, whole, data, now)
        except IkeError as exc:
            out.task.on_error(sa, exc, now)
        self.start_next(now)

    def receive_request(self, data: bytes, msg: Message, local: tuple[str, int], remote: tuple[str, int],
                        now: float) -> None:
        sa = self.sa
        if self.cached_response and msg.message_id == self.cached_response[0]:
            # A retransmitted request: answer from the cache (only once per fragmented request).
            first = msg.payloads[-1] if msg.payloads else None
            if not isinstance(first, EncryptedFragment) or first.number == 1:
                sa.transmit(self.cached_response[1], now)
            return
        if msg.message_id != self.peer_mid:
            return
        try:
            whole = self._unprotect(data, msg)
        except (ParseError, FragmentError) as exc:
            if isinstance(exc, ParseError) and msg.exchange != ExchangeType.IKE_SA_INIT and sa.keys:
                log.info("%s: malformed request: %s", sa.label, exc)
            return
        if whole is None:
            return
        sa.last_received = now
        # Answer where the (authenticated) request came from: the initiator moves to port
        # 4500 after NAT detection, and a NAT may rebind the peer's address or port.
        sa.remote = remote
        sa.local = local
        try:
            reply = self._dispatch(whole, data, now)
        except IkeError as exc:
            reply = self._error_reply(exc, whole)
        if reply is None:
            return
        self.peer_mid = msg.message_id + 1
        self._send_response(whole, reply.payloads, now)
        if reply.after is not None:
            reply.after(now)
        if reply.close:
            sa.close(reply.close, now)
        self.start_next(now)

    def _dispatch(self, msg: Message, raw: bytes, now: float) -> Reply | None:
        responder = self.responder(msg.exchange)
        if responder is not None:
            return responder.respond(self.sa, msg, raw, now)
        if self.sa.state == IkeState.CONNECTING:
            return None
        raise IkeError(f"unsupported exchange type {msg.exchange}", notify=NotifyType.INVALID_SYNTAX)

    def _error_reply(self, exc: IkeError, request: Message) -> Reply:
        sa = self.sa
        notify = exc.notify or NotifyType.INVALID_SYNTAX
        log.warning("%s: %s request from %s refused (%s): %s", sa.label,
                    _exchange_name(request.exchange), sa.remote[0], NotifyType(notify).name, exc)
        payloads: list[Payload] = [NotifyPayload(notify)]
        if isinstance(exc, InvalidKePayload):
            payloads = [NotifyPayload(notify, data=int(exc.wanted_group).to_bytes(2, "big"))]
        close = None
        if isinstance(exc, AuthenticationFailed) or sa.state == IkeState.CONNECTING:
            close = "auth-failed" if isinstance(exc, AuthenticationFailed) else "failed"
        return Reply(payloads, close=close)


def _exchange_name(value: int) -> str:
    try:
        return ExchangeType(value).name
    except ValueError:
        return f"exchange {value}"
