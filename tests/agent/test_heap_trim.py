"""The sidecar gives the C heap's free pages back after a status report (agent/heap.py)."""

from __future__ import annotations

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
