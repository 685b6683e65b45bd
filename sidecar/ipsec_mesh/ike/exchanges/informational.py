"""INFORMATIONAL (RFC 7296 §1.4): deletes of CHILD and IKE SAs, liveness checks, error notifies."""

from __future__ import annotations

import logging

from ..child import ChildSa, ChildState, activate_successor, handover_done, moved, retire_outbound, sends
from ..constants import ExchangeType, NotifyType, ProtocolId
from ..errors import IkeError
from ..events import ChildSaEncapChanged, NegotiationFailed, UdpEncap
from ..payloads import DeletePayload, Message, NotifyPayload
from ..sa import Datagram, IkeSa, IkeState
from ..task import Reply, Responder, Task

log = logging.getLogger("ipsec_mesh.ike")

NAT_KEEPALIVE = b"\xff"  # RFC 3948 §2.3


class IkeDeleteTask(Task):
    exchange = ExchangeType.INFORMATIONAL

    def __init__(self, reason: str = "deleted", *, children_reason: str = "ike-closed"):
        self.reason = reason
        self.children_reason = children_reason

    def start(self, sa: IkeSa, now: float) -> None:
        if sa.state == IkeState.ESTABLISHED:
            sa.transition(IkeState.DELETING)
        sa.tasks.send_request(self, self.exchange, [DeletePayload(ProtocolId.IKE, [])], now)

    def on_response(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
        sa.close(self.reason, now, children_reason=self.children_reason)

    def on_timeout(self, sa: IkeSa, now: float) -> None:
        sa.close(self.reason, now, children_reason=self.children_reason)

    def on_error(self, sa: IkeSa, exc: IkeError, now: float) -> None:
        sa.close(self.reason, now, children_reason=self.children_reason)


class DeleteChildTask(Task):
    exchange = ExchangeType.INFORMATIONAL

    def __init__(self, child: ChildSa, reason: str = "deleted"):
        self.child = child
        self.reason = reason

    def obsolete(self, sa: IkeSa) -> bool:
        return sa.state not in (IkeState.ESTABLISHED,) or self.child.inbound_spi not in sa.children

    def start(self, sa: IkeSa, now: float) -> None:
        self._retire_outbound(sa)
        if self.child.state != ChildState.REKEYED:
            self.child.state = ChildState.DELETING
        spi = self.child.inbound_spi.to_bytes(4, "big")
        sa.tasks.send_request(self, self.exchange, [DeletePayload(ProtocolId.ESP, [spi])], now)

    def _retire_outbound(self, sa: IkeSa) -> None:
        """Stop sending on it before the Delete leaves: the peer drops its inbound half on
        receipt, and what we sent after the Delete would arrive after that. Only if another
        CHILD_SA for the same traffic still sends (the kernel falls back to it): retiring
        the last one would leave the traffic with no SA at all (a kernel ACQUIRE the
        existing CHILD_SAs would not answer) until the exchange completes, e.g. when the
        SA replaced after a lost rekey collision expires while the peer's successor still
        waits for its Delete. Then it keeps sending, and the peer's grace period covers it."""
        child = self.child
        others = [c for c in sa.children.values() if c is not child and sends(c)
                  and c.info.local_ts == child.info.local_ts and c.info.remote_ts == child.info.remote_ts]
        if others:
            retire_outbound(sa, self.child)

    def on_response(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
        self._done(sa)

    def on_error(self, sa: IkeSa, exc: IkeError, now: float) -> None:
        self._done(sa)

    def _done(self, sa: IkeSa) -> None:
        activate_successor(sa, self.child)  # new outbound first: never a moment without one
        sa.drop_child(self.child, self.reason)


class DpdTask(Task):
    """An empty INFORMATIONAL request: the peer must answer if it is alive (RFC 7296 §2.4)."""

    exchange = ExchangeType.INFORMATIONAL

    def obsolete(self, sa: IkeSa) -> bool:
        return sa.state != IkeState.ESTABLISHED

    def start(self, sa: IkeSa, now: float) -> None:
        sa.tasks.send_request(self, self.exchange, [], now)

    def on_response(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
        pass

    def on_timeout(self, sa: IkeSa, now: float) -> None:
        log.warning("peer %s is dead: no answer to liveness checks", sa.remote[0])
        sa.close("dead-peer", now)


class InformationalResponder(Responder):
    exchanges = (ExchangeType.INFORMATIONAL,)

    def respond(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Reply | None:
        if sa.state == IkeState.CONNECTING:
            return None  # nothing but IKE_SA_INIT, IKE_INTERMEDIATE and IKE_AUTH before IKE_AUTH completes
        handover_done(sa)  # a restarted peer's confirmation that it installed its CHILD_SA
        return _respond(sa, msg, now)


def _respond(sa: IkeSa, msg: Message, now: float) -> Reply:
    deletes = msg.all(DeletePayload)
    if any(d.protocol == ProtocolId.IKE for d in deletes):
        successor = sa.peer_rekey
        if successor is not None and successor.state == IkeState.ESTABLISHED and sa.children:
            # The peer won a rekey collision that our own (unfinished) rekey was still to settle:
            # the children live on in the successor it created.
            sa.hand_children_to(successor)
            sa.retire(successor, now)
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


def follow_nat_mapping(sa: IkeSa, new_remote: tuple[str, int], now: float) -> str:
    """The kernel decrypted ESP-in-UDP of this IKE SA's CHILD_SA from a new source (XFRM
    MAPPING): the NAT in front of the peer rebound. IKE and ESP share the peer's port
    4500 mapping, so both move: the IKE SA's remote port, then every CHILD_SA's UDP
    encapsulation, then a liveness check over the new mapping. Returns what was done.

    Only port changes of a peer known to be behind a NAT are followed (the ESP packet
    that revealed it was authenticated by the kernel). A new address is not: in
    transport mode the policies and traffic selectors name the peer's address, so
    that peer must negotiate again.
    """
    if sa.state != IkeState.ESTABLISHED:
        return "not-established"
    if not sa.nat_remote:
        log.warning("%s: ESP from %s:%d, but %s is not behind a NAT: ignored", sa.label, *new_remote, sa.remote[0])
        return "not-natted"
    if new_remote[0] != sa.remote[0]:
        log.warning("%s: the NAT moved %s to address %s: not followed (selectors name the address)",
                    sa.label, sa.remote[0], new_remote[0])
        return "address-changed"
    if new_remote[1] == sa.remote[1]:
        return "unchanged"
    log.info("%s: NAT mapping of %s moved from port %d to %d", sa.label, sa.remote[0], sa.remote[1], new_remote[1])
    sa.remote = new_remote
    for child in sa.children.values():
        if child.info.encap is not None:
            child.info = moved(child.info, encap=UdpEncap(child.info.encap.local_port, new_remote[1]))
            sa.emit(ChildSaEncapChanged(child.info))
    sa.queue(DpdTask(), now)
    return "followed"
