"""IKE_FOLLOWUP_KE (RFC 9370 §2.2.3): additional key exchanges after a CREATE_CHILD_SA.

Not in `exchanges/`: the follow-ups are part of the CHILD_SA and IKE SA rekey tasks that
start them (libcharon runs them inside child_create and ike_rekey), so both use this module.

When the CREATE_CHILD_SA that rekeys the IKE SA or creates (rekeys) a CHILD_SA with PFS
selects ADDKE transforms, the responder answers with N(ADDITIONAL_KEY_EXCHANGE)(link)
and keeps the exchange's state; the initiator then runs one IKE_FOLLOWUP_KE per
additional key exchange, each echoing the link the responder last gave. Keys are
derived only once every exchange is done, from SK(0) (the CREATE_CHILD_SA KE) and
SK(1)..SK(n) in order. The task that ran the CREATE_CHILD_SA (the `owner`) completes
with `followups_done(sa, secrets, now)` or `followup_failed(sa, reason, notify, now)`.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

from ..records import record
from .constants import ExchangeType, NotifyType, notify_name
from .errors import IkeError, InvariantError, ParseError
from .keyexchange import KeInitiator, respond_key_exchange, start_key_exchange
from .payloads import KePayload, Message, NotifyPayload, Payload
from .sa import IkeSa, IkeState
from .task import Reply, Responder, Task, first_error

log = logging.getLogger("ipsec_mesh.ike")

LINK_LEN = 16
MAX_LINK_LEN = 64  # what we accept from a peer: RFC 9370 leaves the size to the responder
MIN_STATE_LIFETIME = 20.0  # seconds the responder waits for the next follow-up (RFC 9370: 5-20 s)


@record
class PendingKeyExchanges:
    """Responder state between a CREATE_CHILD_SA and its last IKE_FOLLOWUP_KE."""

    methods: list[int]  # still to run, in order
    secrets: list[bytes]  # SK(0), SK(1), ... so far
    finish: Callable[[tuple[bytes, ...], float], None]  # with all secrets: derive keys, install
    abandon: Callable[[float], None]  # the initiator gave up or sent garbage: release what was reserved
    expires_at: float


class FollowupOwner(Protocol):
    """The task whose CREATE_CHILD_SA the follow-ups complete."""

    def followups_done(self, sa: IkeSa, secrets: tuple[bytes, ...], now: float) -> None: ...
    def followup_failed(self, sa: IkeSa, reason: str, notify: int | None, now: float) -> None: ...


def hold(sa: IkeSa, methods: tuple[int, ...], first_secret: bytes,
         finish: Callable[[tuple[bytes, ...], float], None], abandon: Callable[[float], None],
         now: float) -> NotifyPayload:
    """Keep a CREATE_CHILD_SA's state for its follow-ups; the notify to answer with."""
    responder = sa.tasks.responder(ExchangeType.IKE_FOLLOWUP_KE)
    if not isinstance(responder, FollowupKeResponder):
        raise InvariantError("expected isinstance(responder, FollowupKeResponder)")
    return responder.park(sa, PendingKeyExchanges(list(methods), [first_secret], finish, abandon, 0.0), now)


def link_of(msg: Message) -> bytes:
    """The link data of a response's ADDITIONAL_KEY_EXCHANGE notify (initiator side)."""
    notify = msg.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE)
    if notify is None or not 1 <= len(notify.data) <= MAX_LINK_LEN:
        raise ParseError("response selects additional key exchanges without a valid ADDITIONAL_KEY_EXCHANGE")
    return notify.data


