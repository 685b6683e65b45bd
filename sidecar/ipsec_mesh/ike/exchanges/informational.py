"""INFORMATIONAL (RFC 7296 §1.4): deletes of CHILD and IKE SAs, liveness checks, error notifies."""

from __future__ import annotations

import logging

from ..child import ChildSa, ChildState
from ..constants import ExchangeType, NotifyType, ProtocolId
from ..events import ChildSaOutboundRetired, NegotiationFailed
from ..payloads import DeletePayload, Message, NotifyPayload
from ..sa import Datagram, IkeSa, IkeState, Reply
from .create_child import activate_successor

log = logging.getLogger("ipsec_mesh.ike")

NAT_KEEPALIVE = b"\xff"  # RFC 3948 §2.3


class IkeDeleteTask:
    exchange = ExchangeType.INFORMATIONAL

    def __init__(self, reason: str = "deleted", *, children_reason: str = "ike-closed"):
        self.reason = reason
        self.children_reason = children_reason

    def start(self, sa: IkeSa, now: float) -> None:
        if sa.state == IkeState.ESTABLISHED:
            sa.state = IkeState.DELETING
        sa.send_request(self, self.exchange, [DeletePayload(ProtocolId.IKE, [])], now)

    def on_response(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
        sa.close(self.reason, now, children_reason=self.children_reason)

    def on_timeout(self, sa: IkeSa, now: float) -> None:
        sa.close(self.reason, now, children_reason=self.children_reason)

    on_error = on_response


class DeleteChildTask:
    exchange = ExchangeType.INFORMATIONAL

    def __init__(self, child: ChildSa, reason: str = "deleted"):
        self.child = child
        self.reason = reason

    def obsolete(self, sa: IkeSa) -> bool:
        return sa.state not in (IkeState.ESTABLISHED,) or self.child.inbound_spi not in sa.children

    def start(self, sa: IkeSa, now: float) -> None:
        if self.child.state != ChildState.REKEYED:
            self.child.state = ChildState.DELETING
        # Stop sending on it before the Delete leaves: the peer drops its inbound half on
        # receipt, and our packets sent after the Delete would arrive after that.
        info = self.child.info
        sa.emit(ChildSaOutboundRetired(sa.label, info.name, info.inbound_spi, info.outbound_spi,
                                       info.local_addr, info.remote_addr))
        spi = self.child.inbound_spi.to_bytes(4, "big")
        sa.send_request(self, self.exchange, [DeletePayload(ProtocolId.ESP, [spi])], now)

    def on_response(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
        activate_successor(sa, self.child)  # new outbound first: never a moment without one
        sa.drop_child(self.child, self.reason)

    def on_error(self, sa: IkeSa, exc, now: float) -> None:
        self.on_response(sa, None, b"", now)


class DpdTask:
    """An empty INFORMATIONAL request: the peer must answer if it is alive (RFC 7296 §2.4)."""

    exchange = ExchangeType.INFORMATIONAL

    def obsolete(self, sa: IkeSa) -> bool:
        return sa.state != IkeState.ESTABLISHED

    def start(self, sa: IkeSa, now: float) -> None:
        sa.send_request(self, self.exchange, [], now)

    def on_response(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
        pass

    def on_timeout(self, sa: IkeSa, now: float) -> None:
        log.warning("peer %s is dead: no answer to liveness checks", sa.remote[0])
        sa.close("dead-peer", now)


class NotifyTask:
    """Send one error notify and forget the SA without waiting (e.g. AUTHENTICATION_FAILED)."""

    exchange = ExchangeType.INFORMATIONAL

    def __init__(self, notify: int, then_close: str):
        self.notify = notify
        self.then_close = then_close

    def start(self, sa: IkeSa, now: float) -> None:
        sa.send_request(self, self.exchange, [NotifyPayload(self.notify)], now)
        sa.close(self.then_close, now)

    def on_response(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
        pass


def respond(sa: IkeSa, msg: Message, now: float) -> Reply:
    deletes = msg.all(DeletePayload)
    if any(d.protocol == ProtocolId.IKE for d in deletes):
        successor = sa.peer_rekey
        if successor is not None and successor.state == IkeState.ESTABLISHED and sa.children:
            # The peer won a rekey collision that our own (unfinished) rekey was still to settle:
            # the children live on in the successor it created.
            from .ike_rekey import move_children, retire

            move_children(sa, successor)
            retire(sa, successor, now)
        reason = "rekeyed" if sa.state == IkeState.REKEYED else "deleted-by-peer"
        log.info("IKE SA %s deleted by %s", sa.label, sa.remote[0])
        return Reply([], close=reason)
    for n in msg.all(NotifyPayload):
        if n.type == NotifyType.AUTHENTICATION_FAILED and sa.state == IkeState.ESTABLISHED and not sa.initiator:
            # The initiator did not accept our AUTH (RFC 7296 §2.21.2).
            sa.emit(NegotiationFailed(sa.remote[0], "peer refused our authentication",
                                      NotifyType.AUTHENTICATION_FAILED, sa.label))
            return Reply([], close="auth-failed")
    ours: list[bytes] = []
    for d in deletes:
        if d.protocol != ProtocolId.ESP:
            continue
        for spi in d.spis:
            child = sa.find_child_by_outbound(int.from_bytes(spi, "big"))
            if child is None:
                continue
            if child.state != ChildState.DELETING:
                # RFC 7296 §1.4.1: when both sides delete at once, neither lists it in the response.
                ours.append(child.inbound_spi.to_bytes(4, "big"))
            replaced = child.state == ChildState.REKEYED or child.replaced_by or child.peer_rekey in sa.children
            reason = "rekeyed" if replaced else "deleted-by-peer"
            activate_successor(sa, child)  # new outbound first: never a moment without one
            sa.drop_child(child, reason)
    return Reply([DeletePayload(ProtocolId.ESP, ours)] if ours else [])


def keepalive(sa: IkeSa, now: float) -> None:
    """NAT keepalives from the side behind the NAT keep the mapping open (RFC 3948 §2.3)."""
    interval = sa.config.keepalive_interval
    if not (sa.nat_local and interval):
        sa.keepalive_at = None
        return
    if sa.keepalive_at is None:
        sa.keepalive_at = now + interval
    elif now >= sa.keepalive_at:
        if now - sa.last_sent >= interval:
            sa.outbox.append(Datagram(NAT_KEEPALIVE, sa.local, sa.remote))
        sa.keepalive_at = now + interval
