"""IKEv2, sans-IO (RFC 7296): what the layers above use. See docs/ike.md.

The engine is `IkeEndpoint`: feed it datagrams and ticks with the time, drain its events
(install SAs first) and then its datagrams. The layer above configures it with
`PeerConfig`/`ChildConfig` and reacts to the events listed here. Everything else in this
package (codec, crypto, exchanges, task manager) is internal and may change.
"""

from .auth import CertCredential, PskCredential
from .certificate import Certificate, certificates_from_pem
from .certs import TrustStore
from .config import ChildConfig, ConfigLookup, Lifetime, PeerConfig, Retransmit, single_peer_lookup
from .constants import NON_ESP_MARKER, EncrId, ExchangeType, KeId, NotifyType, ProtocolId, notify_name
from .csr import csr_pem
from .der import DerError
from .endpoint import DROP_COUNTERS, IkeEndpoint
from .errors import IkeError
from .events import (
    ChildSaActivityQuery,
    ChildSaDeleted,
    ChildSaEncapChanged,
    ChildSaFailed,
    ChildSaInboundQuery,
    ChildSaInfo,
    ChildSaInstallInbound,
    ChildSaInstallOutbound,
    ChildSaKeys,
    ChildSaOutboundRetired,
    ChildSaRef,
    Event,
    IkeSaClosed,
    IkeSaEstablished,
    NegotiationFailed,
    PeerIdentityMismatch,
    UdpEncap,
)
from .identity import Identity, name_equal
from .message import strip_non_esp_marker
from .payloads import TrafficSelector
from .proposals import ENCR_NAMES, KE_NAMES, PRF_NAMES, ProposalSpec, ProposalSyntaxError, parse_proposal
from .sa import Datagram, IkeSa
from .state import IkeState

__all__ = [
    "CertCredential", "PskCredential", "TrustStore", "Certificate", "certificates_from_pem", "DerError", "name_equal", "csr_pem",
    "ChildConfig", "ConfigLookup", "Lifetime", "PeerConfig", "Retransmit", "single_peer_lookup",
    "NON_ESP_MARKER", "EncrId", "ExchangeType", "KeId", "NotifyType", "ProtocolId", "notify_name",
    "DROP_COUNTERS", "IkeEndpoint", "IkeError",
    "ChildSaActivityQuery", "ChildSaInboundQuery", "ChildSaDeleted", "ChildSaEncapChanged", "ChildSaFailed", "ChildSaInfo", "ChildSaInstallInbound",
    "ChildSaInstallOutbound", "ChildSaKeys", "ChildSaOutboundRetired", "ChildSaRef", "Event", "IkeSaClosed",
    "IkeSaEstablished", "NegotiationFailed", "PeerIdentityMismatch", "UdpEncap",
    "Identity", "strip_non_esp_marker", "TrafficSelector",
    "ENCR_NAMES", "KE_NAMES", "PRF_NAMES", "ProposalSpec", "ProposalSyntaxError", "parse_proposal",
    "Datagram", "IkeSa", "IkeState",
]
