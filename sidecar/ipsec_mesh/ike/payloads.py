"""IKEv2 payloads as plain data (RFC 7296 section 3).

These classes are the vocabulary shared by the codec (`message.py`, which turns
them into bytes and back) and the state machine. They hold decoded values only;
no crypto, no behaviour beyond small helpers.
"""

from __future__ import annotations

import ipaddress
from dataclasses import field
from typing import TypeVar

from ..records import record
from .constants import (
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
    TsType,
)

P = TypeVar("P")


@record(frozen=True)
class Transform:
    type: int  # a TransformType; unknown values are kept as int
    id: int
    key_length: int | None = None  # the KEY_LENGTH attribute, in bits, when present


@record(frozen=True)
class Proposal:
    number: int  # 1-based, as on the wire
    protocol: int  # a ProtocolId; unknown values are kept as int
    spi: bytes  # empty for IKE in IKE_SA_INIT, 8 bytes for IKE rekey, 4 for ESP/AH
    transforms: tuple[Transform, ...]

    def of_type(self, ttype: TransformType) -> tuple[Transform, ...]:
        return tuple(t for t in self.transforms if t.type == ttype)


@record
class SaPayload:
    proposals: list[Proposal]


@record
class KePayload:
    group: int  # a KeId value; unknown values are kept as int
    data: bytes


@record
class IdPayload:
    """IDi or IDr. `data` is the identification data as on the wire."""

    id_type: int  # an IdType value; unknown values are kept as int
    data: bytes

    def body(self) -> bytes:
        """ID type + 3 reserved bytes + data: what RFC 7296 section 2.15 signs (RestOfIDPayload)."""
        return bytes([self.id_type, 0, 0, 0]) + self.data


@record
class CertPayload:
    encoding: int  # CertEncoding
    data: bytes


@record
class CertReqPayload:
    encoding: int
    data: bytes  # concatenated SHA-1 hashes of trusted CA SubjectPublicKeyInfo


@record
class AuthPayload:
    method: int  # AuthMethod
    data: bytes


@record
class NoncePayload:
    data: bytes  # 16..256 bytes (checked by the codec)


@record
class NotifyPayload:
    type: int  # NotifyType; unknown values kept as int
    protocol: int = ProtocolId.NONE  # a ProtocolId; unknown values kept as int
    spi: bytes = b""
    data: bytes = b""

    @property
    def is_error(self) -> bool:
        return self.type < 16384


@record
class DeletePayload:
    protocol: int  # a ProtocolId; unknown values are refused by the codec
    spis: list[bytes]  # empty for IKE; 4-byte SPIs for ESP/AH


@record
class VendorIdPayload:
    data: bytes


@record(frozen=True)
class TrafficSelector:
    ts_type: TsType
    ip_protocol: int  # 0 = any
    start_port: int
    end_port: int
    start_addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    end_addr: ipaddress.IPv4Address | ipaddress.IPv6Address

    @classmethod
    def for_network(cls, network: str | ipaddress.IPv4Network | ipaddress.IPv6Network,
                    ip_protocol: int = 0, start_port: int = 0, end_port: int = 65535
                    ) -> "TrafficSelector":
        net = ipaddress.ip_network(network, strict=False)
        ts_type = TsType.TS_IPV4_ADDR_RANGE if net.version == 4 else TsType.TS_IPV6_ADDR_RANGE
        return cls(ts_type, ip_protocol, start_port, end_port,
                   net.network_address, net.broadcast_address)

    @classmethod
    def for_address(cls, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
                    ip_protocol: int = 0, start_port: int = 0, end_port: int = 65535
                    ) -> "TrafficSelector":
        addr = address if isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)) \
            else ipaddress.ip_address(address)
        # The one-address range, built directly (this runs for every CHILD_SA negotiated).
        ts_type = TsType.TS_IPV4_ADDR_RANGE if addr.version == 4 else TsType.TS_IPV6_ADDR_RANGE
        return cls(ts_type, ip_protocol, start_port, end_port, addr, addr)


@record
class TsPayload:
    """TSi or TSr."""

    selectors: list[TrafficSelector]


@record
class ConfigAttribute:
    type: int
    value: bytes


