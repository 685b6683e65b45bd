"""CREATE_CHILD_SA rekeying the IKE SA itself (RFC 7296 §1.3.2, §2.18), with collisions (§2.8.2).

The rekey proposals keep their ADDKE transforms: when the responder selects some, the
initiator runs one IKE_FOLLOWUP_KE per additional key exchange (RFC 9370 §2.2.3, see
../followup_ke.py) and the new IKE SA exists, on both ends, only once they are all done.
Collisions are decided with the nonces of the CREATE_CHILD_SA exchanges, which both
ends know as soon as those are answered, even while follow-ups are still under way.
"""

from __future__ import annotations

import logging

from .. import followup_ke
from ..child import negotiated
from ..constants import ExchangeType, NotifyType
from ..crypto import aead_keymat_len, prf_for
from ..errors import IkeError, InvalidKePayload, InvariantError, ParseError
from ..events import IkeSaEstablished
from ..keyexchange import KeInitiator, respond_key_exchange, start_key_exchange
from ..keymat import derive_ike_keys, rekey_skeyseed
from ..payloads import KePayload, Message, NoncePayload, NotifyPayload, Payload, SaPayload
from ..proposals import ProposalSpec, Selected, check_answer, select
from ..sa import OLD_SA_GRACE, IkeSa, IkeState
from ..task import KeTask, Reply, Responder, first_error, retry_with_wanted_group

log = logging.getLogger("ipsec_mesh.ike")

NONCE_LEN = 32


def _rekey_proposals(sa: IkeSa) -> list[ProposalSpec]:
    return list(dict.fromkeys(sa.config.ike_proposals))


def _successor(old: IkeSa, *, initiator: bool, spi_i: bytes, spi_r: bytes, selected: Selected, secrets: tuple[bytes, ...],
               ni: bytes, nr: bytes, now: float) -> IkeSa:
    """The new IKE SA, from SK(0) of the CREATE_CHILD_SA and SK(1)..SK(n) of its follow-ups."""
    new = IkeSa(old.services, old.config, initiator=initiator, local=old.local, remote=old.remote,
                spi_i=spi_i, spi_r=spi_r, now=now)
    new.selected = selected
    old_prf, old_keys, _ = negotiated(old)
    seed = rekey_skeyseed(old_prf, old_keys.sk_d, secrets[0], ni, nr, secrets[1:])
    if selected.prf is None:
        raise InvariantError("an IKE proposal always selects a PRF")
    new.prf = prf_for(selected.prf)
    new.ni, new.nr = ni, nr
    new.install_keys(derive_ike_keys(new.prf, seed, ni, nr, spi_i, spi_r,
                                     aead_keymat_len(selected.encr, selected.key_bits)))
    for attr in ("peer_fragmentation", "peer_hash_algs", "peer_childless", "nat_local", "nat_remote",
                 "local_id", "remote_id", "peer_chain", "last_received", "keepalive_at"):
        setattr(new, attr, getattr(old, attr))
    new.transition(IkeState.ESTABLISHED)
    new.established_at = now
    new.rekeyed_from = old.label
    new.rekey_nonces = (ni, nr)
    new.schedule_rekey(now)
    old.services.adopt(new)
    old.emit(IkeSaEstablished(new.label, new.local[0], new.remote[0], str(new.local_id), str(new.remote_id),
                              selected.describe(), initiator, new.nat_local, new.nat_remote,
                              rekeyed_from=old.label))
    return new


def _own_rekey_running(sa: IkeSa) -> bool:
    """Our rekey of this IKE SA is in flight (its CREATE_CHILD_SA or one of its follow-ups)."""
    task = sa.tasks.outstanding.task if sa.tasks.outstanding is not None else None
    return isinstance(task, IkeRekeyTask) or (isinstance(task, followup_ke.FollowupKeTask)
                                              and isinstance(task.owner, IkeRekeyTask))


