"""A NETLINK_XFRM socket in a chosen network namespace, and request/reply on it.

Why not pyroute2's `NetlinkSocket` transport: in pyroute2 0.9 its sync API
drives a private asyncio loop with `run_until_complete`, which fails when
called from a coroutine of the agent's running loop, and it keeps one socket
per thread. We frame messages ourselves (netlink.py, structs.py), enter namespaces
with netns.py, and drive one plain socket ourselves: blocking with a timeout for
requests, non-blocking for events, so an event loop can `add_reader()` it.

Namespace entry: `setns(2)` changes the calling *thread's* namespace only, so
a short-lived helper thread enters the target namespace, creates the socket
and exits. A socket stays bound to the namespace it was created in. No fork,
nothing for the event loop to notice.
"""

from __future__ import annotations

import errno
import itertools
import mmap
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from ..records import record
from .constants import (
    NETLINK_ADD_MEMBERSHIP,
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NETLINK_XFRM,
    NLM_F_ACK,
    NLM_F_ACK_TLVS,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDRLEN,
    NLMSGERR_ATTR_MSG,
    SOL_NETLINK,
)
from .errors import XfrmError, XfrmParseError
from .netlink import NLA_TYPE_MASK, NLMSG_HEADER, iter_attrs, iter_messages
from .netns import setns

if TYPE_CHECKING:
    from .structs import Message

NetnsRef = str | int | None  # name under /run/netns, a path, an open fd, or None
RECV_BUFFER = 1 << 17  # dumps come in skbs of at most 32 KiB; room to spare
SOCKET_BUFFER = 4 << 20  # so bursts of acks/events do not overflow
BATCH_BYTES = 64 << 10  # requests per sendmsg: well under the 200 KiB default sndbuf
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; Python does not export it
FLAGS_FIELD, FLAGS_OFFSET = struct.Struct("=H"), 6
SEQ_FIELD, SEQ_OFFSET = struct.Struct("=I"), 8
REPLY_TIMEOUT = 5.0  # seconds; the kernel answers in microseconds, this only bounds bugs


@record(frozen=True)
class Reply:
    msg_type: int
    flags: int
    seq: int
    data: bytes  # the whole netlink message, header included


def open_netlink_socket(netns: NetnsRef, protocol: int = NETLINK_XFRM) -> socket.socket:
    """A netlink socket (NETLINK_XFRM unless told) created inside `netns` (None: the caller's namespace)."""
    return socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, protocol)


def socket_in_netns(netns: NetnsRef, family: int, kind: int, protocol: int = 0) -> socket.socket:
    """A socket created inside `netns` (None: the caller's namespace); XfrmError if it cannot be entered."""
    if netns is None:
        return socket.socket(family, kind, protocol)
    result: list[socket.socket | BaseException] = []

    def enter_and_create() -> None:
        try:
            setns(netns)  # never creates a namespace: a missing one is an error
            result.append(socket.socket(family, kind, protocol))
        except Exception as exc:  # handed to the caller's thread below
            result.append(exc)

    helper = threading.Thread(target=enter_and_create, name="xfrm-setns", daemon=True)
    helper.start()
    helper.join()
    outcome = result[0] if result else RuntimeError("setns helper died")
    if isinstance(outcome, socket.socket):
        return outcome
    code = getattr(outcome, "errno", None) or errno.ENOENT
    raise XfrmError("open", code, f"cannot enter network namespace {netns!r}: {outcome}")


def split_messages(datagram: bytes, operation: str) -> Iterator[Reply]:
    """The netlink messages in one datagram, each length checked against the buffer."""
    for msg_type, flags, seq, data in iter_messages(datagram, operation):
        yield Reply(msg_type, flags, seq, data)


def error_of(reply: Reply, operation: str) -> XfrmError | None:
    """None for a positive ack, else the XfrmError an NLMSG_ERROR carries."""
    if len(reply.data) < NLMSG_HDRLEN + 4:
        raise XfrmParseError(operation, "truncated NLMSG_ERROR")
    (code,) = struct.unpack_from("i", reply.data, NLMSG_HDRLEN)
    if code == 0:
        return None
    return XfrmError(operation, -code, extended_ack_text(reply))


