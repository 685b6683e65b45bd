"""Retiring CHILD_SAs that carry no traffic (strongSwan's `inactivity`).

Not in `exchanges/`: it is a timer policy, not an exchange. The registry's timers ask
(`query_if_due`), the endpoint hands in the answers (`report`), and the deletes it
decides on are queued through `sa.exchanges`.

The core has no kernel: it asks the layer above for a CHILD_SA's packet count
(`ChildSaActivityQuery`, every half of the inactivity time) and decides from the
answers (`report`). A count that has not changed since an answer at least the
inactivity time ago means no packet went either way since then: the CHILD_SA is
deleted, and the IKE SA with it when no other CHILD_SA is left. Because the time a
count was first seen is an upper bound on the last packet, a CHILD_SA is never
deleted sooner than the inactivity time after its last packet, and at most half that
time later. Unanswered queries (no kernel to ask) leave the CHILD_SA alone.
"""

from __future__ import annotations

import logging

from .child import ChildSa, ChildState, retire_outbound
from .events import ChildSaActivityQuery
from .sa import IkeSa
from .state import IkeState

log = logging.getLogger("ipsec_mesh.ike")


def query_if_due(sa: IkeSa, child: ChildSa, now: float) -> None:
    if child.activity_check_at is None or now < child.activity_check_at:
        return
    child.schedule_activity_check(now)
    if child.state == ChildState.INSTALLED:
        info = child.info
        sa.emit(ChildSaActivityQuery(sa.label, info.name, info.inbound_spi, info.outbound_spi,
                                     info.local_addr, info.remote_addr))


def report(sa: IkeSa, child: ChildSa, packets: int, now: float) -> str:
    """The kernel's packet count for `child` (both halves): active, idle (deleted) or busy."""
    seen = child.activity
    if seen is None or seen[0] != packets:
        # Never used: idle since it was made. Otherwise the packets came at most now.
        since = child.created_at if seen is None and packets == 0 else now
        child.activity = seen = (packets, since)
    if now - seen[1] < child.config.lifetime.inactivity:
        return "active"
    if sa.state != IkeState.ESTABLISHED or child.state != ChildState.INSTALLED:
        return "busy"  # a rekey or delete is under way; asked again later
    others = [c for c in sa.children.values() if c is not child and c.state != ChildState.DELETED]
    log.info("CHILD_SA %s %08x_i with %s carried no traffic for %.0fs: deleting %s", child.name,
             child.inbound_spi, sa.remote[0], now - seen[1], "it" if others else "the IKE SA")
    child.activity_check_at = None
    # Outbound halves first: a packet sent while the Delete is under way then meets the
    # policy instead of an SA the peer is removing; the kernel holds it and asks for a new
    # SA (ACQUIRE), which a new exchange brings. The inbound halves stay until it ends.
    for retiring in [child] if others else list(sa.children.values()):
        retire_outbound(sa, retiring)
    if others:
        sa.queue(sa.exchanges.delete_child(child, "inactive"), now)
    else:
        sa.tasks.clear()
        sa.queue(sa.exchanges.delete_ike("inactive"), now)
    return "idle"
