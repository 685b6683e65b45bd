"""CREATE_CHILD_SA for CHILD_SAs: new ones and rekeys, with RFC 7296 §2.8.1 collisions.

With PFS and ADDKE transforms selected, the CHILD_SA exists only after the RFC 9370
IKE_FOLLOWUP_KE exchanges that follow (../followup_ke.py); collisions are still decided
with the nonces of the CREATE_CHILD_SA exchanges.
"""

from __future__ import annotations

import logging
from typing import Sequence

from .. import followup_ke
from ..child import (
    ChildSa,
    ChildState,
    add_child,
    check_answered_selectors,
    child_keys,
    child_notifies,
    match_child_request,
    rekey_notify,
    transport_mode_requested,
)
from ..config import ChildConfig
from ..constants import ExchangeType, KeId, NotifyType, ProtocolId, notify_name
from ..errors import IkeError, InvalidKePayload, InvariantError, ParseError
from ..events import ChildSaFailed
from ..keyexchange import KeInitiator, respond_key_exchange, start_key_exchange
from ..payloads import (
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TrafficSelector,
    TsiPayload,
    TsrPayload,
)
from ..proposals import check_answer
from ..sa import IkeSa, IkeState
from ..task import KeTask, Reply, Responder, first_error, retry_with_wanted_group

log = logging.getLogger("ipsec_mesh.ike")

NONCE_LEN = 32
PEER_REKEY_NONCES = "peer_rekey_nonces"  # ChildSa.extra: (Ni, Nr) of the peer's rekey of it that we answered
RETRY_AFTER_TEMPORARY_FAILURE = (2.0, 6.0)  # seconds, random within


def _retry_delay(sa: IkeSa) -> float:
    low, high = RETRY_AFTER_TEMPORARY_FAILURE
    return low + (high - low) * sa.random_bytes(1)[0] / 255.0


