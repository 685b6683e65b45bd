"""IKE_AUTH (RFC 7296 §1.2, §2.15): identities, certificates, AUTH, and the first CHILD_SA."""

from __future__ import annotations

import logging

from ..auth import (
    CertCredential,
    make_auth,
    signed_octets,
    verify_auth,
)
from ..certs import certificate_payloads, identity_matches_certificate, parse_cert_payloads
from ..child import (
    HANDOVER,
    HANDOVER_QUERY,
    ChildSa,
    ChildState,
    add_child,
    check_answered_selectors,
    child_keys,
    child_notifies,
    match_child_request,
    negotiated,
    transport_mode_requested,
)
from ..config import ChildConfig
from ..constants import AuthMethod, ExchangeType, NotifyType, notify_name
from ..errors import AuthenticationFailed, CertificateError, IkeError, InvariantError, ParseError
from ..events import ChildSaFailed, IkeSaEstablished, NegotiationFailed
from ..identity import Identity
from ..keymat import intermediate_auth
from ..payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    IdiPayload,
    IdPayload,
    IdrPayload,
    Message,
    NotifyPayload,
    Payload,
    SaPayload,
    TsiPayload,
    TsrPayload,
)
from ..proposals import ProposalSpec, check_answer
from ..sa import IkeSa, IkeState
from ..task import Reply, Responder, Task

log = logging.getLogger("ipsec_mesh.ike")


def nat_addresses(sa: IkeSa) -> tuple[str | None, str | None]:
    """(initiator's, responder's) real addresses where that side of the exchange is behind a NAT."""
    peer = sa.remote[0] if sa.nat_remote else None
    ours = sa.local[0] if sa.nat_local else None
    return (peer, ours)  # as responder: the initiator is the peer


def intermediate_auth_data(sa: IkeSa, auth_mid: int) -> bytes:
    """What AUTH covers of the IKE_INTERMEDIATE exchanges, or nothing without them."""
    if not sa.intermediate_done:
        return b""
    return intermediate_auth(sa.int_auth_i, sa.int_auth_r, auth_mid)


def _our_auth_payloads(sa: IkeSa, id_payload: IdiPayload | IdrPayload, peer_nonce: bytes, init_message: bytes,
                       mid: int) -> tuple[list[Payload], AuthPayload]:
    cred = sa.config.credential
    prf, _, _ = negotiated(sa)
    octets = signed_octets(init_message, peer_nonce, prf, sa.sk_p_own, id_payload,
                           intermediate_auth_data(sa, mid))
    payloads: list[Payload] = [id_payload]
    if isinstance(cred, CertCredential):
        payloads += certificate_payloads(cred.chain)
    return payloads, make_auth(cred, octets, prf, sa.peer_hash_algs)


def _authenticate_peer(sa: IkeSa, msg: Message, id_payload: IdPayload | None, init_message: bytes,
                       our_nonce: bytes, now: float) -> Identity:
    """Check the peer's identity, certificate chain and AUTH; raise AuthenticationFailed."""
    auth = msg.first(AuthPayload)
    if id_payload is None or auth is None:
        raise AuthenticationFailed("IKE_AUTH lacks the peer's ID or AUTH payload")
    try:
        identity = Identity.from_payload(id_payload)
    except ParseError as exc:
        raise AuthenticationFailed(f"peer sent an unusable identity: {exc}") from None
    cfg = sa.config
    if cfg.remote_ids and not any(identity.matches(p) for p in cfg.remote_ids):
        raise AuthenticationFailed(f"peer identity {identity} is not one we accept from {sa.remote[0]}")
    prf, _, _ = negotiated(sa)
    octets = signed_octets(init_message, our_nonce, prf, sa.sk_p_peer, id_payload,
                           intermediate_auth_data(sa, msg.message_id))
    if auth.method == AuthMethod.SHARED_KEY_MIC:
        if not cfg.psks:
            raise AuthenticationFailed(f"peer {identity} used a pre-shared key; we expect certificates")
        verify_auth(auth, octets, prf, psks=cfg.psks)
        return identity
    if cfg.trust is None:
        raise AuthenticationFailed(f"peer {identity} used a signature; we expect a pre-shared key")
    chain = parse_cert_payloads(msg.all(CertPayload))
    if not chain:
        raise CertificateError(f"peer {identity} sent no certificate")
    leaf = cfg.trust.validate(chain, sa.services.wall_time())
    if not identity_matches_certificate(identity, leaf):
        raise CertificateError(f"peer identity {identity} does not match its certificate")
    verify_auth(auth, octets, prf, peer_public_key=leaf.public_key())
    sa.peer_chain = chain
    return identity


