"""CHILD_SA records and the negotiation steps shared by IKE_AUTH and CREATE_CHILD_SA."""

from __future__ import annotations

import enum
import logging
from dataclasses import field, replace
from typing import TYPE_CHECKING, Any, Sequence

from ..records import record
from .config import ChildConfig
from .constants import NotifyType, ProtocolId
from .crypto import Prf, aead_keymat_len
from .errors import IkeError, InvariantError, NoProposalChosen, TsUnacceptable
from .events import (
    ChildSaInboundQuery,
    ChildSaInfo,
    ChildSaInstallInbound,
    ChildSaInstallOutbound,
    ChildSaKeys,
    ChildSaOutboundRetired,
    UdpEncap,
)
from .keymat import IkeKeys, derive_child_keys
from .payloads import (
    Message,
    NotifyPayload,
    SaPayload,
    TrafficSelector,
    TsiPayload,
    TsrPayload,
)
from .proposals import ProposalSpec, Selected, select
from .selectors import check_subset, narrow

if TYPE_CHECKING:
    from .sa import IkeSa

log = logging.getLogger("ipsec_mesh.ike")


class ChildState(enum.Enum):
    INSTALLED = "installed"  # both halves in use
    INBOUND_ONLY = "inbound-only"  # new SA from a rekey we answered; outbound waits for the old one to go
    REKEYING = "rekeying"  # our rekey of it is under way
    REKEYED = "rekeyed"  # replaced; waiting for its delete exchange
    DELETING = "deleting"  # our delete of it is under way
    DELETED = "deleted"


@record
class ChildSa:
    config: ChildConfig
    info: ChildSaInfo
    state: ChildState
    created_at: float
    rekey_at: float | None
    expire_at: float | None
    nonces: tuple[bytes, bytes]  # (Ni, Nr) of the exchange that created it: RFC 7296 §2.8.1 collisions
    initiated_by_us: bool
    # Rekey bookkeeping
    replaces: int | None = None  # inbound SPI of the SA this one replaces
    replaced_by: int | None = None  # inbound SPI of its successor
    peer_rekey: int | None = None  # inbound SPI of the successor the PEER created (collisions)
    outbound_retired: bool = False  # we stopped sending on it (our Delete of it is under way)
    # Inactivity (config.lifetime.inactivity): when to ask the layer above for the kernel's
    # packet count, and (count last reported, when it was first seen at that value).
    activity_check_at: float | None = None
    activity: tuple[int, float] | None = None
    inbound_bytes: int = 0  # liveness.py: the inbound half's byte count at the last answer
    handover_query_at: float | None = None  # HANDOVER: when to ask next whether ESP came on it
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def inbound_spi(self) -> int:
        return self.info.inbound_spi

    @property
    def outbound_spi(self) -> int:
        return self.info.outbound_spi

    @property
    def name(self) -> str:
        return self.config.name

    def schedule_activity_check(self, now: float) -> None:
        """Inactivity: next ask for the kernel's packet count half the inactivity time from now."""
        idle = self.config.lifetime.inactivity
        self.activity_check_at = now + idle / 2 if idle else None


HANDOVER = "handover"  # ChildSa.extra: its outbound half waits for the peer's sign that it installed its half
#: seconds between asks for a HANDOVER CHILD_SA's inbound byte count (ESP on it: the peer sends on it)
HANDOVER_QUERY = 0.5

SENDING_STATES = (ChildState.INSTALLED, ChildState.REKEYING, ChildState.REKEYED)


def sends(child: ChildSa) -> bool:
    """Its outbound half is installed and still in use."""
    return child.state in SENDING_STATES and not child.outbound_retired


def retire_outbound(sa: IkeSa, child: ChildSa) -> None:
    """Stop sending on `child` (the kernel falls back to another SA for the traffic, or asks
    for one): before its Delete leaves, since the peer drops its inbound half on receipt."""
    if sends(child):
        child.outbound_retired = True
        info = child.info
        sa.emit(ChildSaOutboundRetired(sa.label, info.name, info.inbound_spi, info.outbound_spi,
                                       info.local_addr, info.remote_addr))


