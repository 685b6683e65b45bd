"""Finding clients that vanished without FIN or RST (a node gone, a network partition).

Such a client's connection looks alive: a waiting watch writes nothing until its next
heartbeat (up to 60 s), and that write lands in the kernel's send buffer and "succeeds",
so nothing fails until TCP gives up retransmitting (about 15 minutes with Linux's
defaults). Meanwhile the connection holds a place in the pool and its request one of the
pod's `max_requests_per_pod` slots (a stream until its 150-300 s lifetime ends).

TCP keepalive probes a connection that has been silent for half the timeout, and
TCP_USER_TIMEOUT bounds how long anything sent (data or probes) may stay unacknowledged
(Linux: it also decides when keepalive gives up). A client whose kernel is alive answers
the probes even while its process sleeps, so only a vanished one is closed: the kernel
reports ETIMEDOUT, the connection is lost, and its waiting request ends and frees its slot
(connections.ended_by_disconnect).
"""

from __future__ import annotations

import socket
from typing import Any

#: Unanswered keepalive probes before the connection is given up (within the user timeout).
PROBES = 3


def detect_dead_client(sock: Any, timeout: int) -> None:
    """Close `sock`'s connection once its peer has not acknowledged anything for about `timeout` seconds."""
    idle = max(1, timeout // 2)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, (timeout - idle) // PROBES))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, PROBES)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, timeout * 1000)