def _establish(sa: IkeSa, identity: Identity, now: float, *, initial_contact: bool = False) -> IkeSaEstablished:
    """Mark the IKE SA established; the caller logs it (with its first CHILD_SA, if any).

    `initial_contact` (initiator: the responder restarted, and answers with INITIAL_CONTACT):
    its stale IKE SAs go first, so the duplicate-SA rule never keeps one of them over this."""
    sa.remote_id = identity
    sa.transition(IkeState.ESTABLISHED)
    sa.established_at = now
    sa.schedule_rekey(now)
    if sa.nat_local and sa.config.keepalive_interval:
        sa.keepalive_at = now + sa.config.keepalive_interval
    event = IkeSaEstablished(sa.label, sa.local[0], sa.remote[0], str(sa.local_id), str(identity),
                             negotiated(sa)[2].describe(), sa.initiator, sa.nat_local, sa.nat_remote)
    sa.emit(event)
    if initial_contact:
        sa.services.initial_contact(sa, now)
    sa.services.established(sa, now)
    return event


def _log_established(event: IkeSaEstablished, child: ChildSa | None) -> None:
    """One info line per IKE SA, naming the CHILD_SA negotiated with it (if there is one)."""
    role = "initiator" if event.initiator else "responder"
    nat = ", NAT-T" if event.nat_local or event.nat_remote else ""
    if child is None:
        log.info("IKE SA %s established with %s (%s) as %s, %s%s", event.ike_sa, event.remote_id,
                 event.remote_addr, role, event.algorithm, nat)
        return
    info = child.info
    log.info("IKE SA %s established with %s (%s) as %s, %s%s; CHILD_SA %s %08x_i %08x_o: %s", event.ike_sa,
             event.remote_id, event.remote_addr, role, event.algorithm, nat, info.name, info.inbound_spi,
             info.outbound_spi, info.algorithm)


