"""Traffic selector narrowing (RFC 7296 §2.9)."""

from __future__ import annotations

import ipaddress
from typing import Iterable, Sequence

from .errors import TsUnacceptable
from .payloads import TrafficSelector
from .wire import MISSING, recall_pair, remember_pair


def intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    """The selector matching exactly what both match, or None."""
    # Every CHILD_SA of a peer intersects the same decoded selectors (payload_codec memoises
    # them by their bytes) with the same configured ones, and the comparisons of ipaddress
    # objects cost ~6 us per pair: memoised by identity (the selectors are frozen).
    result = recall_pair(_INTERSECTIONS, a, b)
    if result is MISSING:
        result = _intersect(a, b)
        remember_pair(_INTERSECTIONS, a, b, result)
    return result  # type: ignore[no-any-return]


_INTERSECTIONS: dict[tuple[int, int], tuple[TrafficSelector, TrafficSelector, TrafficSelector | None]] = {}


def _intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    if a.ts_type != b.ts_type:
        return None
    if a.ip_protocol and b.ip_protocol and a.ip_protocol != b.ip_protocol:
        return None
    start = max(a.start_addr, b.start_addr)
    end = min(a.end_addr, b.end_addr)
    start_port = max(a.start_port, b.start_port)
    end_port = min(a.end_port, b.end_port)
    if start > end or start_port > end_port:  # type: ignore[operator]  # same ts_type: same IP version
        return None
    return TrafficSelector(a.ts_type, a.ip_protocol or b.ip_protocol, start_port, end_port, start, end)


def narrow(offered: Sequence[TrafficSelector], allowed: Iterable[TrafficSelector]) -> list[TrafficSelector]:
    """Every non-empty intersection of an offered selector with an allowed one, without repeats."""
    allowed = list(allowed)
    result: list[TrafficSelector] = []
    for o in offered:
        for a in allowed:
            x = intersect(o, a)
            if x is not None and x not in result:
                result.append(x)
    return result


def covers(outer: TrafficSelector, inner: TrafficSelector) -> bool:
    return intersect(outer, inner) == inner


def check_subset(answer: Sequence[TrafficSelector], offered: Sequence[TrafficSelector], side: str) -> None:
    """The responder may only narrow: each answered selector must lie inside one we offered."""
    if not answer:
        raise TsUnacceptable(f"responder answered with no {side} selectors")
    for ts in answer:
        if not any(covers(o, ts) for o in offered):
            raise TsUnacceptable(f"responder widened {side} selectors: {describe(ts)} not inside what we offered")


def describe(ts: TrafficSelector) -> str:
    if ts.start_addr == ts.end_addr:
        addr = str(ts.start_addr)
    else:
        try:
            nets = list(ipaddress.summarize_address_range(ts.start_addr, ts.end_addr))
            addr = str(nets[0]) if len(nets) == 1 else f"{ts.start_addr}-{ts.end_addr}"
        except (TypeError, ValueError):
            addr = f"{ts.start_addr}-{ts.end_addr}"
    proto = f"[{ts.ip_protocol}" if ts.ip_protocol else "["
    ports = "" if (ts.start_port, ts.end_port) == (0, 65535) else (
        f"/{ts.start_port}" if ts.start_port == ts.end_port else f"/{ts.start_port}-{ts.end_port}")
    return f"{addr}{proto}{ports}]" if (ts.ip_protocol or ports) else addr
