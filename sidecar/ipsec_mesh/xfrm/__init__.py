"""Layer 2: the XFRM data plane (SAs, policies, kernel events) over our own netlink codec.

See docs/xfrm.md for what is installed, the ownership scheme and rekey ordering.
"""

from .api import DEFAULT_EVENT_GROUPS, FlushResult, Xfrm
from .constants import IPPROTO_ESP, Action, Direction, Group, Level, Mode
from .errors import XfrmError, XfrmParseError, XfrmSpecError
from .events import Acquire, EventsLost, Expire, Mapping, PolExpire, XfrmEvent
from .model import (
    Aead,
    Lifetime,
    LifetimeCurrent,
    Mark,
    PolicyInfo,
    PolicySpec,
    SaInfo,
    SaSpec,
    Selector,
    Template,
    UdpEncap,
)
from .ownership import LARVAL_REQID, POLICY_TAG, is_owned_reqid, owned_reqid
from .policies import BYPASS_PRIORITY, PEER_PRIORITY, neighbor_discovery_bypass, peer_priority
from .sockopts import set_udp_encap, socket_bypass

__all__ = [
    "DEFAULT_EVENT_GROUPS",
    "FlushResult",
    "Xfrm",
    "IPPROTO_ESP",
    "Action",
    "Direction",
    "Group",
    "Level",
    "Mode",
    "XfrmError",
    "XfrmParseError",
    "XfrmSpecError",
    "Acquire",
    "EventsLost",
    "Expire",
    "Mapping",
    "PolExpire",
    "XfrmEvent",
    "Aead",
    "Lifetime",
    "LifetimeCurrent",
    "Mark",
    "PolicyInfo",
    "PolicySpec",
    "SaInfo",
    "SaSpec",
    "Selector",
    "Template",
    "UdpEncap",
    "LARVAL_REQID",
    "POLICY_TAG",
    "is_owned_reqid",
    "owned_reqid",
    "BYPASS_PRIORITY",
    "PEER_PRIORITY",
    "neighbor_discovery_bypass",
    "peer_priority",
    "set_udp_encap",
    "socket_bypass",
]