@record
class CpPayload:
    cfg_type: int  # 1 REQUEST, 2 REPLY, 3 SET, 4 ACK
    attributes: list[ConfigAttribute]


@record
class EapPayload:
    data: bytes


@record
class EncryptedPayload:
    """SK as received: still encrypted. `first_inner` is the Next Payload of the SK header."""

    first_inner: int
    raw: bytes  # IV || ciphertext || ICV


@record
class EncryptedFragment:
    """SKF (RFC 7383) as received: still encrypted."""

    first_inner: int  # 0 except in fragment 1
    number: int
    total: int
    raw: bytes  # IV || ciphertext || ICV


@record
class UnknownPayload:
    """A non-critical payload type we do not understand: kept so it can be skipped."""

    type: int
    critical: bool
    data: bytes


@record
class Message:
    """One IKE message. For a protected message, `payloads` are the inner (decrypted) payloads."""

    spi_i: bytes
    spi_r: bytes
    exchange: int  # ExchangeType; unknown values kept as int
    is_initiator: bool  # the I flag: sender is the original initiator of the IKE SA
    is_response: bool  # the R flag
    message_id: int
    payloads: list[Payload] = field(default_factory=list)
    # The decrypted inner payload chain as received (RFC 9242 IntAuth needs the exact bytes).
    inner_plain: bytes = field(default=b"", repr=False, compare=False)
    inner_first: int = field(default=0, repr=False, compare=False)

    # -- small lookup helpers used everywhere by the state machine ---------------
    def first(self, cls: type[P]) -> P | None:  # exact class or subclass
        for p in self.payloads:
            if isinstance(p, cls):
                return p
        return None

    def all(self, cls: type[P]) -> list[P]:
        return [p for p in self.payloads if isinstance(p, cls)]

    # NotifyPayload has no subclasses: a class identity test (the exchanges look up several
    # notifies in every message) instead of isinstance.
    def notify(self, ntype: NotifyType) -> NotifyPayload | None:
        for p in self.payloads:
            if p.__class__ is NotifyPayload and p.type == ntype:
                return p
        return None

    def notifies(self, ntype: NotifyType) -> list[NotifyPayload]:
        return [p for p in self.payloads if p.__class__ is NotifyPayload and p.type == ntype]


class IdiPayload(IdPayload):
    """IDi: the initiator's identity."""


class IdrPayload(IdPayload):
    """IDr: the responder's identity."""


class TsiPayload(TsPayload):
    """TSi: the initiator's traffic selectors."""


class TsrPayload(TsPayload):
    """TSr: the responder's traffic selectors."""


Payload = (
    SaPayload | KePayload | IdiPayload | IdrPayload | CertPayload | CertReqPayload | AuthPayload
    | NoncePayload | NotifyPayload | DeletePayload | VendorIdPayload | TsiPayload | TsrPayload
    | CpPayload | EapPayload | EncryptedPayload | EncryptedFragment | UnknownPayload
)


#: The wire type of each payload class (UnknownPayload carries its own).
TYPE_OF_CLASS: dict[type, int] = {
    IdiPayload: PayloadType.IDi,
    IdrPayload: PayloadType.IDr,
    TsiPayload: PayloadType.TSi,
    TsrPayload: PayloadType.TSr,
    SaPayload: PayloadType.SA,
    KePayload: PayloadType.KE,
    CertPayload: PayloadType.CERT,
    CertReqPayload: PayloadType.CERTREQ,
    AuthPayload: PayloadType.AUTH,
    NoncePayload: PayloadType.NONCE,
    NotifyPayload: PayloadType.NOTIFY,
    DeletePayload: PayloadType.DELETE,
    VendorIdPayload: PayloadType.VENDOR_ID,
    CpPayload: PayloadType.CP,
    EapPayload: PayloadType.EAP,
    EncryptedPayload: PayloadType.SK,
    EncryptedFragment: PayloadType.SKF,
}


def payload_type_of(payload: object) -> int:
    """The wire payload type of a payload object."""
    if isinstance(payload, UnknownPayload):
        return payload.type
    try:
        return TYPE_OF_CLASS[type(payload)]
    except KeyError:
        raise TypeError(f"not a payload: {type(payload).__name__}") from None


