"""Dead peer detection that counts ESP as a sign of life, not only IKE (strongSwan's rule).

A liveness check (an empty INFORMATIONAL, RFC 7296 §2.4) is only needed when nothing came
from the peer for `dpd_delay`. IKE messages are seen by the core itself; ESP goes through
the kernel, which the core has no access to. When a check falls due, the core first asks
the layer above for the inbound byte count of every CHILD_SA that has an inbound half
(`ChildSaInboundQuery`); an answer (`report`) that shows more bytes than the last one
counts as hearing from the peer at the time of the answer. Only when no answer shows any
increase, at the next timer (at once), does the check go out.

Why it matters: the kernel's SAs outlive the peer's sidecar (a restart keeps them carrying
traffic). Counting only IKE, a peer whose sidecar is down for longer than the check and
its retransmissions is declared dead and its SAs deleted here while its kernel still sends
on them. Crediting an increase at the time it is seen, not when the bytes came, delays the
detection of a dead peer by at most one `dpd_delay`. Without answers (a data plane without
a kernel) liveness rests on IKE alone, as before.
"""

from __future__ import annotations

from .child import ChildSa, ChildState
from .events import ChildSaInboundQuery
from .sa import IkeSa

RECEIVING = (ChildState.INSTALLED, ChildState.INBOUND_ONLY, ChildState.REKEYING, ChildState.REKEYED,
             ChildState.DELETING)


def check_due(sa: IkeSa, now: float) -> bool:
    """True when a liveness check must go out now; may first ask for the inbound counts."""
    delay = sa.config.dpd_delay
    if not delay or sa.tasks.outstanding is not None or sa.tasks.queued:
        return False
    due = sa.last_received + delay
    if now < due:
        return False
    receiving = [child for child in sa.children.values() if child.state in RECEIVING]
    if receiving and sa.inbound_query_for != due:
        sa.inbound_query_for = due  # asked once per due time: unanswered, the check goes next
        for child in receiving:
            info = child.info
            sa.emit(ChildSaInboundQuery(sa.label, info.name, info.inbound_spi, info.outbound_spi,
                                        info.local_addr, info.remote_addr))
        return False
    return True


def report(sa: IkeSa, child: ChildSa, inbound_bytes: int, now: float) -> str:
    """The kernel's inbound byte count of `child`: alive (it grew) or silent."""
    grew = inbound_bytes > child.inbound_bytes
    child.inbound_bytes = inbound_bytes
    if grew:
        sa.last_received = max(sa.last_received, now)
        return "alive"
    return "silent"