def transport_mode_requested(msg: Message) -> bool:
    return msg.notify(NotifyType.USE_TRANSPORT_MODE) is not None


def negotiated(sa: IkeSa) -> tuple[Prf, IkeKeys, Selected]:
    """The PRF, keys and selection of an IKE SA that IKE_SA_INIT has keyed (every later exchange's)."""
    if sa.prf is None or sa.keys is None or sa.selected is None:
        raise InvariantError("IKE_SA_INIT made no keys")
    return sa.prf, sa.keys, sa.selected


def child_keys(sa: IkeSa, ni: bytes, nr: bytes, selected: Selected, we_are_initiator: bool,
               shared_secrets: tuple[bytes, ...] = ()) -> ChildSaKeys:
    """ESP keys for one CHILD_SA of `sa`, oriented inbound/outbound for our side.

    `we_are_initiator` is our role in the exchange that created the CHILD_SA: its
    initiator's outbound key is KEYMAT's first half (RFC 7296 §2.17).
    """
    prf, ike_keys, _ = negotiated(sa)
    length = aead_keymat_len(selected.encr, selected.key_bits)
    keys = derive_child_keys(prf, ike_keys.sk_d, ni, nr, length, 0, shared_secrets)
    if we_are_initiator:
        return ChildSaKeys(inbound=keys.encr_r, outbound=keys.encr_i)
    return ChildSaKeys(inbound=keys.encr_i, outbound=keys.encr_r)


@record
class ChildRequest:
    """What a CREATE_CHILD_SA or IKE_AUTH request asks for, after validation (responder side)."""

    config: ChildConfig
    selected: Selected
    ts_i: list[TrafficSelector]  # narrowed, initiator's side (= the peer's, remote for us)
    ts_r: list[TrafficSelector]  # narrowed, responder's side (local for us)


def nat_substitute(selectors: list[TrafficSelector], address: str | None) -> list[TrafficSelector]:
    """RFC 7296 §2.23.1: in transport mode behind a NAT, a host's own selector names an
    address the other side never sees; replace it with the address actually in use."""
    if address is None:
        return selectors
    return [TrafficSelector.for_address(address, s.ip_protocol, s.start_port, s.end_port)
            if s.start_addr == s.end_addr and s.start_addr.version == TrafficSelector.for_address(address)
            .start_addr.version else s for s in selectors]


def match_child_request(msg: Message, configs: tuple[ChildConfig, ...], with_ke: bool,
                        nat: tuple[str | None, str | None] = (None, None)) -> ChildRequest:
    """Pick the child config, ESP proposal and narrowed selectors for a request we answer.

    `nat` = (initiator's address, responder's address) to substitute in transport mode
    when that side is behind a NAT. Raises NoProposalChosen / TsUnacceptable with a
    message naming what was offered.
    """
    sa = msg.first(SaPayload)
    tsi = msg.first(TsiPayload)
    tsr = msg.first(TsrPayload)
    if sa is None or tsi is None or tsr is None:
        raise IkeError("CHILD_SA request lacks SA, TSi or TSr", notify=NotifyType.INVALID_SYNTAX)
    if not configs:
        raise NoProposalChosen("no CHILD_SA is configured for this peer")
    transport = transport_mode_requested(msg)
    last_error: IkeError | None = None
    for config in configs:
        if (config.mode == "transport") != transport:
            last_error = NoProposalChosen(
                f"peer asked for {'transport' if transport else 'tunnel'} mode, {config.name} uses {config.mode}")
            continue
        offered_i, offered_r = tsi.selectors, tsr.selectors
        if transport:
            offered_i, offered_r = nat_substitute(offered_i, nat[0]), nat_substitute(offered_r, nat[1])
        ts_i = narrow(offered_i, config.remote_ts)
        ts_r = narrow(offered_r, config.local_ts)
        if not ts_i or not ts_r:
            last_error = TsUnacceptable(f"traffic selectors do not match {config.name}")
            continue
        proposals = config.esp_proposals if with_ke else ProposalSpec.all_without_ke(config.esp_proposals)
        try:
            selected = select(sa.proposals, list(proposals))
        except NoProposalChosen as exc:
            last_error = exc
            continue
        if len(selected.spi) != 4:
            raise IkeError("ESP proposal SPI must be 4 bytes", notify=NotifyType.INVALID_SYNTAX)
        return ChildRequest(config, selected, ts_i, ts_r)
    if last_error is None:
        raise InvariantError("expected last_error is not None")
    raise last_error