def _adopt_peer_rekey(sa: IkeSa, new: IkeSa, now: float) -> None:
    """The peer's rekey of `sa` is complete (we answered it)."""
    sa.peer_rekey = new
    if sa.state != IkeState.ESTABLISHED or _own_rekey_running(sa):
        # Our own rekey settles the collision when it completes, or already has (§2.8.2).
        return
    sa.hand_children_to(new)
    sa.retire(new, now)


class IkeRekeyTask(KeTask):
    exchange = ExchangeType.CREATE_CHILD_SA

    def __init__(self) -> None:
        self.spi = b""
        self.ni = b""
        self.nr = b""
        self.ke: KeInitiator | None = None
        self.group: int | None = None
        self.ke_retries = 0
        self.selected: Selected | None = None

    def obsolete(self, sa: IkeSa) -> bool:
        return sa.state != IkeState.ESTABLISHED

    def start(self, sa: IkeSa, now: float) -> None:
        self.proposals = _rekey_proposals(sa)
        if self.group is None:
            _, _, current = negotiated(sa)
            self.group = current.ke if any(current.ke in p.ke for p in self.proposals) \
                else self.proposals[0].ke[0]
        if not self.spi:
            self.spi = sa.services.allocate_ike_spi()
        self.ni = sa.random_bytes(NONCE_LEN)
        self.ke = start_key_exchange(self.group)
        payloads: list[Payload] = [
            SaPayload([p.to_payload(i + 1, self.spi) for i, p in enumerate(self.proposals)]),
            NoncePayload(self.ni), KePayload(self.group, self.ke.public_data)]
        sa.tasks.send_request(self, self.exchange, payloads, now)

    def on_response(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
        error = first_error(msg)
        if error is not None:
            self._refused(sa, error, now)
            return
        sa_payload, nonce, ke = msg.first(SaPayload), msg.first(NoncePayload), msg.first(KePayload)
        if sa_payload is None or nonce is None or ke is None or len(sa_payload.proposals) != 1:
            raise ParseError("IKE rekey response lacks SA, Nonce or KE")
        selected = check_answer(sa_payload.proposals[0], self.proposals)
        if len(selected.spi) != 8 or selected.ke != self.group or ke.group != self.group:
            raise ParseError("IKE rekey response has a bad SPI or key exchange")
        self.selected, self.nr = selected, nonce.data
        if self.ke is None:
            raise InvariantError("start() made our key exchange before the request went out")
        shared = self.ke.finish(ke.data)
        if selected.additional_kes:
            link = followup_ke.link_of(msg)
            sa.tasks.queue_first(followup_ke.FollowupKeTask(self, selected.additional_kes, (shared,), link))
            return
        self.followups_done(sa, (shared,), now)

    def followups_done(self, sa: IkeSa, secrets: tuple[bytes, ...], now: float) -> None:
        """Every key exchange is done: the new IKE SA exists; settle a collision (§2.8.2)."""
        if self.selected is None:
            raise InvariantError("on_response() made the selection")
        new = _successor(sa, initiator=True, spi_i=self.spi, spi_r=self.selected.spi, selected=self.selected,
                         secrets=secrets, ni=self.ni, nr=self.nr, now=now)
        theirs = sa.peer_rekey
        their_nonces = sa.peer_rekey_nonces
        if their_nonces is not None and min(self.ni, self.nr) < min(their_nonces):
            # Collision lost (lowest nonce is ours): close our redundant SA; the peer deletes the old.
            log.info("IKE rekey collision with %s: closing our redundant %s", sa.remote[0], new.label)
            new.queue(sa.exchanges.delete_ike("superseded", children_reason="rekeyed"), now)
            if theirs is not None and theirs.state == IkeState.ESTABLISHED:
                sa.hand_children_to(theirs)
                sa.retire(theirs, now)
            else:
                # Their follow-ups are still running: the children move once theirs is complete.
                sa.rekey_at = now + OLD_SA_GRACE  # in case the peer never completes it
            return
        if theirs is not None:
            # Collision won: the children move to our successor; the peer closes its own.
            theirs.hand_children_to(new)
        sa.hand_children_to(new)
        sa.retire(new, now)
        sa.tasks.clear()
        sa.queue(sa.exchanges.delete_ike("rekeyed"), now)

    def followup_failed(self, sa: IkeSa, reason: str, notify: int | None, now: float) -> None:
        log.warning("IKE rekey with %s failed in its additional key exchanges: %s", sa.remote[0], reason)
        sa.rekey_at = now + 30.0

    def _refused(self, sa: IkeSa, notify: NotifyPayload, now: float) -> None:
        if retry_with_wanted_group(self, sa, notify, self.proposals):
            return
        # TEMPORARY_FAILURE (peer busy or rekeying itself) or a refusal: try again later;
        # the SA lives on until its hard lifetime.
        delay = 2.0 + 8.0 * sa.random_bytes(1)[0] / 255.0
        if notify.type != NotifyType.TEMPORARY_FAILURE:
            log.warning("IKE rekey with %s refused: %s", sa.remote[0], notify.type)
            delay *= 10
        sa.rekey_at = now + delay

    def on_error(self, sa: IkeSa, exc: IkeError, now: float) -> None:
        log.warning("IKE rekey with %s failed: %s", sa.remote[0], exc)
        sa.rekey_at = now + 30.0


class IkeRekeyResponder(Responder):
    """CREATE_CHILD_SA rekeying the IKE SA (the exchanges package routes it here)."""

    exchanges = (ExchangeType.CREATE_CHILD_SA,)

    def respond(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Reply | None:
        return _respond(sa, msg, now)


def _respond(sa: IkeSa, msg: Message, now: float) -> Reply:
    own_rekey = _own_rekey_running(sa)
    if sa.tasks.outstanding is not None and not own_rekey:
        raise IkeError("an exchange is under way; rekey the IKE SA later", notify=NotifyType.TEMPORARY_FAILURE)
    sa_payload, nonce, ke = msg.first(SaPayload), msg.first(NoncePayload), msg.first(KePayload)
    if sa_payload is None or nonce is None or ke is None:
        raise ParseError("IKE rekey request lacks SA, Nonce or KE")
    selected = select(sa_payload.proposals, _rekey_proposals(sa))
    if len(selected.spi) != 8:
        raise IkeError("IKE rekey SPI must be 8 bytes", notify=NotifyType.INVALID_SYNTAX)
    if ke.group != selected.ke:
        raise InvalidKePayload(f"IKE rekey needs KE for group {selected.ke}", selected.ke)
    our_data, shared = respond_key_exchange(selected.ke, ke.data)
    nr = sa.random_bytes(NONCE_LEN)
    spi = sa.services.allocate_ike_spi()
    nonces = (nonce.data, nr)
    # Known now, so that a collision resolves even while follow-ups are pending.
    sa.peer_rekey_nonces = nonces

    def finish(secrets: tuple[bytes, ...], now: float) -> None:
        new = _successor(sa, initiator=False, spi_i=selected.spi, spi_r=spi, selected=selected,
                         secrets=secrets, ni=nonce.data, nr=nr, now=now)
        _adopt_peer_rekey(sa, new, now)

    def abandon(now: float) -> None:
        if sa.peer_rekey_nonces == nonces:
            sa.peer_rekey_nonces = None

    payloads: list[Payload] = [SaPayload([selected.to_payload(spi)]), NoncePayload(nr), KePayload(selected.ke, our_data)]
    if selected.additional_kes:
        payloads.append(followup_ke.hold(sa, selected.additional_kes, shared, finish, abandon, now))
    else:
        finish((shared,), now)
    return Reply(payloads)


__all__ = ["IkeRekeyTask", "IkeRekeyResponder"]
