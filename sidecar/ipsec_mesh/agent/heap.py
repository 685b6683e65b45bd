"""Give the C heap's free pages back to the kernel (glibc's `malloc_trim`), at most once per interval.

glibc returns freed memory only from the top of its heap (above MALLOC_TRIM_THRESHOLD_, which the sidecar
image sets): pages freed below a chunk still in use (what a TLS request or an IKE exchange allocated
with OpenSSL or for Python objects over 512 bytes) stay in the process's private memory, and where the
heap settles after start-up varies from run to run (docs/benchmarks.md, "Sidecar memory"). malloc_trim(0)
releases every free page. Mesh mode calls it after a status report (every `status_interval`, 30 s by
default: a fraction of a millisecond each).

It is called through cryptography's cffi backend, which every sidecar has loaded already (ctypes would
cost about what the trim frees). Where there is no malloc_trim (not glibc), nothing is trimmed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

_malloc_trim: Callable[[int], int] | None = None
_resolved = False


def _resolve() -> Callable[[int], int] | None:
    try:
        # Loaded by cryptography's bindings already: no new module in the process.
        import _cffi_backend as backend  # type: ignore[import-untyped]

        size_t, int_ = backend.new_primitive_type("size_t"), backend.new_primitive_type("int")
        function: Any = backend.load_library(None).load_function(
            backend.new_function_type((size_t,), int_, False), "malloc_trim")
    except (ImportError, AttributeError, OSError):  # no cffi, or a C library without malloc_trim
        return None
    return function  # type: ignore[no-any-return]


def trim() -> bool:
    """malloc_trim(0); False if this C library has none."""
    global _malloc_trim, _resolved
    if not _resolved:
        _malloc_trim, _resolved = _resolve(), True
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


class HeapTrim:
    """`trim()` when called, unless it trimmed less than `interval` seconds ago; `count` trims done."""

    def __init__(self, interval: float, *, clock: Callable[[], float] = time.monotonic,
                 trim: Callable[[], bool] = trim):
        self.interval = interval
        self.count = 0
        self._clock = clock
        self._trim = trim
        self._last: float | None = None

    def __call__(self) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        if not self._trim():
            return False
        self.count += 1
        return True
