"""Keep what start-up built out of Python's full garbage collections.

At 10,000 pods the index (pods, peerings, every map's cached JSON fragments), the CA and
the imported modules are hundreds of thousands of objects that live as long as the
process; every full collection walks them again. `gc.freeze()` once the initial listing
is in moves them to the permanent generation: measured with the watcher bench at 2,500
pods and connections, a full collection went from 190-220 ms to 120-140 ms
(docs/benchmarks.md). Objects frozen are still freed by reference counting; only cycles
among them are never collected, which start-up state does not make in numbers.

The initial listing itself runs with the collector paused (`CollectorPause`): building the
index of 10,000 pods, 1,000 peerings and 2,000 Services makes millions of long-lived objects,
and the collections their allocations trip walk them again and again to find no garbage
(0.27-0.34 s of 0.88-1.0 s of the full computation in bench/bench_peer_maps.py). The pause
ends when the listing is in, or after a bound if it never comes in (an unreachable API
server must not leave the process without a collector), and the freeze's collection then
frees whatever cycles the listing left.
"""

from __future__ import annotations

import gc
from typing import Any

#: Longest the collector stays paused waiting for the initial listing (seconds).
LISTING_PAUSE_BOUND = 120.0


def freeze_start_up_state() -> int:
    """Collect what start-up left as garbage, freeze the rest; the number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class CollectorPause:
    """The cyclic collector off from `__init__` until `end()` or `bound` seconds (`loop.call_later`).

    Without a loop (a synchronous caller: the benchmark) only `end()` turns it back on.
    """

    def __init__(self, loop: Any | None, bound: float = LISTING_PAUSE_BOUND):
        self._resume = gc.isenabled()
        gc.disable()
        self._timer = loop.call_later(bound, self.end) if loop is not None else None

    def end(self) -> None:
        """Turn the collector back on (if it was on before); idempotent."""
        if self._timer is not None:
            self._timer.cancel()
        if self._resume:
            self._resume = False
            gc.enable()