class ChildCreateTask(KeTask):
    """Initiate a new CHILD_SA, or rekey `rekey_of`."""

    exchange = ExchangeType.CREATE_CHILD_SA

    def __init__(self, config: ChildConfig, rekey_of: ChildSa | None = None, *,
                 local_ts: Sequence[TrafficSelector] | None = None,
                 remote_ts: Sequence[TrafficSelector] | None = None):
        self.config = config
        self.rekey_of = rekey_of
        self.local_ts = tuple(local_ts) if local_ts else (rekey_of.info.local_ts if rekey_of else config.local_ts)
        self.remote_ts = tuple(remote_ts) if remote_ts else (rekey_of.info.remote_ts if rekey_of else config.remote_ts)
        self.inbound_spi: int | None = None
        self.ni = b""
        self.ke: KeInitiator | None = None
        self.group: int | None = None
        self.ke_retries = 0

    def obsolete(self, sa: IkeSa) -> bool:
        if sa.state != IkeState.ESTABLISHED:
            return True
        old = self.rekey_of
        return old is not None and (old.inbound_spi not in sa.children or old.state != ChildState.INSTALLED)

    def start(self, sa: IkeSa, now: float) -> None:
        proposals = self.config.esp_proposals
        if self.group is None:
            self.group = next((k for p in proposals for k in p.ke if k != KeId.NONE), KeId.NONE)
        if self.inbound_spi is None:
            self.inbound_spi = sa.services.allocate_child_spi()
        self.ni = sa.random_bytes(NONCE_LEN)
        spi = self.inbound_spi.to_bytes(4, "big")
        payloads: list[Payload] = []
        if self.rekey_of is not None:
            self.rekey_of.state = ChildState.REKEYING
            payloads.append(rekey_notify(self.rekey_of.inbound_spi))
        payloads += [SaPayload([p.to_payload(i + 1, spi) for i, p in enumerate(proposals)]), NoncePayload(self.ni)]
        if self.group != KeId.NONE:
            self.ke = start_key_exchange(self.group)
            payloads.append(KePayload(self.group, self.ke.public_data))
        payloads += [TsiPayload(list(self.local_ts)), TsrPayload(list(self.remote_ts))]
        payloads += child_notifies(self.config)
        sa.tasks.send_request(self, self.exchange, payloads, now)

    def on_response(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
        error = first_error(msg)
        if error is not None:
            self._refused(sa, error, now)
            return
        sa_payload, nonce = msg.first(SaPayload), msg.first(NoncePayload)
        tsi, tsr = msg.first(TsiPayload), msg.first(TsrPayload)
        try:
            if sa_payload is None or nonce is None or tsi is None or tsr is None or len(sa_payload.proposals) != 1:
                raise ParseError("CREATE_CHILD_SA response lacks SA, Nonce, TSi or TSr")
            selected = check_answer(sa_payload.proposals[0], list(self.config.esp_proposals))
            if len(selected.spi) != 4:
                raise ParseError("ESP SPI must be 4 bytes")
            if selected.ke != self.group:
                raise IkeError("responder chose another key exchange than the one we sent")
            shared: tuple[bytes, ...] = ()
            if selected.ke != KeId.NONE:
                ke = msg.first(KePayload)
                if ke is None or ke.group != selected.ke:
                    raise ParseError("CREATE_CHILD_SA response lacks the KE payload")
                if self.ke is None:
                    raise InvariantError("start() made our key exchange for the group sent")
                shared = (self.ke.finish(ke.data),)
            local_ts, remote_ts = check_answered_selectors(sa, tsi, tsr, self.local_ts, self.remote_ts,
                                                           self.config.mode)
            if (self.config.mode == "transport") != transport_mode_requested(msg):
                raise IkeError(f"peer did not agree to {self.config.mode} mode")
            link = followup_ke.link_of(msg) if selected.additional_kes else b""
            if link and not shared:
                raise IkeError("additional key exchanges without a KE payload")
        except IkeError as exc:
            self._failed(sa, str(exc), exc.notify, now)
            return
        self.answer = (selected, nonce.data, local_ts, remote_ts)
        if link:
            sa.tasks.queue_first(followup_ke.FollowupKeTask(self, selected.additional_kes, shared, link))
            return
        self.followups_done(sa, shared, now)

    def followups_done(self, sa: IkeSa, secrets: tuple[bytes, ...], now: float) -> None:
        """Every key exchange is done: derive the keys and install the CHILD_SA."""
        selected, nr, local_ts, remote_ts = self.answer
        keys = child_keys(sa, self.ni, nr, selected, True, secrets)
        if self.inbound_spi is None:
            raise InvariantError("start() allocated it; only failures release it")
        old = self.rekey_of
        child = add_child(sa, self.config, selected, keys, self.inbound_spi, int.from_bytes(selected.spi, "big"),
                          local_ts, remote_ts, (self.ni, nr), True, now,
                          replaces=old.inbound_spi if old else None)
        if old is not None:
            self._finish_rekey(sa, old, child, now)

    def followup_failed(self, sa: IkeSa, reason: str, notify: int | None, now: float) -> None:
        self._failed(sa, reason, notify, now)

    def _finish_rekey(self, sa: IkeSa, old: ChildSa, ours: ChildSa, now: float) -> None:
        theirs = sa.children.get(old.peer_rekey) if old.peer_rekey is not None else None
        their_nonces = old.extra.get(PEER_REKEY_NONCES)
        if their_nonces is not None and min(ours.nonces) < min(their_nonces):
            # Collision, and our exchange had the lowest nonce: ours is redundant and we close
            # it; the peer deletes the old SA, which then hands the outbound to theirs (which
            # may still be waiting for its follow-up key exchanges).
            log.info("CHILD_SA rekey collision with %s: closing our redundant %08x", sa.remote[0], ours.inbound_spi)
            old.state = ChildState.REKEYED
            old.replaced_by = theirs.inbound_spi if theirs is not None else None
            ours.state = ChildState.REKEYED
            sa.queue(sa.exchanges.delete_child(ours, "rekeyed"), now)
            return
        if their_nonces is not None:
            # Collision won: the peer closes its redundant SA; ours replaces the old one.
            log.info("CHILD_SA rekey collision with %s: keeping ours %08x", sa.remote[0], ours.inbound_spi)
            old.peer_rekey = None
        old.state = ChildState.REKEYED
        old.replaced_by = ours.inbound_spi
        sa.queue(sa.exchanges.delete_child(old, "rekeyed"), now)

    def _refused(self, sa: IkeSa, notify: NotifyPayload, now: float) -> None:
        if retry_with_wanted_group(self, sa, notify, self.config.esp_proposals):
            return
        old = self.rekey_of
        if notify.type == NotifyType.TEMPORARY_FAILURE and old is not None:
            # The peer is busy (often: it is rekeying this SA itself); try again shortly.
            self._release(sa)
            if old.state == ChildState.REKEYING:
                old.state = ChildState.INSTALLED
                old.rekey_at = now + _retry_delay(sa)
            return
        if notify.type == NotifyType.CHILD_SA_NOT_FOUND and old is not None:
            # The peer no longer has the SA we wanted to rekey: replace it with a fresh one.
            self._release(sa)
            sa.drop_child(old, "deleted-by-peer")
            sa.queue(ChildCreateTask(self.config, local_ts=old.info.local_ts, remote_ts=old.info.remote_ts), now)
            return
        self._failed(sa, f"peer refused CREATE_CHILD_SA: {notify_name(notify.type)}", notify.type, now)

    def _failed(self, sa: IkeSa, reason: str, notify: int | None, now: float) -> None:
        self._release(sa)
        log.warning("CHILD_SA %s with %s failed: %s", self.config.name, sa.remote[0], reason)
        sa.emit(ChildSaFailed(sa.label, self.config.name, reason, notify))
        old = self.rekey_of
        if old is not None and old.state == ChildState.REKEYING:
            old.state = ChildState.INSTALLED
            old.rekey_at = now + _retry_delay(sa) * 5

    def _release(self, sa: IkeSa) -> None:
        if self.inbound_spi is not None:
            sa.services.release_child_spi(self.inbound_spi)
            self.inbound_spi = None

    def on_error(self, sa: IkeSa, exc: IkeError, now: float) -> None:
        self._failed(sa, str(exc), exc.notify, now)


class ChildCreateResponder(Responder):
    """CREATE_CHILD_SA for a CHILD_SA (the exchanges package routes IKE SA rekeys elsewhere)."""

    exchanges = (ExchangeType.CREATE_CHILD_SA,)

    def respond(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Reply | None:
        return _respond(sa, msg, now)


def _respond(sa: IkeSa, msg: Message, now: float) -> Reply:
    nonce = msg.first(NoncePayload)
    if nonce is None:
        raise ParseError("CREATE_CHILD_SA request lacks a Nonce")
    old = None
    rekey = msg.notify(NotifyType.REKEY_SA)
    if rekey is not None:
        if rekey.protocol != ProtocolId.ESP or len(rekey.spi) != 4:
            raise IkeError("REKEY_SA must name a 4-byte ESP SPI", notify=NotifyType.INVALID_SYNTAX)
        old = sa.find_child_by_outbound(int.from_bytes(rekey.spi, "big"))
        if old is None:
            raise IkeError(f"no CHILD_SA with SPI {rekey.spi.hex()} to rekey", notify=NotifyType.CHILD_SA_NOT_FOUND)
        if old.state not in (ChildState.INSTALLED, ChildState.REKEYING):
            raise IkeError("CHILD_SA is already being replaced or deleted", notify=NotifyType.TEMPORARY_FAILURE)
    configs = (old.config,) if old is not None else sa.config.children
    try:
        request = match_child_request(msg, configs, with_ke=True, nat=_nat_for_request(sa))
    except IkeError as exc:
        sa.emit(ChildSaFailed(sa.label, old.name if old else "", str(exc), exc.notify))
        raise
    selected = request.selected
    shared: tuple[bytes, ...] = ()
    our_ke = None
    if selected.ke != KeId.NONE:
        ke = msg.first(KePayload)
        if ke is None or ke.group != selected.ke:
            raise InvalidKePayload(f"CREATE_CHILD_SA needs KE for group {selected.ke}", selected.ke)
        our_data, secret = respond_key_exchange(selected.ke, ke.data)
        our_ke = KePayload(selected.ke, our_data)
        shared = (secret,)
    elif selected.additional_kes:
        raise IkeError("additional key exchanges need a KE in CREATE_CHILD_SA", notify=NotifyType.NO_PROPOSAL_CHOSEN)
    nr = sa.random_bytes(NONCE_LEN)
    inbound = sa.services.allocate_child_spi()
    nonces = (nonce.data, nr)
    if old is not None:
        old.extra[PEER_REKEY_NONCES] = nonces  # a collision resolves even while follow-ups are pending

    def finish(secrets: tuple[bytes, ...], now: float) -> None:
        keys = child_keys(sa, nonce.data, nr, selected, False, secrets)
        # A rekey we answer: receive on the new SA at once, but keep sending on the old one until
        # the initiator deletes it (RFC 7296 §2.8): by then it surely has the new inbound SA.
        child = add_child(sa, request.config, selected, keys, inbound, int.from_bytes(selected.spi, "big"),
                          request.ts_r, request.ts_i, nonces, False, now,
                          state=ChildState.INBOUND_ONLY if old else ChildState.INSTALLED,
                          replaces=old.inbound_spi if old else None)
        if old is not None:
            old.peer_rekey = child.inbound_spi

    def abandon(now: float) -> None:
        sa.services.release_child_spi(inbound)
        if old is not None and old.extra.get(PEER_REKEY_NONCES) == nonces:
            del old.extra[PEER_REKEY_NONCES]

    payloads: list[Payload] = [SaPayload([selected.to_payload(inbound.to_bytes(4, "big"))]), NoncePayload(nr)]
    if our_ke is not None:
        payloads.append(our_ke)
    payloads += [TsiPayload(request.ts_i), TsrPayload(request.ts_r)]
    payloads += child_notifies(request.config)
    if selected.additional_kes:
        payloads.append(followup_ke.hold(sa, selected.additional_kes, shared[0], finish, abandon, now))
    else:
        finish(shared, now)
    return Reply(payloads)


def _nat_for_request(sa: IkeSa) -> tuple[str | None, str | None]:
    # In CREATE_CHILD_SA the peer (exchange initiator) may be either IKE role.
    return (sa.remote[0] if sa.nat_remote else None, sa.local[0] if sa.nat_local else None)
