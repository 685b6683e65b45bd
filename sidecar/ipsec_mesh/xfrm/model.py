"""What callers say to the XFRM layer and what it answers: plain dataclasses.

Addresses are `ipaddress` objects. Nothing here knows about netlink; the codec
turns these into kernel structs and back. `Aead` never shows its key in repr.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import field

from ..records import record
from .constants import (
    IPPROTO_ESP,
    XFRM_INF,
    XFRMA_REPLAY_ESN_MAX,
    Action,
    Direction,
    Level,
    Mode,
)
from .errors import XfrmSpecError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Kernel AEAD names, their accepted key||salt lengths (bytes) and ICV sizes (bits).
AEAD_KEY_LENGTHS = {
    "rfc4106(gcm(aes))": (20, 28, 36),  # AES-128/192/256 + 4-byte salt (RFC 4106)
    "rfc7539esp(chacha20,poly1305)": (36,),  # 256-bit key + 4-byte salt (RFC 7634)
}
AEAD_ICV_BITS = {
    "rfc4106(gcm(aes))": (64, 96, 128),
    "rfc7539esp(chacha20,poly1305)": (128,),
}


def family_of(address: IPAddress | IPNetwork) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


def ip_address(value: str | IPAddress) -> IPAddress:
    return ipaddress.ip_address(value) if isinstance(value, str) else value


def ip_network(value: str | IPAddress | IPNetwork) -> IPNetwork:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ipaddress.ip_network(value)
    return ipaddress.ip_network(value, strict=True) if isinstance(value, str) else value


@record(frozen=True)
class Selector:
    """Traffic a policy or SA applies to: prefixes, protocol, ports (0 = any)."""

    src: IPNetwork
    dst: IPNetwork
    proto: int = 0
    sport: int = 0
    dport: int = 0
    ifindex: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", ip_network(self.src))
        object.__setattr__(self, "dst", ip_network(self.dst))
        if self.src.version != self.dst.version:
            raise XfrmSpecError("Selector", "selector mixes IPv4 and IPv6")
        for port in (self.sport, self.dport):
            if not 0 <= port <= 0xFFFF:
                raise XfrmSpecError("Selector", f"port {port} out of range")
        if not 0 <= self.proto <= 255:
            raise XfrmSpecError("Selector", f"protocol {self.proto} out of range")

    @property
    def family(self) -> int:
        return family_of(self.src)

    @classmethod
    def host_pair(cls, src: str | IPAddress, dst: str | IPAddress, proto: int = 0) -> Selector:
        """Host-to-host selector, the usual one for transport mode."""
        return cls(ip_network(ip_address(src)), ip_network(ip_address(dst)), proto)


@record(frozen=True)
class Mark:
    """An XFRM mark: matches skb marks where (skb_mark & mask) == value."""

    value: int
    mask: int = 0xFFFFFFFF


@record(frozen=True)
class Lifetime:
    """xfrm_lifetime_cfg: soft limits raise EXPIRE(hard=False), hard ones delete.

    Seconds of 0 mean "no time limit"; byte/packet limits default to infinite.
    """

    soft_bytes: int = XFRM_INF
    hard_bytes: int = XFRM_INF
    soft_packets: int = XFRM_INF
    hard_packets: int = XFRM_INF
    soft_add_seconds: int = 0
    hard_add_seconds: int = 0
    soft_use_seconds: int = 0
    hard_use_seconds: int = 0


@record(frozen=True)
class LifetimeCurrent:
    bytes: int = 0
    packets: int = 0
    add_time: int = 0
    use_time: int = 0


@record(frozen=True)
class Aead:
    """An AEAD transform by kernel name; `key` is key||salt. Never printed."""

    name: str
    key: bytes = field(repr=False)
    icv_bits: int = 128

    def __post_init__(self) -> None:
        if self.name not in AEAD_KEY_LENGTHS:
            raise XfrmSpecError("Aead", f"unsupported AEAD {self.name!r}")
        if len(self.key) not in AEAD_KEY_LENGTHS[self.name]:
            raise XfrmSpecError("Aead", f"{self.name} needs key||salt of {AEAD_KEY_LENGTHS[self.name]} bytes")
        if self.icv_bits not in AEAD_ICV_BITS[self.name]:
            raise XfrmSpecError("Aead", f"{self.name} does not support a {self.icv_bits}-bit ICV")

    def __repr__(self) -> str:
        return f"Aead(name={self.name!r}, key=<{len(self.key)} bytes hidden>, icv_bits={self.icv_bits})"


@record(frozen=True)
class UdpEncap:
    """ESP-in-UDP (RFC 3948) ports for NAT traversal."""

    sport: int = 4500
    dport: int = 4500


@record(frozen=True)
class SaSpec:
    """An SA to install. `reqid` must come from `ownership.owned_reqid()`."""

    src: IPAddress
    dst: IPAddress
    spi: int
    reqid: int
    aead: Aead
    proto: int = IPPROTO_ESP
    mode: Mode = Mode.TRANSPORT
    selector: Selector | None = None  # None: host-to-host src -> dst, any protocol
    replay_window: int = 128  # packets; 0 for outbound SAs is fine
    esn: bool = True
    lifetime: Lifetime = Lifetime()
    encap: UdpEncap | None = None
    mark: Mark | None = None  # SA mark: outbound lookup only picks it for marked flows
    output_mark: Mark | None = None  # XFRMA_SET_MARK: mark put on packets after transform
    tfc_pad: int = 0  # XFRMA_TFCPAD, pad ESP payload up to this size (RFC 4303 TFC)
    flags: int = 0  # extra XFRM_STATE_* bits (ESN is set from `esn`)
    extra_flags: int = 0  # XFRMA_SA_EXTRA_FLAGS
    acquire_seq: int = 0  # Acquire.seq this SA answers: the kernel retires that placeholder

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", ip_address(self.src))
        object.__setattr__(self, "dst", ip_address(self.dst))
        if self.src.version != self.dst.version:
            raise XfrmSpecError("SaSpec", "SA mixes IPv4 and IPv6 endpoints")
        if not 0 < self.spi <= 0xFFFFFFFF:
            raise XfrmSpecError("SaSpec", "SPI must be a non-zero 32-bit value")
        if not 0 <= self.replay_window <= XFRMA_REPLAY_ESN_MAX:
            raise XfrmSpecError("SaSpec", f"replay window must be 0..{XFRMA_REPLAY_ESN_MAX}")

    @property
    def family(self) -> int:
        return family_of(self.src)

    def effective_selector(self) -> Selector:
        return self.selector or Selector.host_pair(self.src, self.dst)


@record(frozen=True)
class SaInfo:
    """An SA as the kernel reports it. Key material is deliberately not kept."""

    src: IPAddress
    dst: IPAddress
    spi: int
    proto: int
    mode: Mode
    reqid: int
    selector: Selector
    replay_window: int
    flags: int
    esn: bool
    aead_name: str | None
    icv_bits: int | None
    lifetime: Lifetime
    current: LifetimeCurrent
    encap: UdpEncap | None
    mark: Mark | None
    output_mark: Mark | None
    tfc_pad: int
    larval: bool  # allocated SPI without keys (XFRM_MSG_ALLOCSPI or a pending ACQUIRE)
    owned: bool


@record(frozen=True)
class Template:
    """One transform a policy demands (xfrm_user_tmpl).

    For transport mode the endpoints are left out (the kernel takes the packet's
    addresses); tunnel mode needs `src`/`dst`.
    """

    reqid: int
    proto: int = IPPROTO_ESP
    mode: Mode = Mode.TRANSPORT
    level: Level = Level.REQUIRED
    src: IPAddress | None = None
    dst: IPAddress | None = None
    spi: int = 0

    def __post_init__(self) -> None:
        if self.src is not None:
            object.__setattr__(self, "src", ip_address(self.src))
        if self.dst is not None:
            object.__setattr__(self, "dst", ip_address(self.dst))
        if self.mode == Mode.TUNNEL and (self.src is None or self.dst is None):
            raise XfrmSpecError("Template", "a tunnel-mode template needs src and dst")


@record(frozen=True)
class PolicySpec:
    """A policy to install. `index` 0 lets the kernel choose one."""

    selector: Selector
    direction: Direction
    action: Action = Action.ALLOW
    priority: int = 0
    templates: tuple[Template, ...] = ()
    mark: Mark | None = None  # narrows the policy to marked packets
    index: int = 0
    lifetime: Lifetime = Lifetime()
    flags: int = 0  # XFRM_POLICY_LOCALOK / XFRM_POLICY_ICMP

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", tuple(self.templates))
        try:
            object.__setattr__(self, "direction", Direction(self.direction))
            object.__setattr__(self, "action", Action(self.action))
        except (ValueError, TypeError) as exc:
            raise XfrmSpecError("PolicySpec", str(exc)) from None
        if not isinstance(self.priority, int) or not 0 <= self.priority <= 0xFFFFFFFF:
            raise XfrmSpecError("PolicySpec", f"priority {self.priority!r} is not a u32")
        if not all(isinstance(template, Template) for template in self.templates):
            raise XfrmSpecError("PolicySpec", "templates must be Template objects")
        if self.index and self.index & 7 != self.direction:
            raise XfrmSpecError("PolicySpec", "a policy index encodes its direction in the low 3 bits")


@record(frozen=True)
class PolicyInfo:
    selector: Selector
    direction: Direction
    action: Action
    priority: int
    index: int
    templates: tuple[Template, ...]
    mark: Mark | None
    lifetime: Lifetime
    current: LifetimeCurrent
    flags: int
    owned: bool
