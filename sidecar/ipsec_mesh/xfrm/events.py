"""Kernel notifications: ACQUIRE, EXPIRE, POLEXPIRE, MAPPING, and lost events.

Each event says whether it concerns an object we own, so the agent can ignore
other software's traffic in the same namespace.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from ..records import record
from . import structs
from .codec import decode_message, get_selector, get_templates, policy_from, sa_from, unpack_address
from .constants import MsgType
from .model import IPAddress, PolicyInfo, SaInfo, Selector, Template
from .ownership import is_owned_reqid

if TYPE_CHECKING:
    from .structs import Message


@record(frozen=True)
class Acquire:
    """A packet hit a policy whose template has no SA: negotiate one.

    `template` is the first template (the one ipsec-mesh policies have);
    `src`/`dst` are the addresses the SA must be negotiated for.
    """

    selector: Selector
    policy: PolicyInfo
    template: Template | None
    templates: tuple[Template, ...]
    src: IPAddress
    dst: IPAddress
    proto: int
    seq: int

    @property
    def owned(self) -> bool:
        return self.policy.owned


@record(frozen=True)
class Expire:
    """An SA reached a soft limit (rekey now) or a hard one (it is gone)."""

    sa: SaInfo
    hard: bool

    @property
    def owned(self) -> bool:
        return self.sa.owned


@record(frozen=True)
class PolExpire:
    policy: PolicyInfo
    hard: bool

    @property
    def owned(self) -> bool:
        return self.policy.owned


@record(frozen=True)
class Mapping:
    """A NAT-T peer's outer address or port changed (XFRM_MSG_MAPPING)."""

    dst: IPAddress
    spi: int
    proto: int
    reqid: int
    old_src: IPAddress
    old_sport: int
    new_src: IPAddress
    new_sport: int

    @property
    def owned(self) -> bool:
        return is_owned_reqid(self.reqid)


@record(frozen=True)
class EventsLost:
    """The event socket overflowed (ENOBUFS): resynchronise from dumps."""

    owned = True


XfrmEvent = Acquire | Expire | PolExpire | Mapping | EventsLost


def decode_event(msg_type: int, data: bytes) -> XfrmEvent | None:
    """The event in one netlink message, or None for types we do not follow."""
    if msg_type == MsgType.ACQUIRE:
        return _acquire(decode_message(structs.UserAcquireMsg, data, "acquire event"))
    if msg_type == MsgType.EXPIRE:
        message = decode_message(structs.UserExpireMsg, data, "expire event")
        return Expire(sa_from(message), bool(message["hard"]))
    if msg_type == MsgType.POLEXPIRE:
        message = decode_message(structs.UserPolExpireMsg, data, "polexpire event")
        return PolExpire(policy_from(message), bool(message["hard"]))
    if msg_type == MsgType.MAPPING:
        return _mapping(decode_message(structs.UserMappingMsg, data, "mapping event"))
    return None


def _acquire(message: Message) -> Acquire:
    selector, _ = get_selector(message, "sel_", 0)
    policy = policy_from(message, "pol_")
    templates = get_templates(message, selector.family)
    return Acquire(
        selector=selector,
        policy=policy,
        template=templates[0] if templates else None,
        templates=templates,
        src=unpack_address(message["saddr"], selector.family),
        dst=unpack_address(message["id_daddr"], selector.family),
        proto=message["id_proto"],
        seq=message["seq"],
    )


def _mapping(message: Message) -> Mapping:
    family = message["id_family"] or socket.AF_INET
    return Mapping(
        dst=unpack_address(message["id_daddr"], family),
        spi=message["id_spi"],
        proto=message["id_proto"],
        reqid=message["reqid"],
        old_src=unpack_address(message["old_saddr"], family),
        old_sport=message["old_sport"],
        new_src=unpack_address(message["new_saddr"], family),
        new_sport=message["new_sport"],
    )
