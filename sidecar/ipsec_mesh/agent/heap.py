"""The sidecar's private pages: give the C heap's free ones back (glibc's `malloc_trim`, at most once per
interval), and keep the kernel from making them huge (`no_huge_pages`).

glibc returns freed memory only from the top of its heap (above MALLOC_TRIM_THRESHOLD_, which the sidecar
image sets): pages freed below a chunk still in use (what a TLS request or an IKE exchange allocated
with OpenSSL or for Python objects over 512 bytes) stay in the process's private memory, and where the
heap settles after start-up varies from run to run (docs/benchmarks.md, "Sidecar memory"). malloc_trim(0)
releases every free page. Mesh mode calls it after a status report (every `status_interval`, 30 s by
default: a fraction of a millisecond each).

Transparent huge pages: where the node's kernel makes them for every process (Debian's and RHEL's
kernels default to `always`), khugepaged folds 2 MiB ranges of our heap and pymalloc's arenas that are
partly resident into one huge page, making the rest resident too. Measured in the VM (Debian's kernel):
3 of 4 sidecars grew by 0.07-0.6 MiB within 15 s of their SA with no allocation by Python (pymalloc's
arenas and blocks unchanged) nor by the C heap, and every sidecar held 2-6 MiB in huge pages; opted
out, none (docs/benchmarks.md, "the step was transparent huge pages"). A sidecar's heap is a few
MiB touched a little at a time and its CPU goes to Python and cryptography, not TLB misses: huge pages
would cost every pod of the node up to 2 MiB each for little. `no_huge_pages` opts the process out
(prctl PR_SET_THP_DISABLE, kept across fork and exec); it cannot unmake huge pages made before it, so
the entry point calls it before anything else loads (agent/launch.py).

Both are called through cryptography's cffi backend, which every sidecar loads anyway (ctypes would
cost about what the trim frees). Where there is no malloc_trim (not glibc) nothing is trimmed; where the
kernel refuses the prctl (no THP, a seccomp filter) the pages stay as the kernel decides.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

PR_SET_THP_DISABLE = 41  # linux/prctl.h
PR_GET_THP_DISABLE = 42

_malloc_trim: Callable[[int], int] | None = None
_resolved = False


def _libc_function(name: str, arguments: tuple[str, ...], variadic: bool = False) -> Any:
    """The C library's `name` (returning int) through cffi's backend; None where there is none."""
    try:
        # Loaded by cryptography's bindings already: no new module in the process.
        import _cffi_backend as backend  # type: ignore[import-untyped]

        kind = backend.new_function_type(tuple(backend.new_primitive_type(a) for a in arguments),
                                         backend.new_primitive_type("int"), variadic)
        return backend.load_library(None).load_function(kind, name)
    except (ImportError, AttributeError, OSError):  # no cffi, or a C library without it
        return None


def _resolve() -> Callable[[int], int] | None:
    return _libc_function("malloc_trim", ("size_t",))  # type: ignore[no-any-return]


def trim() -> bool:
    """malloc_trim(0); False if this C library has none."""
    global _malloc_trim, _resolved
    if not _resolved:
        _malloc_trim, _resolved = _resolve(), True
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


def _prctl(option: int, argument: int) -> int | None:
    """prctl(option, argument, 0, 0, 0): its result (-1 when refused), None without cffi or prctl."""
    prctl = _libc_function("prctl", ("int",), variadic=True)
    if prctl is None:
        return None
    import _cffi_backend as backend

    unsigned_long = backend.new_primitive_type("unsigned long")
    return int(prctl(option, *(backend.cast(unsigned_long, value) for value in (argument, 0, 0, 0))))


def no_huge_pages() -> bool:
    """Opt this process (and what it starts) out of transparent huge pages; True if the kernel says it is out."""
    _prctl(PR_SET_THP_DISABLE, 1)
    return _prctl(PR_GET_THP_DISABLE, 0) == 1


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