class IkeAuthTask(Task):
    exchange = ExchangeType.IKE_AUTH

    def __init__(self, child: ChildConfig | None = None) -> None:
        self.child = child
        self.inbound_spi: int | None = None
        self.child_proposals: tuple[ProposalSpec, ...] = ()
        self.initial_contact = False

    def start(self, sa: IkeSa, now: float) -> None:
        cfg = sa.config
        id_payload = sa.local_id.to_payload(initiator=True)
        payloads, auth = _our_auth_payloads(sa, id_payload, sa.nr, sa.init_request, sa.tasks.next_mid)
        # Not while we have another IKE SA with the peer: it drops those that were up before
        # this one began on its clock, and a retransmitted IKE_SA_INIT begins late there.
        self.initial_contact = cfg.initial_contact and not sa.services.has_other_sa(sa)
        if self.initial_contact:
            payloads.insert(0, NotifyPayload(NotifyType.INITIAL_CONTACT))
            if sa.confirm_install:
                payloads.insert(1, NotifyPayload(NotifyType.IPSEC_MESH_KEPT_SAS))
        if cfg.trust is not None and cfg.send_certreq:
            payloads.append(CertReqPayload(4, cfg.trust.certreq_data()))
        payloads.append(auth)
        child = self.child
        if child is not None and not (cfg.childless == "force" and sa.peer_childless):
            self.inbound_spi = sa.services.allocate_child_spi()
            self.child_proposals = ProposalSpec.all_without_ke(child.esp_proposals)
            spi = self.inbound_spi.to_bytes(4, "big")
            payloads.append(SaPayload([p.to_payload(i + 1, spi) for i, p in enumerate(self.child_proposals)]))
            payloads += [TsiPayload(list(child.local_ts)), TsrPayload(list(child.remote_ts))]
            payloads += child_notifies(child)
        sa.tasks.send_request(self, self.exchange, payloads, now)

    def on_response(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
        for n in msg.all(NotifyPayload):
            if n.type == NotifyType.AUTHENTICATION_FAILED or (n.is_error and msg.first(AuthPayload) is None):
                self._release(sa)
                reason = f"peer refused IKE_AUTH: {notify_name(n.type)}"
                log.warning("IKE SA with %s: %s", sa.remote[0], reason)
                sa.emit(NegotiationFailed(sa.remote[0], reason, n.type, sa.label))
                sa.close("auth-failed", now)
                return
        try:
            identity = _authenticate_peer(sa, msg, msg.first(IdrPayload), sa.init_response, sa.ni, now)
        except (AuthenticationFailed, ParseError) as exc:
            self._release(sa)
            log.warning("IKE SA with %s: authentication of the peer failed: %s", sa.remote[0], exc)
            sa.emit(NegotiationFailed(sa.remote[0], f"peer authentication failed: {exc}",
                                      NotifyType.AUTHENTICATION_FAILED, sa.label))
            # RFC 7296 §2.21.2: tell the responder, then forget the SA.
            sa.notify_and_close(NotifyType.AUTHENTICATION_FAILED, "auth-failed", now)
            return
        established = _establish(sa, identity, now,
                                 initial_contact=msg.notify(NotifyType.INITIAL_CONTACT) is not None)
        child = self._child_from_response(sa, msg, now) if self.inbound_spi is not None else None
        _log_established(established, child)
        if child is not None and self.initial_contact and sa.confirm_install:
            # Our events (the CHILD_SA's install) are applied before this request leaves: a
            # peer that keeps its new outbound half back until we can receive on it
            # (`_respond_child`, handover) may use it once this arrives.
            sa.queue(sa.exchanges.liveness_check(), now)

    def _child_from_response(self, sa: IkeSa, msg: Message, now: float) -> ChildSa | None:
        config, inbound_spi = self.child, self.inbound_spi
        if config is None or inbound_spi is None:
            raise InvariantError("asked only when start() requested a CHILD_SA")
        errors = [n for n in msg.all(NotifyPayload) if n.is_error]
        sa_payload, tsi, tsr = msg.first(SaPayload), msg.first(TsiPayload), msg.first(TsrPayload)
        try:
            if errors or sa_payload is None or tsi is None or tsr is None or len(sa_payload.proposals) != 1:
                name = notify_name(errors[0].type) if errors else "no CHILD_SA in response"
                raise IkeError(f"CHILD_SA {config.name} refused: {name}",
                               notify=errors[0].type if errors else None)
            selected = check_answer(sa_payload.proposals[0], list(self.child_proposals))
            if len(selected.spi) != 4:
                raise ParseError("ESP SPI must be 4 bytes")
            local_ts, remote_ts = check_answered_selectors(sa, tsi, tsr, config.local_ts,
                                                           config.remote_ts, config.mode)
            if (config.mode == "transport") != transport_mode_requested(msg):
                raise IkeError(f"peer did not agree to {config.mode} mode")
        except IkeError as exc:
            self._release(sa)
            log.warning("CHILD_SA with %s failed: %s", sa.remote[0], exc)
            sa.emit(ChildSaFailed(sa.label, config.name, str(exc), exc.notify))
            return None
        keys = child_keys(sa, sa.ni, sa.nr, selected, we_are_initiator=True)
        return add_child(sa, config, selected, keys, inbound_spi, int.from_bytes(selected.spi, "big"),
                         local_ts, remote_ts, (sa.ni, sa.nr), True, now, log_line=False)

    def _release(self, sa: IkeSa) -> None:
        if self.inbound_spi is not None:
            sa.services.release_child_spi(self.inbound_spi)
            self.inbound_spi = None

    def on_error(self, sa: IkeSa, exc: IkeError, now: float) -> None:
        self._release(sa)
        sa.emit(NegotiationFailed(sa.remote[0], f"IKE_AUTH failed: {exc}", exc.notify, sa.label))
        sa.close("failed", now)

    def on_timeout(self, sa: IkeSa, now: float) -> None:
        self._release(sa)
        sa.emit(NegotiationFailed(sa.remote[0], "no response to IKE_AUTH", None, sa.label))
        sa.close("timeout", now)


class IkeAuthResponder(Responder):
    exchanges = (ExchangeType.IKE_AUTH,)

    def respond(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Reply | None:
        if sa.initiator or sa.state != IkeState.CONNECTING:
            return None
        return _respond(sa, msg, now)


def _respond(sa: IkeSa, msg: Message, now: float) -> Reply:
    try:
        identity = _authenticate_peer(sa, msg, msg.first(IdiPayload), sa.init_request, sa.nr, now)
    except AuthenticationFailed as exc:
        log.warning("IKE_AUTH from %s refused: %s", sa.remote[0], exc)
        sa.emit(NegotiationFailed(sa.remote[0], f"authentication failed: {exc}",
                                  NotifyType.AUTHENTICATION_FAILED, sa.label))
        raise
    id_payload = sa.local_id.to_payload(initiator=False)
    payloads, auth = _our_auth_payloads(sa, id_payload, sa.ni, sa.init_response, msg.message_id)
    payloads.append(auth)
    kept = sa.services.replaces_kernel_sas(sa, now)
    if kept:
        # We restarted and the peer initiated: its IKE SA with our earlier instance is stale.
        # Said here, the peer drops it (keeping its SAs until ours replace them) instead of
        # maybe keeping it over this one by the duplicate-SA rule. It drops only IKE SAs up
        # before it began this one, which it initiated, so none of our new ones.
        payloads.insert(0, NotifyPayload(NotifyType.INITIAL_CONTACT))
    initial_contact = msg.notify(NotifyType.INITIAL_CONTACT) is not None
    established = _establish(sa, identity, now)
    replaced = initial_contact and sa.services.initial_contact(sa, now)
    # Wait for the peer's sign only where old SAs can carry our traffic meanwhile: in its
    # kernel too (it says it kept them, or it still has its IKE SA with our earlier instance:
    # no INITIAL_CONTACT), and in ours (it restarted: stale IKE SA replaced; or we did: kept).
    # A peer that restarted without them (INITIAL_CONTACT alone) gets our traffic at once.
    # The initiator installs its half only once our answer arrives (late if it is lost).
    # Both restarted, each initiating: the peer installs this CHILD_SA when our answer
    # arrives, and sent on it sooner ours would be lost; our crossing IKE SA's CHILD_SA (or
    # the kept SAs) carries our traffic meanwhile, whichever IKE SA the duplicate rule keeps.
    peer_keeps = msg.notify(NotifyType.IPSEC_MESH_KEPT_SAS) is not None or not initial_contact
    handover = (peer_keeps and (replaced or kept)) or sa.services.crosses_ours(sa, now)
    child = None
    if msg.first(SaPayload) is not None:
        child_payloads, child = _respond_child(sa, msg, now, handover=handover)
        payloads += child_payloads
    _log_established(established, child)
    return Reply(payloads)


def _respond_child(sa: IkeSa, msg: Message, now: float, *,
                   handover: bool = False) -> tuple[list[Payload], ChildSa | None]:
    """The CHILD_SA answer payloads, and the CHILD_SA (None if refused).

    `handover`: it replaces SAs that still carry traffic without IKE state (the peer
    restarted and kept them, IPSEC_MESH_KEPT_SAS; or we did). Only its inbound half goes in
    now: the peer installs its own inbound half when our answer arrives, and until then it
    would drop what we sent on the new SA; the old SAs carry our traffic meanwhile, until
    the peer's next request (`child.handover_done`) or its first ESP on the new SA
    (`child.handover_evidence`), at most `IkeSa.inbound_only_limit`."""
    try:
        request = match_child_request(msg, sa.config.children, with_ke=False, nat=nat_addresses(sa))
    except IkeError as exc:
        log.warning("CHILD_SA from %s refused: %s", sa.remote[0], exc)
        sa.emit(ChildSaFailed(sa.label, "", str(exc), exc.notify))
        return [NotifyPayload(exc.notify or NotifyType.NO_PROPOSAL_CHOSEN)], None
    selected = request.selected
    inbound = sa.services.allocate_child_spi()
    keys = child_keys(sa, sa.ni, sa.nr, selected, we_are_initiator=False)
    child = add_child(sa, request.config, selected, keys, inbound, int.from_bytes(selected.spi, "big"),
                      request.ts_r, request.ts_i, (sa.ni, sa.nr), False, now, log_line=False,
                      state=ChildState.INBOUND_ONLY if handover else ChildState.INSTALLED)
    if handover:
        child.extra[HANDOVER] = True
        child.handover_query_at = now + HANDOVER_QUERY
    payloads: list[Payload] = [SaPayload([selected.to_payload(inbound.to_bytes(4, "big"))]),
                               TsiPayload(request.ts_i), TsrPayload(request.ts_r)]
    payloads += child_notifies(request.config)
    return payloads, child


__all__ = ["IkeAuthTask", "IkeAuthResponder"]
