"""`Xfrm`: SAs, policies and kernel events of one network namespace.

Thread-safe (one lock per request socket). On an event loop (the sidecar's own,
ipsec_mesh.aio, or asyncio's), see docs/xfrm.md: requests take microseconds, so the
agent calls them inline; events are read with `loop.add_reader(x.fileno(), ...)`
and `read_events()`, which never blocks.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from ..records import record
from . import codec, packed, sockopts, structs
from .channel import NetlinkChannel, NetnsRef, Reply, close_quietly
from .constants import IPPROTO_ESP, Direction, Group, MsgType
from .errors import XfrmError, XfrmSpecError, esp_unavailable_hint
from .events import EventsLost, XfrmEvent, decode_event
from .model import IPAddress, Mark, PolicyInfo, PolicySpec, SaInfo, SaSpec, Selector, ip_address
from .ownership import LARVAL_REQID, is_owned_reqid

if TYPE_CHECKING:
    from .structs import Message

DEFAULT_EVENT_GROUPS = (Group.ACQUIRE, Group.EXPIRE, Group.MAPPING)  # EXPIRE carries POLEXPIRE
NOT_FOUND = (errno.ENOENT, errno.ESRCH)
SPI_MIN = 0x100  # 1..255 are reserved by IANA (RFC 4303)


@record(frozen=True)
class FlushResult:
    policies: int
    sas: int
    larval_left: int  # kernel ACQUIRE placeholders (SPI 0): not deletable, expire on their own


class Xfrm:
    """XFRM state and policy database of one network namespace.

    `netns`: a name under /run/netns, a path such as /proc/PID/ns/net, an open
    namespace fd, or None for the caller's namespace.
    """

    def __init__(self, netns: NetnsRef = None):
        self.netns = netns
        self._lock = threading.Lock()
        self._requests = NetlinkChannel(netns)
        self._events: NetlinkChannel | None = None
        self._pending: deque[XfrmEvent] = deque()

    def close(self) -> None:
        close_quietly(self._requests)
        close_quietly(self._events)
        self._events = None

    def __enter__(self) -> Xfrm:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ SAs

    def add_sa(self, sa: SaSpec) -> None:
        """Install a new SA; XfrmError(EEXIST) if (dst, SPI, proto) exists."""
        self._install_sa(sa, MsgType.NEWSA, "add_sa")

    def update_sa(self, sa: SaSpec) -> None:
        """Replace an SA, or fill in the larval SA that alloc_spi() created."""
        self._install_sa(sa, MsgType.UPDSA, "update_sa")

    def _install_sa(self, sa: SaSpec, msg_type: MsgType, operation: str) -> None:
        require_owned_reqid(sa.reqid, operation)
        message = codec.sa_message(sa, operation)
        try:
            with self._lock:
                self._requests.request(message, msg_type, operation)
        except XfrmError as exc:
            hint = esp_unavailable_hint(exc)
            if not hint:
                raise
            detail = f"{exc.detail}: {hint}" if exc.detail else hint
            raise XfrmError(operation, exc.errno, detail) from None

    def get_sa(
        self, dst: IPAddress | str, spi: int, proto: int = IPPROTO_ESP, mark: Mark | None = None
    ) -> SaInfo | None:
        message = codec.sa_id_message(ip_address(dst), spi, proto, mark)
        reply = self._query_if_exists(message, MsgType.GETSA, "get_sa")
        return None if reply is None else decode_sa_reply(reply, "get_sa")

    def delete_sa(
        self, dst: IPAddress | str, spi: int, proto: int = IPPROTO_ESP, mark: Mark | None = None
    ) -> bool:
        """Delete one of our SAs. False if it does not exist; EPERM if it is not ours."""
        current = self.get_sa(dst, spi, proto, mark)
        if current is None:
            return False
        if not current.owned:
            raise XfrmError("delete_sa", errno.EPERM, f"SA {spi:#x} is not owned by ipsec-mesh")
        message = codec.sa_id_message(ip_address(dst), spi, proto, mark)
        return self._delete(message, MsgType.DELSA, "delete_sa")

    def dump_sas(self) -> list[SaInfo]:
        with self._lock:
            replies = self._requests.dump(
                codec.dump_request(structs.UserSaInfoMsg), MsgType.GETSA, "dump_sas"
            )
        return [decode_sa_reply(reply, "dump_sas") for reply in replies]

    def alloc_spi(
        self,
        src: IPAddress | str,
        dst: IPAddress | str,
        proto: int = IPPROTO_ESP,
        min: int = SPI_MIN,  # noqa: A002 - the names the kernel struct uses
        max: int = 0xFFFFFFFF,  # noqa: A002
        reqid: int = LARVAL_REQID,
    ) -> int:
        """Reserve an inbound SPI (a larval SA, replaced by update_sa() later)."""
        require_owned_reqid(reqid, "alloc_spi")
        message = codec.spi_message(ip_address(src), ip_address(dst), proto, reqid, min, max)
        with self._lock:
            reply = self._requests.query(message, MsgType.ALLOCSPI, "alloc_spi")
        return decode_sa_reply(reply, "alloc_spi").spi

    # ------------------------------------------------------------------ policies

    def add_policy(self, policy: PolicySpec) -> None:
        """Install a new policy; XfrmError(EEXIST) if one with this selector exists."""
        raise_first(self.add_policies([policy]))

    def update_policy(self, policy: PolicySpec) -> None:
        """Install or replace the policy with this selector, direction and mark."""
        raise_first(self.update_policies([policy]))

    def add_policies(self, policies: Sequence[PolicySpec]) -> list[XfrmError | None]:
        """Batched add_policy: many requests per datagram; one result per policy."""
        return self._send_policies(policies, MsgType.NEWPOLICY, "add_policy")

    def update_policies(self, policies: Sequence[PolicySpec]) -> list[XfrmError | None]:
        return self._send_policies(policies, MsgType.UPDPOLICY, "update_policy")

    def _send_policies(
        self, policies: Sequence[PolicySpec], msg_type: MsgType, operation: str
    ) -> list[XfrmError | None]:
        for policy in policies:
            for template in policy.templates:
                require_owned_reqid(template.reqid, operation)
        requests = [(packed.policy_body(policy), msg_type, 0) for policy in policies]
        with self._lock:
            return self._requests.batch(requests, operation)

    def get_policy(
        self, selector: Selector, direction: Direction, mark: Mark | None = None
    ) -> PolicyInfo | None:
        """Our policy with this selector, direction and mark, if installed."""
        message = packed.policy_id_body(selector, direction, mark)
        reply = self._query_if_exists(message, MsgType.GETPOLICY, "get_policy")
        return None if reply is None else decode_policy_reply(reply, "get_policy")

    def delete_policy(
        self, selector: Selector, direction: Direction, mark: Mark | None = None
    ) -> bool:
        """Delete our policy (the selector carries our tag, so only ours can match).

        Returns False if there was none.
        """
        message = packed.policy_id_body(selector, direction, mark)
        return self._delete(message, MsgType.DELPOLICY, "delete_policy")

    def delete_policies(
        self, policies: Sequence[tuple[Selector, Direction, Mark | None]]
    ) -> list[XfrmError | None]:
        """Batched delete_policy by (selector, direction, mark): one result per policy,
        XfrmError(ENOENT) for one that was not there."""
        requests = [
            (packed.policy_id_body(selector, direction, mark), MsgType.DELPOLICY, 0)
            for selector, direction, mark in policies
        ]
        with self._lock:
            return self._requests.batch(requests, "delete_policy")

    def dump_policies(self) -> list[PolicyInfo]:
        with self._lock:
            replies = self._requests.dump(
                codec.dump_request(structs.UserPolicyInfoMsg), MsgType.GETPOLICY, "dump_policies"
            )
        return [decode_policy_reply(reply, "dump_policies") for reply in replies]

    def _query_if_exists(self, message: Message | bytes, msg_type: MsgType, operation: str) -> Reply | None:
        try:
            with self._lock:
                return self._requests.query(message, msg_type, operation)
        except XfrmError as exc:
            if exc.errno in NOT_FOUND:
                return None
            raise

    def _delete(self, message: Message | bytes, msg_type: MsgType, operation: str) -> bool:
        try:
            with self._lock:
                self._requests.request(message, msg_type, operation)
        except XfrmError as exc:
            if exc.errno in NOT_FOUND:
                return False
            raise
        return True

    # ------------------------------------------------------------------ sockets

    @staticmethod
    def socket_bypass(sock: socket.socket) -> None:
        sockopts.socket_bypass(sock)

    @staticmethod
    def set_udp_encap(sock: socket.socket) -> None:
        sockopts.set_udp_encap(sock)

    # ------------------------------------------------------------------ events

    def subscribe(self, groups: Iterable[Group] = DEFAULT_EVENT_GROUPS) -> Iterator[XfrmEvent]:
        """Join the multicast groups (once); returns a blocking event iterator.

        Asyncio callers ignore the iterator and use fileno() + read_events().
        """
        wanted = [int(group) for group in groups]
        if self._events is None:
            self._events = NetlinkChannel(self.netns, groups=wanted)
        else:
            self._events.join(wanted)
        return self.iter_events()

    def fileno(self) -> int:
        """The event socket's descriptor, for select/poll/loop.add_reader."""
        return self._subscribed().fileno()

    def read_events(self) -> list[XfrmEvent]:
        """Every event queued now, without blocking; EventsLost first if some were dropped."""
        self._fill_pending()
        events = list(self._pending)
        self._pending.clear()
        return events

    def iter_events(self, timeout: float | None = None) -> Iterator[XfrmEvent]:
        """Yield events as they come; stop after `timeout` seconds without any.

        Leaving the loop early loses nothing: unread events stay queued.
        """
        channel = self._subscribed()
        while self._pending or channel.wait_readable(timeout):
            self._fill_pending()
            while self._pending:
                yield self._pending.popleft()

    def _fill_pending(self) -> None:
        replies, overflowed = self._subscribed().read_pending()
        if overflowed:
            self._pending.append(EventsLost())
        for reply in replies:
            event = decode_event(reply.msg_type, reply.data)
            if event is not None:
                self._pending.append(event)

    def _subscribed(self) -> NetlinkChannel:
        if self._events is None:
            raise XfrmError("events", errno.ENOTCONN, "call subscribe() first")
        return self._events

    # ------------------------------------------------------------------ cleanup

    def flush_owned(self) -> FlushResult:
        """Delete every policy and SA that carries our tags, and nothing else."""
        ours = [policy for policy in self.dump_policies() if policy.owned]
        deletions: list[tuple[Message | bytes, int, int]] = [
            (packed.policy_id_body(None, p.direction, p.mark, index=p.index), MsgType.DELPOLICY, 0)
            for p in ours
        ]
        sas = [sa for sa in self.dump_sas() if sa.owned]
        deletable = [sa for sa in sas if sa.spi]
        deletions += [
            (codec.sa_id_message(sa.dst, sa.spi, sa.proto, sa.mark), MsgType.DELSA, 0)
            for sa in deletable
        ]
        with self._lock:
            results = self._requests.batch(deletions, "flush_owned")
        for result in results:
            if result is not None and result.errno not in NOT_FOUND:
                raise result
        return FlushResult(len(ours), len(deletable), len(sas) - len(deletable))


def require_owned_reqid(reqid: int, operation: str) -> None:
    if not is_owned_reqid(reqid):
        raise XfrmSpecError(operation, f"reqid {reqid:#x} is outside the ipsec-mesh band")


def raise_first(results: list[XfrmError | None]) -> None:
    for result in results:
        if result is not None:
            raise result


def decode_sa_reply(reply: Reply, operation: str) -> SaInfo:
    return codec.sa_from(codec.decode_message(structs.UserSaInfoMsg, reply.data, operation))


def decode_policy_reply(reply: Reply, operation: str) -> PolicyInfo:
    return codec.policy_from(codec.decode_message(structs.UserPolicyInfoMsg, reply.data, operation))
