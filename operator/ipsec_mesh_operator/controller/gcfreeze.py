"""Keep what start-up built out of Python's full garbage collections.

At 10,000 pods the index (pods, peerings, every map's cached JSON fragments), the CA and
the imported modules are hundreds of thousands of objects that live as long as the
process; every full collection walks them again. `gc.freeze()` once the initial listing
is in moves them to the permanent generation: measured with the watcher bench at 2,500
pods and connections, a full collection went from 190-220 ms to 120-140 ms
(docs/benchmarks.md). Objects frozen are still freed by reference counting; only cycles
among them are never collected, which start-up state does not make in numbers.
"""

from __future__ import annotations

import gc


def freeze_start_up_state() -> int:
    """Collect what start-up left as garbage, freeze the rest; the number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
