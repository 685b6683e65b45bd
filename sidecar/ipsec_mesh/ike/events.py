"""Events the IKE core hands to the layer above (data plane, logs, metrics, status).

Key material appears only in `ChildSaKeys`, whose repr hides it; nothing in an
event's repr is secret, so events can be logged as they are.
"""

from __future__ import annotations

from dataclasses import field

from ..records import record
from .payloads import TrafficSelector


@record(frozen=True)
class ChildSaKeys:
    """ESP keying material for one CHILD_SA: key || salt per direction (AEAD)."""

    inbound: bytes = field(repr=False)
    outbound: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"ChildSaKeys(<{len(self.inbound)}+{len(self.outbound)} bytes hidden>)"


@record(frozen=True)
class UdpEncap:
    """ESP must travel in UDP (RFC 3948) between these ports."""

    local_port: int
    remote_port: int


@record(frozen=True)
class ChildSaInfo:
    """Everything the data plane needs to install one CHILD_SA (both directions)."""

    ike_sa: str  # the owning IKE SA's label (SPIs, hex)
    name: str  # ChildConfig.name
    mode: str  # transport | tunnel
    inbound_spi: int
    outbound_spi: int
    encr: int  # EncrId
    key_bits: int | None
    esn: bool
    keys: ChildSaKeys
    local_addr: str
    remote_addr: str
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    encap: UdpEncap | None
    rekey_time: float
    life_time: float
    rekey_bytes: int = 0
    life_bytes: int = 0
    rekey_packets: int = 0
    life_packets: int = 0
    tfc_padding: int = 0
    algorithm: str = ""  # human label, e.g. aes256gcm16-esn


@record(frozen=True)
class Event:
    pass


@record(frozen=True)
class IkeSaEstablished(Event):
    ike_sa: str
    local_addr: str
    remote_addr: str
    local_id: str
    remote_id: str
    algorithm: str
    initiator: bool
    nat_local: bool  # we are behind a NAT
    nat_remote: bool  # the peer is behind a NAT
    rekeyed_from: str | None = None


@record(frozen=True)
class IkeSaClosed(Event):
    ike_sa: str
    remote_addr: str
    reason: str  # deleted-by-peer | deleted | rekeyed | dead-peer | timeout | auth-failed | failed | expired | superseded


@record(frozen=True)
class ChildSaInstallInbound(Event):
    """Install the inbound half now; the outbound half follows in ChildSaInstallOutbound.

    RFC 7296 §2.8 and zero loss: an endpoint must be able to receive on a new SA before
    its peer can send on it, and must not send on it before the peer can receive.
    """

    child: ChildSaInfo
    rekey_of: int | None = None  # inbound SPI of the CHILD_SA this one replaces


@record(frozen=True)
class ChildSaInstallOutbound(Event):
    child: ChildSaInfo


@record(frozen=True)
class ChildSaEncapChanged(Event):
    """The NAT in front of the peer rebound its port: re-point both halves' UDP
    encapsulation to `child.encap` (keys, SPIs and selectors are unchanged)."""

    child: ChildSaInfo


@record(frozen=True)
class ChildSaRef(Event):
    """Which CHILD_SA an event is about (both SPIs, for the data plane)."""

    ike_sa: str
    name: str
    inbound_spi: int
    outbound_spi: int
    local_addr: str
    remote_addr: str


@record(frozen=True)
class ChildSaOutboundRetired(ChildSaRef):
    """Stop sending on this CHILD_SA now: we are about to ask the peer to delete it.

    Emitted just before our Delete leaves, when another CHILD_SA for the same traffic
    still sends. The peer removes its inbound half when the Delete arrives, so anything
    we still sent on it afterwards would be lost; with the outbound half gone first, our
    traffic moves to that other SA (the successor, or the SA being replaced after a lost
    rekey collision) and every packet on this SA precedes the Delete on the wire. The
    inbound half stays until ChildSaDeleted.
    """


@record(frozen=True)
class ChildSaDeleted(ChildSaRef):
    """Remove both halves. The data plane may keep the inbound half for a short grace period."""

    reason: str  # rekeyed | deleted-by-peer | deleted | ike-closed | expired | inactive


@record(frozen=True)
class ChildSaActivityQuery(ChildSaRef):
    """How many packets has this CHILD_SA carried (both halves together)? The answer goes
    back through `IkeEndpoint.child_activity`; without one the CHILD_SA is never found idle."""


@record(frozen=True)
class ChildSaInboundQuery(ChildSaRef):
    """How many bytes has this CHILD_SA's inbound half received? A liveness check is due;
    more than last time means the peer is alive (liveness.py). The answer goes back through
    `IkeEndpoint.child_inbound_bytes`; without one, liveness rests on IKE alone.
    `handover`: asked because the CHILD_SA waits for the peer's first ESP on it (a restart,
    child.handover_query), not for a liveness check."""

    handover: bool = False


@record(frozen=True)
class ChildSaFailed(Event):
    ike_sa: str
    name: str
    reason: str
    notify: int | None = None


@record(frozen=True)
class NegotiationFailed(Event):
    """The IKE SA could not be set up (no proposal, auth failure, timeout)."""

    remote_addr: str
    reason: str
    notify: int | None = None
    ike_sa: str | None = None


@record(frozen=True)
class PeerIdentityMismatch(Event):
    remote_addr: str
    remote_id: str
    reason: str
