"""What the IKE core needs to know about a peer: plain data, built by the layer above.

The agent turns its YAML file or the operator's peer map into these objects; the core
never reads files or the network for configuration.
"""

from __future__ import annotations

from dataclasses import field
from typing import TYPE_CHECKING, Callable, Sequence

from ..records import record
from .payloads import TrafficSelector
from .proposals import ProposalSpec, engine_default_esp_proposals, engine_default_ike_proposals

if TYPE_CHECKING:
    from .auth import CertCredential, PskCredential
    from .certs import TrustStore
    from .identity import Identity


@record(frozen=True)
class Lifetime:
    """When to rekey (soft) and when the SA must be gone (hard). Seconds; 0 = never."""

    rekey_time: float
    life_time: float
    jitter: float = 0.0  # rekey happens up to this many seconds early, chosen at random
    rekey_bytes: int = 0
    life_bytes: int = 0
    rekey_packets: int = 0
    life_packets: int = 0
    #: CHILD_SAs only: delete one that carried no packet either way for this long; 0 = never.
    inactivity: float = 0.0

    def __post_init__(self) -> None:
        if self.inactivity < 0:
            raise ValueError("inactivity must be >= 0")
        if self.life_time and self.rekey_time and self.life_time < self.rekey_time:
            raise ValueError("life_time must not be shorter than rekey_time")
        if self.jitter < 0 or (self.rekey_time and self.jitter >= self.rekey_time):
            raise ValueError("jitter must be >= 0 and below rekey_time")


#: Seconds past the IKE side's longest wait that kept SAs stay (Retransmit.kept_sas_limit).
KEPT_SAS_MARGIN = 10.0


@record(frozen=True)
class Retransmit:
    """RFC 7296 §2.4 retransmission: timeout * base**n for n in 0..tries-1, then give up."""

    timeout: float = 4.0
    base: float = 1.8
    tries: int = 5

    def delays(self) -> list[float]:
        return [self.timeout * self.base ** n for n in range(self.tries + 1)]

    def kept_sas_limit(self) -> float:
        """Seconds SAs without IKE state (a restarted side's kept ones) are kept at most while
        new ones are negotiated: longer than the IKE side can take to replace them, or traffic
        would have no SA in between. A restarted side's IKE_SA_INIT and IKE_AUTH may each take
        the whole retransmission budget; a new CHILD_SA that waits for the peer's sign
        (handover) sends after one budget at most (`IkeSa.inbound_only_limit`). 175 s with
        the sidecar's default retransmissions (2 s, x1.8, 5 tries)."""
        return 2 * sum(self.delays()) + KEPT_SAS_MARGIN


@record(frozen=True)
class ChildConfig:
    name: str
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    esp_proposals: tuple[ProposalSpec, ...] = field(default_factory=lambda: tuple(engine_default_esp_proposals()))
    mode: str = "transport"  # or "tunnel"
    lifetime: Lifetime = Lifetime(rekey_time=3600, life_time=3960, jitter=360)
    tfc_padding: int = 0  # pad ESP payloads up to this size (RFC 4303 TFC); 0 = off

    def __post_init__(self) -> None:
        if self.mode not in ("transport", "tunnel"):
            raise ValueError(f"mode must be transport or tunnel, not {self.mode!r}")


@record(frozen=True)
class PeerConfig:
    """One peer (or class of peers): who we are to it, who it must be, and how we talk.

    `credential` is an `auth.PskCredential` or `auth.CertCredential`; `psks` are the keys
    we accept from the peer (several during a rotation overlap); `trust` an
    `certs.TrustStore` for certificate peers. `remote_ids` are identities or wildcard
    patterns the peer's IKE identity must match (empty: any identity the credential
    check accepts, e.g. any certificate from the trust bundle).
    """

    name: str
    local_id: Identity
    credential: PskCredential | CertCredential
    remote_ids: tuple[Identity, ...] = ()
    psks: tuple[bytes, ...] = ()
    trust: TrustStore | None = None
    ike_proposals: tuple[ProposalSpec, ...] = field(default_factory=lambda: tuple(engine_default_ike_proposals()))
    children: tuple[ChildConfig, ...] = ()
    ike_lifetime: Lifetime = Lifetime(rekey_time=14400, life_time=15840, jitter=1440)
    dpd_delay: float = 30.0  # seconds of silence before a liveness check; 0 = off
    retransmit: Retransmit = Retransmit()
    fragmentation: bool = True
    fragment_size: int = 1280  # largest IKE datagram we send once fragmentation is on
    force_encap: bool = False  # pretend to be behind a NAT so ESP goes in UDP (RFC 3948)
    keepalive_interval: float = 20.0  # NAT keepalives when we are behind a NAT
    childless: str = "allow"  # allow | force | never (RFC 6023)
    send_certreq: bool = True
    initial_contact: bool = True
    half_open_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.childless not in ("allow", "force", "never"):
            raise ValueError("childless must be allow, force or never")
        if not self.ike_proposals:
            raise ValueError("at least one IKE proposal is needed")


# Looks up the configuration for an incoming IKE_SA_INIT by (local address, remote
# address); None refuses the peer (it is outside the peer set).
ConfigLookup = Callable[[str, str], "PeerConfig | None"]


def single_peer_lookup(config: PeerConfig, remote_addresses: Sequence[str] = ()) -> ConfigLookup:
    """A lookup that answers one config, optionally only for some remote addresses."""
    allowed = frozenset(remote_addresses)

    def lookup(local: str, remote: str) -> PeerConfig | None:
        return config if not allowed or remote in allowed else None

    return lookup
