"""IKE_SA_INIT (RFC 7296 §1.2) and IKE_INTERMEDIATE with additional key exchanges (RFC 9242, 9370)."""

from __future__ import annotations

import functools
import logging
import struct

from ..child import negotiated
from ..constants import (
    IKE_HEADER_LEN,
    IKE_VERSION,
    NATT_PORT,
    ExchangeType,
    NotifyType,
    PayloadType,
    notify_name,
)
from ..crypto import aead_keymat_len, prf_for
from ..errors import IkeError, InvalidKePayload, InvariantError, NoProposalChosen, ParseError
from ..events import NegotiationFailed
from ..keyexchange import KeInitiator, respond_key_exchange, start_key_exchange
from ..keymat import addke_skeyseed, derive_ike_keys, skeyseed
from ..message import encode_chain
from ..natt import detect, nat_notifies
from ..payloads import (
    CertReqPayload,
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
)
from ..proposals import Selected, check_answer, select
from ..sa import IkeSa, IkeState
from ..task import Reply, Responder, Task
from ..wire import remember_parse

log = logging.getLogger("ipsec_mesh.ike")

NONCE_LEN = 32
MAX_COOKIE_RETRIES = 3
MAX_KE_RETRIES = 2


def _hash_algorithms_notify() -> NotifyPayload:
    return NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS, data=_hash_algorithms_data())


@functools.cache
def _hash_algorithms_data() -> bytes:
    """Built once: what we announce does not change while the process runs."""
    from ..auth import our_hash_algorithms

    return b"".join(int(h).to_bytes(2, "big") for h in sorted(our_hash_algorithms()))


def _parse_hash_algorithms(msg: Message) -> frozenset[int]:
    n = msg.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
    if n is None or len(n.data) % 2:
        return frozenset()
    # A peer announces the same list in every IKE SA: parsed once per distinct list.
    algorithms = _HASH_ALGORITHM_SETS.get(n.data)
    if algorithms is None:
        algorithms = frozenset(int.from_bytes(n.data[i:i + 2], "big") for i in range(0, len(n.data), 2))
        remember_parse(_HASH_ALGORITHM_SETS, n.data, algorithms, n.data, max_input=_HASH_LIST_KEPT)
    return algorithms


_HASH_ALGORITHM_SETS: dict[bytes, frozenset[int]] = {}
# Lists of up to 16 algorithms are kept (the IANA registry has 8): a set of 512 (1 KiB of
# data) would cost far more memory per entry than the bytes it is keyed by.
_HASH_LIST_KEPT = 32


def _common_flags(sa: IkeSa, msg: Message) -> None:
    sa.peer_fragmentation = msg.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
    sa.peer_hash_algs = _parse_hash_algorithms(msg)
    sa.peer_childless = msg.notify(NotifyType.CHILDLESS_IKEV2_SUPPORTED) is not None


def _detect_nat(sa: IkeSa, msg: Message, local: tuple[str, int], remote: tuple[str, int]) -> None:
    sources = [n.data for n in msg.notifies(NotifyType.NAT_DETECTION_SOURCE_IP)]
    dest = msg.notify(NotifyType.NAT_DETECTION_DESTINATION_IP)
    # The hashes cover the SPIs of the message's own header: SPIr is zero in the request
    # (RFC 7296 §2.23), although the responder has already chosen its SPI.
    result = detect(msg.spi_i, msg.spi_r, sources, dest.data if dest else None, local, remote)
    if result is not None:
        sa.nat_local, sa.nat_remote = result
    if sa.config.force_encap:
        sa.nat_local = True


def _derive(sa: IkeSa, sel: Selected, shared: bytes) -> None:
    """The first keys, from IKE_SA_INIT's shared secret (`sel` is the selection just made)."""
    if sel.prf is None:
        raise InvariantError("an IKE proposal always selects a PRF")
    sa.prf = prf = prf_for(sel.prf)
    seed = skeyseed(prf, sa.ni, sa.nr, shared)
    sa.install_keys(derive_ike_keys(prf, seed, sa.ni, sa.nr, sa.spi_i, sa.spi_r,
                                    aead_keymat_len(sel.encr, sel.key_bits)))