def build_info(*, ike_label: str, config: ChildConfig, selected: Selected, keys: ChildSaKeys,
               inbound_spi: int, outbound_spi: int, local_addr: str, remote_addr: str,
               local_ts: Sequence[TrafficSelector], remote_ts: Sequence[TrafficSelector],
               encap: UdpEncap | None, rekey_time: float) -> ChildSaInfo:
    lt = config.lifetime
    return ChildSaInfo(
        ike_sa=ike_label,
        name=config.name,
        mode=config.mode,
        inbound_spi=inbound_spi,
        outbound_spi=outbound_spi,
        encr=selected.encr,
        key_bits=selected.key_bits,
        esn=selected.esn,
        keys=keys,
        local_addr=local_addr,
        remote_addr=remote_addr,
        local_ts=tuple(local_ts),
        remote_ts=tuple(remote_ts),
        encap=encap,
        rekey_time=rekey_time,
        life_time=lt.life_time,
        rekey_bytes=lt.rekey_bytes,
        life_bytes=lt.life_bytes,
        rekey_packets=lt.rekey_packets,
        life_packets=lt.life_packets,
        tfc_padding=config.tfc_padding,
        algorithm=selected.describe(),
    )


def child_notifies(config: ChildConfig) -> list[NotifyPayload]:
    out = []
    if config.mode == "transport":
        out.append(NotifyPayload(NotifyType.USE_TRANSPORT_MODE))
    if not config.tfc_padding:
        # We do not pad: tell the peer it need not either (RFC 7296 §3.10.1).
        out.append(NotifyPayload(NotifyType.ESP_TFC_PADDING_NOT_SUPPORTED))
    return out


def rekey_notify(inbound_spi: int) -> NotifyPayload:
    return NotifyPayload(NotifyType.REKEY_SA, ProtocolId.ESP, inbound_spi.to_bytes(4, "big"))


def moved(info: ChildSaInfo, **changes: Any) -> ChildSaInfo:
    return replace(info, **changes)


def encap_of(sa: IkeSa) -> UdpEncap | None:
    """ESP goes in UDP when either side is behind a NAT (or encapsulation is forced)."""
    if sa.nat_local or sa.nat_remote:
        return UdpEncap(sa.local[1], sa.remote[1])
    return None


Selectors = Sequence[TrafficSelector]


def check_answered_selectors(sa: IkeSa, tsi: TsiPayload, tsr: TsrPayload, local_ts: Selectors,
                             remote_ts: Selectors, mode: str) -> tuple[Selectors, Selectors]:
    """Initiator side: the responder may only narrow; behind a NAT in transport mode it
    names the addresses it sees instead of ours (RFC 7296 §2.23.1), and we install our own."""
    nat_transport = mode == "transport" and (sa.nat_local or sa.nat_remote)
    if nat_transport:
        return (tuple(local_ts) if sa.nat_local else tsi.selectors,
                tuple(remote_ts) if sa.nat_remote else tsr.selectors)
    check_subset(tsi.selectors, local_ts, "TSi")
    check_subset(tsr.selectors, remote_ts, "TSr")
    return tsi.selectors, tsr.selectors


