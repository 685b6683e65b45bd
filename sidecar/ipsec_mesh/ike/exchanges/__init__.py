"""The IKEv2 exchanges, one module each; this module routes requests and timers to them.

Both roles implement the contract of `task.py`: an exchange we initiate is a `Task`
queued on the IKE SA; one the peer initiates is answered by that SA's `Responder` for
the exchange type (`new_responder` makes one when the SA first needs that kind).

The exchange modules never import each other: what one needs of another (IKE_AUTH
after IKE_SA_INIT, a delete after a rekey) goes through this module, which the IKE SA
reaches as `sa.exchanges` (the `sa.Exchanges` protocol).
"""

from __future__ import annotations

from .. import followup_ke, inactivity, liveness
from ..child import ChildSa, ChildState, handover_done, handover_query
from ..config import ChildConfig
from ..constants import ExchangeType, NotifyType, ProtocolId
from ..errors import IkeError
from ..events import ChildSaInstallOutbound
from ..payloads import Message, SaPayload
from ..sa import IkeSa, IkeState
from ..task import Reply, Responder, Task
from . import create_child, ike_auth, ike_init, ike_rekey, informational


def initiate(child: ChildConfig | None) -> list[Task]:
    """The tasks that set up an IKE SA (and its first CHILD_SA unless `child` is None)."""
    return [ike_init.IkeInitTask(), ike_auth.IkeAuthTask(child)]


def delete_child(child: ChildSa, reason: str) -> Task:
    return informational.DeleteChildTask(child, reason)


def delete_ike(reason: str, *, children_reason: str = "ike-closed") -> Task:
    return informational.IkeDeleteTask(reason, children_reason=children_reason)


def liveness_check() -> Task:
    """An empty INFORMATIONAL request (DPD; after a handover, our confirmation of install)."""
    return informational.DpdTask()


class CreateChildSaResponder(Responder):
    """CREATE_CHILD_SA is two exchanges: rekeying the IKE SA (an IKE proposal) or a CHILD_SA."""

    exchanges = (ExchangeType.CREATE_CHILD_SA,)

    def __init__(self) -> None:
        self.ike = ike_rekey.IkeRekeyResponder()
        self.child = create_child.ChildCreateResponder()

    def respond(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Reply | None:
        if sa.state == IkeState.CONNECTING:
            return None  # nothing but IKE_SA_INIT, IKE_INTERMEDIATE and IKE_AUTH before IKE_AUTH completes
        handover_done(sa)
        if sa.state != IkeState.ESTABLISHED:
            raise IkeError("IKE SA is being rekeyed or deleted", notify=NotifyType.TEMPORARY_FAILURE)
        sa_payload = msg.first(SaPayload)
        if sa_payload is not None and sa_payload.proposals and sa_payload.proposals[0].protocol == ProtocolId.IKE:
            return self.ike.respond(sa, msg, raw, now)
        return self.child.respond(sa, msg, raw, now)


RESPONDERS: tuple[type[Responder], ...] = (
    ike_init.IkeInitResponder,
    ike_auth.IkeAuthResponder,
    CreateChildSaResponder,
    followup_ke.FollowupKeResponder,
    informational.InformationalResponder,
)


_RESPONDER_OF: dict[int, type[Responder]] = {exchange: cls for cls in RESPONDERS for exchange in cls.exchanges}


def new_responder(exchange: int) -> Responder | None:
    """A fresh responder of the kind that answers `exchange` (for one IKE SA), None if no kind does."""
    cls = _RESPONDER_OF.get(exchange)
    return cls() if cls is not None else None


def on_timers(sa: IkeSa, now: float) -> None:
    """Rekeys, expiries, liveness checks and NAT keepalives that are due."""
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
        _child_timers(sa, child, now)
    if liveness.check_due(sa, now):
        sa.queue(informational.DpdTask(), now)
    informational.keepalive(sa, now)


def _child_timers(sa: IkeSa, child: ChildSa, now: float) -> None:
    inactivity.query_if_due(sa, child, now)
    handover_query(sa, child, now)
    if child.expire_at is not None and now >= child.expire_at:
        child.expire_at = None
        child.rekey_at = None
        if child.state in (ChildState.INSTALLED, ChildState.INBOUND_ONLY, ChildState.REKEYED):
            sa.queue(informational.DeleteChildTask(child, "expired"), now)
        return
    if child.rekey_at is not None and now >= child.rekey_at:
        child.rekey_at = None
        if child.state == ChildState.INSTALLED:
            sa.queue(create_child.ChildCreateTask(child.config, rekey_of=child), now)
    if (child.state == ChildState.INBOUND_ONLY and not child.outbound_retired
            and now - child.created_at >= sa.inbound_only_limit()):
        # The peer never deleted the SA it replaced (or, after a handover, never sent the
        # request that shows it installed its half): switch anyway, it has our inbound SA.
        child.state = ChildState.INSTALLED
        sa.emit(ChildSaInstallOutbound(child.info))
