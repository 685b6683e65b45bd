"""The IKEv2 exchanges, one module each; this module routes requests and timers to them.

Initiator side: task objects queued on an IkeSa (`start`, `on_response`, and
optionally `on_error`, `on_timeout`, `obsolete`). Responder side: `respond_*`
functions returning a `Reply`.
"""

from __future__ import annotations

from ..constants import ExchangeType, NotifyType, ProtocolId
from ..errors import IkeError
from ..payloads import SaPayload
from ..sa import IkeSa, IkeState, Reply
from . import create_child, followup_ke, ike_auth, ike_init, ike_rekey, informational


def dispatch_request(sa: IkeSa, msg, raw: bytes, now: float) -> Reply | None:
    exchange = msg.exchange
    if exchange == ExchangeType.IKE_SA_INIT:
        if sa.initiator or sa.keys is not None:
            return None
        return ike_init.respond(sa, msg, raw, now)
    if exchange == ExchangeType.IKE_INTERMEDIATE:
        if sa.initiator or sa.state != IkeState.CONNECTING:
            return None
        return ike_init.respond_intermediate(sa, msg, now)
    if exchange == ExchangeType.IKE_AUTH:
        if sa.initiator or sa.state != IkeState.CONNECTING:
            return None
        return ike_auth.respond(sa, msg, now)
    if sa.state == IkeState.CONNECTING:
        return None  # nothing else is allowed before IKE_AUTH completes
    create_child.handover_done(sa)
    if exchange == ExchangeType.CREATE_CHILD_SA:
        if sa.state != IkeState.ESTABLISHED:
            raise IkeError("IKE SA is being rekeyed or deleted", notify=NotifyType.TEMPORARY_FAILURE)
        sa_payload = msg.first(SaPayload)
        if sa_payload is not None and sa_payload.proposals and sa_payload.proposals[0].protocol == ProtocolId.IKE:
            return ike_rekey.respond(sa, msg, now)
        return create_child.respond(sa, msg, now)
    if exchange == ExchangeType.IKE_FOLLOWUP_KE:
        if sa.state not in (IkeState.ESTABLISHED, IkeState.REKEYED):
            raise IkeError("IKE SA is being deleted", notify=NotifyType.STATE_NOT_FOUND)
        return followup_ke.respond(sa, msg, now)
    if exchange == ExchangeType.INFORMATIONAL:
        return informational.respond(sa, msg, now)
    raise IkeError(f"unsupported exchange type {exchange}", notify=NotifyType.INVALID_SYNTAX)


def on_timers(sa: IkeSa, now: float) -> None:
    """Rekeys, expiries, liveness checks and NAT keepalives that are due."""
    followup_ke.expire(sa, now)
    if sa.state == IkeState.REKEYED:
        if sa.expire_at is not None and now >= sa.expire_at:
            # The peer never deleted the old SA; nothing depends on it any more.
            sa.close("rekeyed", now)
        return
    if sa.state != IkeState.ESTABLISHED:
        return
    if sa.expire_at is not None and now >= sa.expire_at:
        sa.expire_at = None
        sa.queue(informational.IkeDeleteTask("expired"), now)
        return
    if sa.rekey_at is not None and now >= sa.rekey_at:
        sa.rekey_at = None
        sa.queue(ike_rekey.IkeRekeyTask(), now)
    for child in list(sa.children.values()):
        create_child.child_timers(sa, child, now)
    if sa.config.dpd_delay and now - sa.last_received >= sa.config.dpd_delay \
            and sa.outstanding is None and not sa.tasks:
        sa.queue(informational.DpdTask(), now)
    informational.keepalive(sa, now)