def extended_ack_text(reply: Reply) -> str:
    """NLMSGERR_ATTR_MSG from an error ack, if the kernel sent one."""
    if not reply.flags & NLM_F_ACK_TLVS:
        return ""
    # error code, then the request's header (payload capped by NETLINK_CAP_ACK)
    data = reply.data
    try:  # best effort: a malformed chain only costs the message text
        for kind, first, last in iter_attrs(data, NLMSG_HDRLEN + 4 + NLMSG_HDRLEN, len(data), "error ack"):
            if kind & NLA_TYPE_MASK == NLMSGERR_ATTR_MSG:
                return data[first:last].split(b"\0", 1)[0].decode(errors="replace")
    except XfrmParseError:
        pass
    return ""


class NetlinkChannel:
    """One NETLINK_XFRM socket (or `protocol`: svcnat's routes use NETLINK_ROUTE). Not thread-safe on its own."""

    def __init__(self, netns: NetnsRef = None, groups: Iterable[int] = (), protocol: int = NETLINK_XFRM):
        self.sock = open_netlink_socket(netns, protocol)
        try:
            self._configure(list(groups))
        except OSError as exc:
            self.sock.close()
            raise XfrmError("open", exc.errno or errno.EIO, str(exc)) from exc
        self._seq = itertools.count(int(time.time()) & 0xFFFF)
        # An anonymous mapping, not a bytearray: a bytearray zero-fills (and so makes resident) all 128 KiB of
        # every channel, where a mapping holds only the pages a datagram wrote (the sidecar keeps three open).
        self._buffer = mmap.mmap(-1, RECV_BUFFER)

    def _configure(self, groups: list[int]) -> None:
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            self.sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        try:  # as root, go past net.core.rmem_max
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER)
        except PermissionError:
            pass
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self.sock.bind((0, 0))
        self.join(groups)
        if groups:
            self.sock.setblocking(False)
        else:
            self.sock.settimeout(REPLY_TIMEOUT)

    def join(self, groups: Iterable[int]) -> None:
        """Add multicast group memberships (joining one twice is harmless)."""
        for group in groups:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()
        self._buffer.close()

    # ------------------------------------------------------------ sending

    def _stamp(self, message: Message | bytes, msg_type: int, flags: int) -> tuple[int, bytes]:
        """The whole request: `message` is a structs.Message or an already packed body."""
        seq = next(self._seq) & 0xFFFFFFFF
        body = message if isinstance(message, bytes) else message.body()
        return seq, NLMSG_HEADER.pack(NLMSG_HDRLEN + len(body), msg_type, flags, seq, 0) + body

    def _send(self, data: bytes, operation: str) -> None:
        try:
            self.sock.send(data)
        except OSError as exc:
            raise XfrmError(operation, exc.errno or errno.EIO, "netlink send failed") from exc

    def _receive(self, operation: str) -> Iterator[Reply]:
        try:
            size = self.sock.recv_into(self._buffer, len(self._buffer), socket.MSG_TRUNC)
        except TimeoutError as exc:
            raise XfrmError(operation, errno.ETIMEDOUT, "no reply from the kernel") from exc
        except OSError as exc:
            raise XfrmError(operation, exc.errno or errno.EIO, "netlink receive failed") from exc
        if size > len(self._buffer):
            raise XfrmParseError(operation, f"netlink datagram of {size} bytes truncated")
        yield from split_messages(self._buffer[:size], operation)  # a slice of a mapping is a bytes copy

    # ------------------------------------------------------------ request kinds

    def request(self, message: Message | bytes, msg_type: int, operation: str, flags: int = 0) -> None:
        """Send one request and wait for its ack; raise XfrmError on a negative one."""
        errors = self.batch([(message, msg_type, flags)], operation)
        if errors[0] is not None:
            raise errors[0]

    def batch(
        self, requests: Iterable[tuple[Message | bytes, int, int]], operation: str
    ) -> list[XfrmError | None]:
        """Send many requests, several per datagram; one result per request.

        Only the last request of each datagram asks for an ack: the kernel handles the
        requests of a datagram in order and acks a failed one whether asked or not, so
        when the last ack arrives every failure before it has been reported, and a
        request without an error ack succeeded. An ack the kernel could not queue makes
        the receive fail with ENOBUFS (raised): the outcome is then unknown, never
        reported as success.
        """
        results: list[XfrmError | None] = []
        chunk: list[bytes] = []
        chunk_bytes = 0
        for message, msg_type, flags in requests:
            data = self._stamp(message, msg_type, NLM_F_REQUEST | flags)[1]
            if chunk and chunk_bytes + len(data) > BATCH_BYTES:
                results += self._flush(chunk, operation)
                chunk_bytes = 0
            chunk.append(data)
            chunk_bytes += len(data)
        results += self._flush(chunk, operation)
        return results

    def _flush(self, chunk: list[bytes], operation: str) -> list[XfrmError | None]:
        if not chunk:
            return []
        last = bytearray(chunk[-1])  # ask for an ack on the last request only
        (flags,) = FLAGS_FIELD.unpack_from(last, FLAGS_OFFSET)
        FLAGS_FIELD.pack_into(last, FLAGS_OFFSET, flags | NLM_F_ACK)
        chunk[-1] = bytes(last)
        seqs = {SEQ_FIELD.unpack_from(data, SEQ_OFFSET)[0]: index for index, data in enumerate(chunk)}
        final_seq = SEQ_FIELD.unpack_from(last, SEQ_OFFSET)[0]
        results: list[XfrmError | None] = [None] * len(chunk)
        self._send(b"".join(chunk), operation)
        chunk.clear()
        while True:
            for reply in self._receive(operation):
                index = seqs.get(reply.seq)
                if reply.msg_type != NLMSG_ERROR or index is None:
                    continue  # a late answer to an earlier, failed call
                results[index] = error_of(reply, operation)
                if reply.seq == final_seq:
                    return results

    def query(self, message: Message | bytes, msg_type: int, operation: str) -> Reply:
        """Send a request answered by exactly one message (GETSA, ALLOCSPI)."""
        seq, data = self._stamp(message, msg_type, NLM_F_REQUEST)
        self._send(data, operation)
        while True:
            for reply in self._receive(operation):
                if reply.seq != seq:
                    continue  # a late answer to an earlier, timed-out request
                if reply.msg_type == NLMSG_ERROR:
                    raise error_of(reply, operation) or XfrmParseError(operation, "ack, no reply")
                return reply

    def dump(self, message: Message | bytes, msg_type: int, operation: str) -> list[Reply]:
        """Send a dump request; collect the multipart answer up to NLMSG_DONE."""
        seq, data = self._stamp(message, msg_type, NLM_F_REQUEST | NLM_F_DUMP)
        self._send(data, operation)
        replies: list[Reply] = []
        while True:
            for reply in self._receive(operation):
                if reply.seq != seq:
                    continue
                if reply.msg_type == NLMSG_DONE:
                    return replies
                if reply.msg_type == NLMSG_ERROR:
                    raise error_of(reply, operation) or XfrmParseError(operation, "ack in a dump")
                replies.append(reply)

    # ------------------------------------------------------------ events

    def read_pending(self, operation: str = "read_events") -> tuple[list[Reply], bool]:
        """Drain queued multicast messages without blocking.

        Returns the messages and whether the kernel dropped some (ENOBUFS).
        """
        replies: list[Reply] = []
        overflowed = False
        while True:
            try:
                replies.extend(self._receive(operation))
            except XfrmError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return replies, overflowed
                if exc.errno != errno.ENOBUFS:
                    raise
                overflowed = True

    def wait_readable(self, timeout: float | None) -> bool:
        readable, _, _ = select.select([self.sock], [], [], timeout)
        return bool(readable)


def close_quietly(channel: NetlinkChannel | None) -> None:
    if channel is not None:
        try:
            channel.close()
        except OSError:
            pass