def _our_ke_groups(sa: IkeSa) -> list[int]:
    groups: list[int] = []
    for spec in sa.config.ike_proposals:
        groups += [k for k in spec.ke if k not in groups]
    return groups


class IkeInitTask(Task):
    exchange = ExchangeType.IKE_SA_INIT

    def __init__(self, *, first_group: int | None = None):
        self.group = first_group
        self.cookie: bytes | None = None
        self.cookie_retries = 0
        self.ke_retries = 0
        self.ke: KeInitiator | None = None

    def start(self, sa: IkeSa, now: float) -> None:
        if not sa.ni:
            sa.ni = sa.random_bytes(NONCE_LEN)
        if self.group is None:
            self.group = _our_ke_groups(sa)[0]
        if self.ke is None or self.ke.method != self.group:
            self.ke = start_key_exchange(self.group)
        sa.tasks.next_mid = 0
        sa.init_request = sa.tasks.send_request(self, self.exchange, self._payloads(sa, self.group, self.ke), now)

    def _payloads(self, sa: IkeSa, group: int, ke: KeInitiator) -> list[Payload]:
        cfg = sa.config
        proposals = [spec.to_payload(i + 1) for i, spec in enumerate(cfg.ike_proposals)]
        payloads: list[Payload] = []
        if self.cookie is not None:
            payloads.append(NotifyPayload(NotifyType.COOKIE, data=self.cookie))
        payloads += [SaPayload(proposals), KePayload(group, ke.public_data), NoncePayload(sa.ni)]
        payloads += nat_notifies(sa.spi_i, sa.spi_r, sa.local, sa.remote, cfg.force_encap, sa.random_bytes)
        if cfg.fragmentation:
            payloads.append(NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
        payloads.append(_hash_algorithms_notify())
        if any(spec.addke for spec in cfg.ike_proposals):
            payloads.append(NotifyPayload(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED))
        if cfg.childless != "never":
            payloads.append(NotifyPayload(NotifyType.CHILDLESS_IKEV2_SUPPORTED))
        return payloads

    def on_response(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
        cookie = msg.notify(NotifyType.COOKIE)
        if cookie is not None:
            if self.cookie_retries >= MAX_COOKIE_RETRIES or not 1 <= len(cookie.data) <= 64:
                raise IkeError("responder keeps asking for a cookie")
            self.cookie_retries += 1
            self.cookie = cookie.data
            self.start(sa, now)
            return
        invalid_ke = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            wanted = int.from_bytes(invalid_ke.data[:2], "big") if len(invalid_ke.data) >= 2 else -1
            if wanted not in _our_ke_groups(sa) or self.ke_retries >= MAX_KE_RETRIES:
                raise NoProposalChosen(f"responder wants key exchange {wanted}, which we do not offer")
            self.ke_retries += 1
            self.group = wanted
            self.start(sa, now)
            return
        for n in msg.all(NotifyPayload):
            if n.is_error:
                raise IkeError(f"responder refused IKE_SA_INIT: {notify_name(n.type)}", notify=n.type)
        sa_payload, ke, nonce = msg.first(SaPayload), msg.first(KePayload), msg.first(NoncePayload)
        if sa_payload is None or ke is None or nonce is None or len(sa_payload.proposals) != 1:
            raise ParseError("IKE_SA_INIT response lacks SA, KE or Nonce")
        if msg.spi_r == bytes(8):
            raise ParseError("IKE_SA_INIT response without responder SPI")
        sa.selected = selected = check_answer(sa_payload.proposals[0], list(sa.config.ike_proposals))
        if selected.ke != self.group or ke.group != self.group:
            raise NoProposalChosen("responder chose a key exchange other than the one we sent")
        if self.ke is None:
            raise InvariantError("start() made our key exchange before the request went out")
        sa.spi_r = msg.spi_r
        sa.nr = nonce.data
        sa.init_response = raw
        _derive(sa, selected, self.ke.finish(ke.data))
        _common_flags(sa, msg)
        _detect_nat(sa, msg, sa.local, sa.remote)
        if sa.nat_local or sa.nat_remote:
            # RFC 7296 §2.23: move to port 4500 once a NAT is detected (or encapsulation is forced).
            sa.local = (sa.local[0], NATT_PORT)
            sa.remote = (sa.remote[0], NATT_PORT)
        extra = selected.additional_kes
        if extra and msg.notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED) is None:
            raise NoProposalChosen("responder chose additional key exchanges without IKE_INTERMEDIATE")
        # Before the IKE_AUTH task queued with this one (RFC 9242: intermediates come first).
        for index, method in reversed(list(enumerate(extra))):
            sa.tasks.queue_first(IntermediateTask(index, method))

    def on_error(self, sa: IkeSa, exc: IkeError, now: float) -> None:
        log.warning("IKE_SA_INIT to %s failed: %s", sa.remote[0], exc)
        sa.emit(NegotiationFailed(sa.remote[0], str(exc), exc.notify, sa.label))
        sa.close("failed", now)

    def on_timeout(self, sa: IkeSa, now: float) -> None:
        sa.emit(NegotiationFailed(sa.remote[0], "no response to IKE_SA_INIT", None, sa.label))
        sa.close("timeout", now)


class IkeInitResponder(Responder):
    """Answers IKE_SA_INIT and the IKE_INTERMEDIATE exchanges that follow it (as libcharon's
    ike_init does); keeps the additional key exchanges still to run."""

    exchanges = (ExchangeType.IKE_SA_INIT, ExchangeType.IKE_INTERMEDIATE)

    def __init__(self) -> None:
        self.pending_addke: list[int] = []

    def respond(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Reply | None:
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            if sa.initiator or sa.keys is not None:
                return None
            reply, selected = _respond_init(sa, msg, raw, now)
            self.pending_addke = list(selected.additional_kes)
            return reply
        if sa.initiator or sa.state != IkeState.CONNECTING:
            return None
        return _respond_intermediate(sa, self.pending_addke, msg, now)


def _respond_init(sa: IkeSa, msg: Message, raw: bytes, now: float) -> tuple[Reply, Selected]:
    """Answer an IKE_SA_INIT request (the endpoint has already checked cookies and limits)."""
    sa_payload, ke, nonce = msg.first(SaPayload), msg.first(KePayload), msg.first(NoncePayload)
    if sa_payload is None or ke is None or nonce is None:
        raise ParseError("IKE_SA_INIT request lacks SA, KE or Nonce")
    try:
        selected = select(sa_payload.proposals, list(sa.config.ike_proposals))
    except NoProposalChosen as exc:
        sa.emit(NegotiationFailed(sa.remote[0], str(exc), NotifyType.NO_PROPOSAL_CHOSEN))
        raise
    if ke.group != selected.ke:
        raise InvalidKePayload(f"peer sent KE for group {ke.group}, we chose {selected.ke}", selected.ke)
    our_ke, shared = respond_key_exchange(selected.ke, ke.data)
    sa.selected = selected
    sa.ni = nonce.data
    sa.nr = sa.random_bytes(NONCE_LEN)
    sa.init_request = raw
    _derive(sa, selected, shared)
    _common_flags(sa, msg)
    _detect_nat(sa, msg, sa.local, sa.remote)
    cfg = sa.config
    payloads: list[Payload] = [SaPayload([selected.to_payload(b"")]), KePayload(selected.ke, our_ke), NoncePayload(sa.nr)]
    payloads += nat_notifies(sa.spi_i, sa.spi_r, sa.local, sa.remote, cfg.force_encap, sa.random_bytes)
    if cfg.fragmentation:
        payloads.append(NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
    payloads.append(_hash_algorithms_notify())
    trust = cfg.trust
    if trust is not None and cfg.send_certreq:
        payloads.append(CertReqPayload(4, trust.certreq_data()))
    if selected.additional_kes:
        payloads.append(NotifyPayload(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED))
    if cfg.childless != "never":
        payloads.append(NotifyPayload(NotifyType.CHILDLESS_IKEV2_SUPPORTED))
    def remember_response(now: float) -> None:
        cached = sa.tasks.cached_response
        if cached is None:
            raise InvariantError("called once the response is sent, so cached")
        sa.init_response = cached[1][0].data

    return Reply(payloads, after=remember_response), selected


# -- IKE_INTERMEDIATE (RFC 9242) carrying additional key exchanges (RFC 9370) ----------

def _int_auth_chunk(sa: IkeSa, exchange: int, response: bool, mid: int, first: int, plain: bytes) -> bytes:
    """IntAuth_[i/r]A | IntAuth_[i/r]P: header and SK header with lengths as if P alone were inside."""
    # IKE_INTERMEDIATE requests always come from the original initiator (I flag), responses
    # from the responder (R flag), whichever side computes this.
    flags = 0x20 if response else 0x08
    length = IKE_HEADER_LEN + 4 + len(plain)
    header = struct.pack("!8s8sBBBBII", sa.spi_i, sa.spi_r, PayloadType.SK, IKE_VERSION, exchange,
                         flags, mid, length)
    return header + struct.pack("!BBH", first, 0, 4 + len(plain)) + plain


def _accumulate(sa: IkeSa, request_chunk: bytes, response_chunk: bytes) -> None:
    """IntAuth_iN = prf(SK_piN, IntAuth_iN-1 | A | P), likewise for r, with this exchange's keys."""
    prf, keys, _ = negotiated(sa)
    sa.int_auth_i = prf(keys.sk_pi, sa.int_auth_i + request_chunk)
    sa.int_auth_r = prf(keys.sk_pr, sa.int_auth_r + response_chunk)
    sa.intermediate_done = True


def _update_keys(sa: IkeSa, shared: bytes) -> None:
    prf, keys, sel = negotiated(sa)
    seed = addke_skeyseed(prf, keys.sk_d, shared, sa.ni, sa.nr)
    sa.install_keys(derive_ike_keys(prf, seed, sa.ni, sa.nr, sa.spi_i, sa.spi_r,
                                    aead_keymat_len(sel.encr, sel.key_bits)))


class IntermediateTask(Task):
    exchange = ExchangeType.IKE_INTERMEDIATE

    def __init__(self, index: int, method: int):
        self.index = index
        self.method = method
        self.ke: KeInitiator | None = None
        self.request_chunk = b""

    def start(self, sa: IkeSa, now: float) -> None:
        self.ke = start_key_exchange(self.method)
        payloads: list[Payload] = [KePayload(self.method, self.ke.public_data)]
        first, plain = encode_chain(payloads)
        self.request_chunk = _int_auth_chunk(sa, self.exchange, False, sa.tasks.next_mid, first, plain)
        sa.tasks.send_request(self, self.exchange, payloads, now)

    def on_response(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
        for n in msg.all(NotifyPayload):
            if n.is_error:
                raise IkeError(f"responder refused IKE_INTERMEDIATE: {notify_name(n.type)}", notify=n.type)
        ke = msg.first(KePayload)
        if ke is None or ke.group != self.method:
            raise ParseError(f"IKE_INTERMEDIATE response lacks the KE payload for {self.method}")
        if self.ke is None:
            raise InvariantError("start() made our key exchange before the request went out")
        shared = self.ke.finish(ke.data)
        response_chunk = _int_auth_chunk(sa, self.exchange, True, msg.message_id, msg.inner_first, msg.inner_plain)
        _accumulate(sa, self.request_chunk, response_chunk)
        _update_keys(sa, shared)

    on_error = IkeInitTask.on_error
    on_timeout = IkeInitTask.on_timeout


def _respond_intermediate(sa: IkeSa, pending: list[int], msg: Message, now: float) -> Reply:
    ke = msg.first(KePayload)
    if not pending:
        raise IkeError("unexpected IKE_INTERMEDIATE", notify=NotifyType.INVALID_SYNTAX)
    method = pending[0]
    if ke is None or ke.group != method:
        raise InvalidKePayload(f"IKE_INTERMEDIATE must carry KE for {method}", method)
    our_data, shared = respond_key_exchange(method, ke.data)
    payloads: list[Payload] = [KePayload(method, our_data)]
    request_chunk = _int_auth_chunk(sa, msg.exchange, False, msg.message_id, msg.inner_first, msg.inner_plain)
    first, plain = encode_chain(payloads)
    response_chunk = _int_auth_chunk(sa, msg.exchange, True, msg.message_id, first, plain)

    def rekey_after_send(now: float) -> None:
        # The response goes out under the keys of this exchange; the new ones apply after it.
        pending.pop(0)
        _accumulate(sa, request_chunk, response_chunk)
        _update_keys(sa, shared)

    return Reply(payloads, after=rekey_after_send)


__all__ = ["IkeInitTask", "IntermediateTask", "IkeInitResponder"]