def add_child(sa: IkeSa, config: ChildConfig, selected: Selected, keys: ChildSaKeys, inbound_spi: int,
              outbound_spi: int, local_ts: Selectors, remote_ts: Selectors,
              nonces: tuple[bytes, bytes], initiated_by_us: bool, now: float, *,
              state: ChildState = ChildState.INSTALLED, replaces: int | None = None,
              log_line: bool = True) -> ChildSa:
    """Record a new CHILD_SA and tell the data plane (inbound first; outbound unless told to wait).

    `log_line=False` when the caller logs the CHILD_SA with its IKE SA (IKE_AUTH).
    """
    lt = config.lifetime
    jitter = sa.services.random_bytes(2)
    rekey_time = lt.rekey_time - (int.from_bytes(jitter, "big") / 65535.0) * lt.jitter if lt.rekey_time else 0
    info = build_info(ike_label=sa.label, config=config, selected=selected, keys=keys,
                      inbound_spi=inbound_spi, outbound_spi=outbound_spi,
                      local_addr=sa.local[0], remote_addr=sa.remote[0], local_ts=local_ts,
                      remote_ts=remote_ts, encap=encap_of(sa), rekey_time=rekey_time)
    child = ChildSa(config=config, info=info, state=state, created_at=now,
                    rekey_at=now + rekey_time if rekey_time else None,
                    expire_at=now + lt.life_time if lt.life_time else None,
                    nonces=nonces, initiated_by_us=initiated_by_us, replaces=replaces)
    child.schedule_activity_check(now)
    sa.children[inbound_spi] = child
    sa.emit(ChildSaInstallInbound(info, rekey_of=replaces))
    if state == ChildState.INSTALLED:
        sa.emit(ChildSaInstallOutbound(info))
    if log_line:
        log.info("CHILD_SA %s %08x_i %08x_o with %s: %s%s", config.name, inbound_spi, outbound_spi,
                 sa.remote[0], info.algorithm, " (rekey)" if replaces else "")
    return child


def activate_successor(sa: IkeSa, old: ChildSa) -> None:
    """The old SA is gone: the successor the peer created may now carry our outbound traffic."""
    if old.peer_rekey is None:
        return
    successor = sa.children.get(old.peer_rekey)
    if successor is not None and successor.state == ChildState.INBOUND_ONLY:
        successor.state = ChildState.INSTALLED
        sa.emit(ChildSaInstallOutbound(successor.info))


def handover_done(sa: IkeSa) -> None:
    """A request from the peer after IKE_AUTH: it has installed the CHILD_SAs of IKE_AUTH
    (events are applied before datagrams leave), so ours may send now (exchanges.ike_auth,
    handover)."""
    for child in list(sa.children.values()):
        _end_handover(sa, child)


def handover_query(sa: IkeSa, child: ChildSa, now: float) -> None:
    """A HANDOVER CHILD_SA waiting for the peer: ask the layer above for its inbound byte
    count (answered through `IkeEndpoint.child_inbound_bytes`, then `handover_evidence`)."""
    if child.handover_query_at is None or now < child.handover_query_at or not awaits_handover(child):
        return
    child.handover_query_at = now + HANDOVER_QUERY
    info = child.info
    sa.emit(ChildSaInboundQuery(sa.label, info.name, info.inbound_spi, info.outbound_spi,
                                info.local_addr, info.remote_addr, handover=True))


def handover_evidence(sa: IkeSa, child: ChildSa, inbound_bytes: int) -> None:
    """ESP arrived on a HANDOVER CHILD_SA's inbound half: the peer sends on it, so it has
    installed both its halves (inbound first) and ours may send too."""
    if inbound_bytes > 0:
        _end_handover(sa, child)


def awaits_handover(child: ChildSa) -> bool:
    """Its outbound half waits for the peer's sign; not one of a duplicate IKE SA that goes
    (`outbound_retired`: the winner's CHILD_SA carries the traffic)."""
    return child.state == ChildState.INBOUND_ONLY and bool(child.extra.get(HANDOVER)) and not child.outbound_retired


def _end_handover(sa: IkeSa, child: ChildSa) -> None:
    if awaits_handover(child):
        del child.extra[HANDOVER]
        child.state = ChildState.INSTALLED
        child.handover_query_at = None
        sa.emit(ChildSaInstallOutbound(child.info))
