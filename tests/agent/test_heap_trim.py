"""The sidecar gives the C heap's free pages back after a status report, and keeps out of transparent
huge pages (agent/heap.py)."""

from __future__ import annotations

import subprocess
import sys

from ipsec_mesh.agent import heap


def _anon_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon")


def test_trim_returns_free_pages_below_a_chunk_in_use():
    # 8 MiB in blocks glibc takes from its heap (below the mmap threshold, above pymalloc's 512 bytes),
    # then everything freed except the last block: the free pages sit below it, where glibc's own trim
    # (from the top only) cannot give them back.
    blocks = [bytearray(b"\x01" * 60_000) for _ in range(140)]
    pin = blocks[-1]
    del blocks[:-1]
    before = _anon_kb()
    assert heap.trim() is True  # glibc: malloc_trim is there
    after = _anon_kb()
    assert before - after > 4096, (before, after)
    del pin


def test_trims_at_most_once_per_interval():
    now = [100.0]
    calls: list[int] = []
    trimmer = heap.HeapTrim(30.0, clock=lambda: now[0], trim=lambda: calls.append(1) or True)
    assert trimmer() is True and trimmer.count == 1
    now[0] += 29.0
    assert trimmer() is False and trimmer.count == 1
    now[0] += 1.0
    assert trimmer() is True and trimmer.count == 2
    assert len(calls) == 2


def test_without_malloc_trim_nothing_is_trimmed(monkeypatch):
    monkeypatch.setattr(heap, "_malloc_trim", None)
    monkeypatch.setattr(heap, "_resolved", True)
    assert heap.trim() is False
    trimmer = heap.HeapTrim(0.0)
    assert trimmer() is False and trimmer.count == 0


def _thp_enabled(status: str) -> str:
    [line] = [line for line in status.splitlines() if line.startswith("THP_enabled:")]
    return line.split(":", 1)[1].strip()


def test_the_kernel_takes_the_process_out_of_huge_pages():
    # In a child: the flag stays with a process and its children (this one may have it from a test that ran
    # the sidecar's main: the child clears it first). Read back from the kernel, not assumed.
    script = ("from ipsec_mesh.agent import heap; heap._prctl(heap.PR_SET_THP_DISABLE, 0); "
              "before = open('/proc/self/status').read(); "
              "print(heap.no_huge_pages()); print(before, open('/proc/self/status').read(), sep='@@')")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    answer, statuses = out.split("\n", 1)
    before, after = statuses.split("@@")
    assert answer == "True"
    assert _thp_enabled(before) == "1" and _thp_enabled(after) == "0"


def test_without_prctl_the_process_is_not_said_to_be_out(monkeypatch):
    monkeypatch.setattr(heap, "_libc_function", lambda *args, **kwargs: None)
    assert heap.no_huge_pages() is False


def test_a_refused_prctl_is_not_said_to_be_out(monkeypatch):
    # A seccomp filter answering EPERM (or a kernel without THP): prctl returns -1 for both questions.
    monkeypatch.setattr(heap, "_libc_function", lambda *args, **kwargs: lambda *values: -1)
    assert heap.no_huge_pages() is False