class FollowupKeTask(Task):
    """One IKE_FOLLOWUP_KE request: the next additional key exchange of `owner`."""

    exchange = ExchangeType.IKE_FOLLOWUP_KE

    def __init__(self, owner: FollowupOwner, methods: tuple[int, ...], secrets: tuple[bytes, ...],
                 link: bytes) -> None:
        self.owner = owner
        self.methods = methods
        self.secrets = secrets
        self.link = link
        self.ke: KeInitiator | None = None

    @property
    def method(self) -> int:
        return self.methods[0]

    def start(self, sa: IkeSa, now: float) -> None:
        self.ke = start_key_exchange(self.method)
        payloads: list[Payload] = [KePayload(self.method, self.ke.public_data),
                    NotifyPayload(NotifyType.ADDITIONAL_KEY_EXCHANGE, data=self.link)]
        sa.tasks.send_request(self, self.exchange, payloads, now)

    def on_response(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
        error = first_error(msg)
        if error is not None:
            self.owner.followup_failed(sa, f"peer refused IKE_FOLLOWUP_KE: {notify_name(error.type)}",
                                       error.type, now)
            return
        ke = msg.first(KePayload)
        if ke is None or ke.group != self.method:
            raise ParseError(f"IKE_FOLLOWUP_KE response lacks the KE payload for {self.method}")
        if self.ke is None:
            raise InvariantError("started before any response")
        secrets = self.secrets + (self.ke.finish(ke.data),)
        if len(self.methods) > 1:
            # Run the next one at once, before anything else queued on this SA.
            sa.tasks.queue_first(FollowupKeTask(self.owner, self.methods[1:], secrets, link_of(msg)))
            return
        self.owner.followups_done(sa, secrets, now)

    def on_error(self, sa: IkeSa, exc: IkeError, now: float) -> None:
        self.owner.followup_failed(sa, str(exc), exc.notify, now)


class FollowupKeResponder(Responder):
    """Answers IKE_FOLLOWUP_KE; keeps each pending CREATE_CHILD_SA's state by its link data."""

    exchanges = (ExchangeType.IKE_FOLLOWUP_KE,)

    def __init__(self) -> None:
        self.pending: dict[bytes, PendingKeyExchanges] = {}

    def park(self, sa: IkeSa, pending: PendingKeyExchanges, now: float) -> NotifyPayload:
        link = sa.random_bytes(LINK_LEN)
        pending.expires_at = now + max(MIN_STATE_LIFETIME, sum(sa.config.retransmit.delays()))
        self.pending[link] = pending
        return NotifyPayload(NotifyType.ADDITIONAL_KEY_EXCHANGE, data=link)

    def next_timer(self) -> float | None:
        return min((p.expires_at for p in self.pending.values()), default=None)

    def on_timers(self, sa: IkeSa, now: float) -> None:
        """Forget follow-up state the initiator stopped using (RFC 9370 §2.2.3)."""
        for link, pending in list(self.pending.items()):
            if now >= pending.expires_at:
                del self.pending[link]
                log.info("%s: %s never finished its additional key exchanges", sa.label, sa.remote[0])
                pending.abandon(now)

    def close(self) -> None:
        self.pending.clear()

    def respond(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Reply | None:
        if sa.state == IkeState.CONNECTING:
            return None  # nothing but IKE_SA_INIT, IKE_INTERMEDIATE and IKE_AUTH before IKE_AUTH completes
        if sa.state not in (IkeState.ESTABLISHED, IkeState.REKEYED):
            raise IkeError("IKE SA is being deleted", notify=NotifyType.STATE_NOT_FOUND)
        link = msg.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE)
        pending = self.pending.pop(link.data, None) if link is not None else None
        if pending is None:
            raise IkeError("no additional key exchange is pending for this link", notify=NotifyType.STATE_NOT_FOUND)
        method = pending.methods[0]
        ke = msg.first(KePayload)
        try:
            if ke is None or ke.group != method:
                raise ParseError(f"IKE_FOLLOWUP_KE must carry KE for {method}")
            our_data, secret = respond_key_exchange(method, ke.data)
        except IkeError:
            pending.abandon(now)
            raise
        pending.methods.pop(0)
        pending.secrets.append(secret)
        payloads: list[Payload] = [KePayload(method, our_data)]
        if pending.methods:
            payloads.append(self.park(sa, pending, now))
        else:
            # The last one: keys now exist (inbound SAs are installed before this response leaves).
            pending.finish(tuple(pending.secrets), now)
        return Reply(payloads)


__all__ = ["FollowupKeTask", "FollowupKeResponder", "PendingKeyExchanges", "hold", "link_of"]
